"""Small facts about spoken English that more than one stage relies on."""

from __future__ import annotations

import re

_CONTINUING = (
    "and but or so because if then than that which who whose where when while the a an to of in on at by for "
    "with from into about as my your our their his her its um uh er erm like"
)
# Words a sentence or a spoken phrase does not end on: after them the speaker goes on. The STT
# reads a pause after one as thinking, not done; the chunker does not cut a first chunk there.
CONTINUING_WORDS = frozenset(_CONTINUING.split())

# A sentence's end: terminal punctuation, then any closing quotes, brackets or markdown emphasis.
SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]}»*_]*")


def _sentence_ends(text: str) -> list[int]:
    return [match.end() for match in SENTENCE_END.finditer(text)]


def ends_sentence(text: str) -> bool:
    """Does `text` end with a finished sentence (trailing spaces aside)?"""
    stripped = text.rstrip()
    ends = _sentence_ends(stripped)
    return bool(ends) and ends[-1] == len(stripped)


def whole_sentences(text: str) -> str:
    """`text` up to the end of its last finished sentence; all of it when no sentence ends."""
    ends = _sentence_ends(text)
    return text[: ends[-1]].rstrip() if ends else text
