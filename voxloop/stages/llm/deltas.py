"""The one signal a backend's stream of text deltas carries besides text."""

from __future__ import annotations


class CutOff(str):
    """An empty delta a backend yields last when the reply stopped at max_tokens, mid-thought
    (finish_reason "length"): the LLM stage then keeps the reply's whole sentences only."""

    __slots__ = ()


CUT_OFF = CutOff()
