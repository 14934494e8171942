"""Small facts about spoken English that more than one stage relies on."""

from __future__ import annotations

_CONTINUING = (
    "and but or so because if then than that which who whose where when while the a an to of in on at by for "
    "with from into about as my your our their his her its um uh er erm like"
)
# Words a sentence or a spoken phrase does not end on: after them the speaker goes on. The STT
# reads a pause after one as thinking, not done; the chunker does not cut a first chunk there.
CONTINUING_WORDS = frozenset(_CONTINUING.split())
