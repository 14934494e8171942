"""The sentence chunker: turns the LLM's token stream into speakable pieces for the TTS.

The TTS can start speaking as soon as it has a whole clause, so the chunker releases text at
sentence ends, list items and line breaks, and, for the first chunk of a reply only, at the
first comma, semicolon, colon or dash once the clause has a few words: that is the latency win.

Every cut is decided from the text before it plus, where needed, the next non-space character
("Dr. Smith", "3.14", "e.g. this", "U.S.A. is", an ellipsis followed by lowercase). A cut that
needs a character not yet streamed waits for it, so the chunks never depend on how the text
was split into deltas.

    SentenceChunker   the pure core: feed(delta) -> chunks, flush() -> the rest
    speakable(text)   strips what a TTS would read aloud (markdown, bullets, emoji)
    ChunkerStage      the adapter: ReplyText / ReplyDone in, ReplyChunk out
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from voxloop.pipeline.config import ChunkerSettings
from voxloop.pipeline.frames import Frame, ReplyChunk, ReplyDone, ReplyText
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.text import CONTINUING_WORDS, SENTENCE_END, ends_sentence, whole_sentences

# A list marker at the start of a segment: "1. ", "2) ", "- ", "* ", "• ".
_ITEM = re.compile(r"(?:(\d{1,2})[.)]|[-*+•])[ \t]+")
_NUMBER_MARKER = re.compile(r"(\d{1,2})[.)][ \t]")
_PARTIAL_NUMBER_MARKER = re.compile(r"\d{1,2}[.)]?")
# Clause boundaries for the early first clause and for cutting an over-long sentence.
_CLAUSE = re.compile(r"[,;:](?=[ \t])|(?<=\S)[ \t][-–—](?=[ \t])|(?<=\w)—(?=\w)")
# Abbreviations after which a period never ends a sentence, even before a capital.
_NEVER_ENDS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "rev", "gen", "capt", "lt", "col", "sgt", "st", "mt", "vs"}
    | {"e.g", "i.e", "cf", "approx", "fig"}
)
_INITIALS = re.compile(r"(?:[A-Z]\.)*[A-Z]")  # "J" of "J. K.", "U.S.A" of "U.S.A."
_OPENERS = "\"'“‘([{«*_"

_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LEADING_MARK = re.compile(r"^(?:[-*+•]|#{1,6})[ \t]+")
_NUMBER_PAREN = re.compile(r"^(\d{1,2})\)")
_EMPHASIS = re.compile(r"[*`~#]+|(?<!\w)_+|_+(?!\w)")
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\ufe0e\ufe0f\u200d\u20e3\U000e0000-\U000e007f]"
)
_EDGE_DASH = re.compile(r"^[-–—]\s+|\s+[-–—]$")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[,.!?;:…](?:\s|$))")  # left where an emoji was removed


def speakable(text: str) -> str:
    """`text` without what a TTS would read aloud: markdown, bullets, emoji, extra spaces."""
    text = _LINK.sub(r"\1", text.strip())
    text = _LEADING_MARK.sub("", text)
    text = _NUMBER_PAREN.sub(r"\1.", text)
    text = _EMPHASIS.sub("", text)
    text = _EMOJI.sub("", text)
    text = _EDGE_DASH.sub("", text.strip())
    return _SPACE_BEFORE_PUNCT.sub("", " ".join(text.split()))


def count_words(text: str) -> int:
    """Words that would be spoken: whitespace-separated tokens holding a letter or digit, a number
    counting one per digit ("10.50" is read "ten point five zero"), so that a first chunk of
    figures is no longer to say, or to synthesize, than one of words."""
    return sum(sum(ch.isdigit() for ch in token) or any(ch.isalnum() for ch in token) for token in text.split())


@dataclass(frozen=True, slots=True)
class _Cut:
    end: int  # the segment is buf[start:end]
    resume: int  # the next segment starts at buf[resume:]
    release: bool = False  # emit even if shorter than min_words (early clause, forced cut)


@dataclass(frozen=True, slots=True)
class _Wait:
    pos: int  # a possible cut at `pos` needs more text to decide


class SentenceChunker:
    """Splits a streamed reply into speakable chunks. One instance serves one reply at a time."""

    def __init__(self, settings: ChunkerSettings | None = None) -> None:
        settings = settings or ChunkerSettings()
        self.first_clause_min_words = settings.first_clause_min_words
        self.first_clause_max_words = settings.first_clause_max_words
        self.min_words = settings.min_words
        self.max_chars = settings.max_chars
        self.reset()

    def reset(self) -> None:
        """Forget the reply in progress (after an interrupt, or once it is flushed)."""
        self._buf = ""
        self._pending = ""  # a fragment shorter than min_words, waiting to join the next one
        self._emitted = False  # a chunk of this reply went out: no more early clauses
        self._at_reply_start = True
        self._next_item: int | None = None  # the number the next list item will carry

    def feed(self, delta: str) -> list[str]:
        """Add a piece of the reply; returns the chunks it completed."""
        self._buf += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """The reply is complete: returns the remaining chunks and gets ready for the next."""
        chunks = self._drain(final=True)
        if count_words(self._pending):
            chunks.append(self._pending)
        self.reset()
        return chunks

    # -- cutting ---------------------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[str]:
        chunks: list[str] = []
        while True:
            start = len(self._buf) - len(self._buf.lstrip())
            if start == len(self._buf):
                return chunks
            line_start = self._at_reply_start or "\n" in self._buf[:start]
            item = self._item_marker(start, line_start)
            cut = self._next_cut(start, item, final=final)
            if cut is None:
                return chunks
            segment = self._buf[start : cut.end]
            self._buf = self._buf[cut.resume :]
            self._at_reply_start = False
            chunks.extend(self._take(segment, item=item is not None, release=cut.release))

    def _item_marker(self, start: int, line_start: bool) -> re.Match[str] | None:
        """The list marker the segment at `start` opens with, if it is one."""
        match = _ITEM.match(self._buf, start)
        if match is None:
            return None
        if match[1] is None:  # a bullet counts only at the start of a line
            return match if line_start else None
        number = int(match[1])
        if line_start or number in (1, self._next_item):
            return match
        return None

    def _next_cut(self, start: int, item: re.Match[str] | None, *, final: bool) -> _Cut | None:
        body = item.end() if item else start
        numbered = item is not None and item[1] is not None
        expected = int(item[1]) + 1 if item is not None and item[1] is not None else self._next_item
        early = not self._emitted and item is None
        found = self._scan(start, body, count_words(self._pending) if early else None, expected, final=final)
        limit = start + self.max_chars
        if isinstance(found, _Cut) and found.end <= limit:
            cut: _Cut | None = found
        elif isinstance(found, _Wait) and found.pos < limit:
            cut = None
        elif len(self._buf) > limit:
            cut = self._forced_cut(start, limit)
        else:
            cut = found if isinstance(found, _Cut) else None
        if cut is not None and numbered:
            self._next_item = expected
        return cut

    def _scan(
        self, start: int, body: int, early_words: int | None, expected: int | None, *, final: bool
    ) -> _Cut | _Wait | None:
        """The first place the segment at `start` ends, or where the decision waits for text.

        `early_words` (words already pending) is given only while the first clause may go early;
        `expected` is the number the next list item would carry, inside a numbered list.
        """
        buf, n, i = self._buf, len(self._buf), body
        while i < n:
            ch = buf[i]
            if ch == "\n":
                return _Cut(i, i)  # the newline stays: the next segment sees it starts a line
            if ch in ".!?…":
                end = SENTENCE_END.match(buf, i)
                assert end is not None
                found = self._sentence_end(i, end.end(), final=final)
                if found is not None:
                    return found
                i = end.end()
                continue
            if early_words is not None and (found := self._early_clause(start, i, early_words, final)):
                return found
            if ch.isdigit() and i > body and buf[i - 1] in " \t" and self._list_may_start(i, expected):
                marker = _NUMBER_MARKER.match(buf, i)
                if marker and self._continues_list(i, int(marker[1]), expected):
                    return _Cut(i, i)
                if not final and marker is None and _PARTIAL_NUMBER_MARKER.fullmatch(buf, i):
                    return _Wait(i)
            i += 1
        return _Cut(n, n) if final else None

    def _sentence_end(self, i: int, j: int, *, final: bool) -> _Cut | _Wait | None:
        """Whether the terminal run buf[i:j] (closers included) ends the sentence."""
        buf, n = self._buf, len(self._buf)
        if j == n:
            return _Cut(j, j) if final else _Wait(i)
        if not buf[j].isspace():
            return None  # "3.14", "U.S.A", "...and"
        k = j
        while k < n and buf[k].isspace():
            k += 1
        if "\n" in buf[j:k]:
            return _Cut(j, j)
        if k == n:
            return _Cut(j, j) if final else _Wait(i)
        if buf[k].islower():
            return None  # "e.g. this", "... and then", '"Why?" she asked'
        if buf[i:j].rstrip("\"'”’)]}»*_") == "." and self._abbreviation_before(i):
            return None
        return _Cut(j, j)

    def _abbreviation_before(self, i: int) -> bool:
        words = self._buf[:i].split()
        if not words:
            return False
        word = words[-1].lstrip(_OPENERS)
        initials = word != "I" and _INITIALS.fullmatch(word) is not None
        return initials or word.lower() in _NEVER_ENDS

    def _early_clause(self, start: int, i: int, words_before: int, final: bool) -> _Cut | _Wait | None:
        match = _CLAUSE.match(self._buf, i)
        if match is None and self.first_clause_max_words and (capped := self._capped_clause(start, i, words_before)):
            return capped
        if match is None:
            if self._buf[i] in ",;:-–—" and i + 1 == len(self._buf) and not final:
                return _Wait(i)  # the space that makes it a clause boundary may come next
            return None
        if words_before + count_words(speakable(self._buf[start:i])) < self.first_clause_min_words:
            return None
        return _Cut(match.end(), match.end(), release=True)

    def _capped_clause(self, start: int, i: int, words_before: int) -> _Cut | None:
        """No clause boundary yet: after enough words the first chunk goes anyway, at the end of a
        word a phrase may end on ("past four", not "in the"); after twice as many, at any word's
        end, so that a reply with no such word ("4 5 6 7 8 9 10 ...") is not held back whole (2.4 s
        before its first audio in a bench run), or at a mark inside a run with no space at all
        ("3:33:33:33..." from a small model gone round in a loop: 1.0 s after the first token in another)."""
        buf, cap = self._buf, self.first_clause_max_words
        if buf[i] in " \t":
            words = speakable(buf[start:i]).split()
            last = words[-1].lower().strip("\"'") if words else ""
            count = words_before + count_words(" ".join(words))
            phrase_end = last.isalpha() and last not in CONTINUING_WORDS
            return _Cut(i, i + 1, release=True) if count >= cap and (phrase_end or count >= 2 * cap) else None
        inside_run = start < i < len(buf) - 1 and buf[i - 1].isalnum() and buf[i + 1].isalnum() and not buf[i].isalnum()
        if not inside_run:
            return None
        run_start = max(buf.rfind(" ", start, i), buf.rfind("\t", start, i), start - 1) + 1
        long_run = count_words(buf[run_start:i]) >= cap  # not the apostrophe of a word ("don't")
        if long_run and words_before + count_words(speakable(buf[start:i])) >= 2 * cap:
            return _Cut(i + 1, i + 1, release=True)
        return None

    def _list_may_start(self, i: int, expected: int | None) -> bool:
        return expected is not None or self._buf[:i].rstrip().endswith(":")

    def _continues_list(self, i: int, number: int, expected: int | None) -> bool:
        if number == expected:
            return True
        return number == 1 and self._buf[:i].rstrip().endswith(":")

    def _forced_cut(self, start: int, limit: int) -> _Cut:
        """Cut an over-long sentence at its last clause boundary, else its last space."""
        clauses = list(_CLAUSE.finditer(self._buf, start, limit))
        if clauses and clauses[-1].end() > start + 1:
            end = clauses[-1].end()
        else:
            space = max(self._buf.rfind(" ", start, limit), self._buf.rfind("\t", start, limit))
            end = space if space > start else limit
        return _Cut(end, end, release=True)

    # -- emitting --------------------------------------------------------------------------

    def _take(self, segment: str, *, item: bool, release: bool) -> list[str]:
        text = speakable(segment)
        if not count_words(text):
            return []  # punctuation, emoji or markup only: nothing to say
        chunks: list[str] = []
        if item:
            # A list item stands alone, and so does whatever short text introduced the list.
            if count_words(self._pending):
                chunks.append(self._pending)
            chunks.append(text)
            self._pending = ""
        else:
            joined = f"{self._pending} {text}" if self._pending else text
            if self._pending and len(joined) > self.max_chars:
                chunks.append(self._pending)
                joined = text
            self._pending = ""
            if release or count_words(joined) >= self.min_words:
                chunks.append(joined)
            else:
                self._pending = joined
        self._emitted = self._emitted or bool(chunks)
        return chunks


class ChunkerStage(StageBase):
    """ReplyText deltas in, ReplyChunk pieces out; ReplyDone flushes and passes on."""

    name = "chunker"
    handles: tuple[type[Frame], ...] = (ReplyText, ReplyDone)

    def __init__(self, session: Session, settings: ChunkerSettings | None = None) -> None:
        self.session = session
        self._chunker = SentenceChunker(settings)
        self._index = 0
        self._finished = False  # a chunk of this reply ended a sentence

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, ReplyText):
            texts = self._chunker.feed(frame.text)
        else:
            texts = self._chunker.flush()
            if isinstance(frame, ReplyDone) and frame.cut_off:
                texts = self._finished_only(texts)
        for text in texts:
            if self._index == 0:
                self.session.mark("first_chunk")
            self._finished = self._finished or ends_sentence(text)
            yield self.session.make(ReplyChunk, text=text, index=self._index)
            self._index += 1
        if isinstance(frame, ReplyDone):
            self._index, self._finished = 0, False
            yield frame

    def _finished_only(self, texts: list[str]) -> list[str]:
        """A reply stopped at max_tokens ends mid-sentence: drop that unfinished end, unless no
        sentence of the reply was finished (then the fragment is better than silence)."""
        kept = list(texts)
        while kept and not ends_sentence(kept[-1]):
            head = whole_sentences(kept[-1])
            if ends_sentence(head):
                kept[-1] = head
                break
            kept.pop()
        return kept if kept or self._finished else texts

    async def reset(self) -> None:
        self._chunker.reset()
        self._index, self._finished = 0, False
