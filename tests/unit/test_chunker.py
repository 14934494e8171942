"""The sentence chunker: a table of replies, each fed whole, as LLM-like word tokens and as
random small deltas; the chunks must be the same however the text was split."""

from __future__ import annotations

import random

import pytest

from voxloop.pipeline.config import ChunkerSettings
from voxloop.pipeline.frames import ReplyChunk, ReplyDone, ReplyText
from voxloop.pipeline.session import Session
from voxloop.pipeline.text import ends_sentence, whole_sentences
from voxloop.stages.chunker import ChunkerStage, SentenceChunker, count_words, speakable

CASES: list[tuple[str, str, list[str]]] = [
    # (id, reply, expected chunks) with the default settings: first clause 3 words, min 3 words
    (
        "title",
        "Dr. Smith will see you now. Please take a seat.",
        ["Dr. Smith will see you now.", "Please take a seat."],
    ),
    (
        "titles",
        "Mr. and Mrs. Smith arrived. They sat down quietly.",
        ["Mr. and Mrs. Smith arrived.", "They sat down quietly."],
    ),
    (
        "eg",
        "Try a tool e.g. this one here. It works well.",
        ["Try a tool e.g. this one here.", "It works well."],
    ),
    (
        "decimal",
        "Pi is roughly 3.14 and that is enough. Next question please.",
        ["Pi is roughly 3.14 and that is enough.", "Next question please."],
    ),
    ("price", "It costs 4.99 today. Buy it now.", ["It costs 4.99 today.", "Buy it now."]),
    (
        "initialism",
        "She moved to the U.S.A. in May. Then she found work.",
        ["She moved to the U.S.A. in May.", "Then she found work."],
    ),
    (
        "initials",
        "J. K. Rowling wrote it. It sold very well.",
        ["J. K. Rowling wrote it.", "It sold very well."],
    ),
    (
        "pm",
        "Meet me at 5 p.m. tomorrow please. Bring some snacks.",
        ["Meet me at 5 p.m. tomorrow please.", "Bring some snacks."],
    ),
    (
        "ellipsis",
        "Well... it depends on the day. Tomorrow works.",
        ["Well... it depends on the day.", "Tomorrow works."],
    ),
    (
        "ellipsis-char",
        "I waited… and waited for you. Nobody came.",
        ["I waited… and waited for you.", "Nobody came."],
    ),
    (
        "ellipsis-ends",
        "I am not sure... Maybe we can try again later.",
        ["I am not sure...", "Maybe we can try again later."],
    ),
    ("quote", 'He said "hi." Then he left the room.', ['He said "hi."', "Then he left the room."]),
    ("curly-quote", "She said “go now.” So we went home.", ["She said “go now.”", "So we went home."]),
    (
        "bracket",
        "(This is only an aside.) The main point follows.",
        ["(This is only an aside.)", "The main point follows."],
    ),
    (
        "quoted-question",
        '"Why?" she asked me twice. I had no answer.',
        ['"Why?" she asked me twice.', "I had no answer."],
    ),
    ("inline-list", "You need: 1. Milk 2. Eggs 3. Bread", ["You need:", "1. Milk", "2. Eggs", "3. Bread"]),
    (
        "steps",
        "1. Preheat the oven. 2. Mix the flour. 3. Bake it.",
        ["1. Preheat the oven.", "2. Mix the flour.", "3. Bake it."],
    ),
    ("paren-list", "1) Call mom\n2) Buy flowers", ["1. Call mom", "2. Buy flowers"]),
    (
        "bullets",
        "Shopping list:\n- milk\n- eggs\n- **fresh** bread\nThat is all for today.",
        ["Shopping list:", "milk", "eggs", "fresh bread", "That is all for today."],
    ),
    (
        "star-bullets",
        "Pack these:\n* a warm coat\n* good boots",
        ["Pack these:", "a warm coat", "good boots"],
    ),
    ("heading", "## Ingredients\n- flour\n- sugar", ["Ingredients", "flour", "sugar"]),
    (
        "emphasis",
        "This is **really** important to know. _Always_ check twice.",
        ["This is really important to know.", "Always check twice."],
    ),
    ("emoji", "Great job today 🎉! See you 👋 soon.", ["Great job today!", "See you soon."]),
    (
        "link",
        "See [the docs](http://x.y/z) for more details. Thanks a lot.",
        ["See the docs for more details.", "Thanks a lot."],
    ),
    (
        "lines",
        "First paragraph ends here\nSecond paragraph starts now",
        ["First paragraph ends here", "Second paragraph starts now"],
    ),
    # the first clause goes early, once it has three words; later chunks are whole sentences
    (
        "first-clause",
        "The capital of France, as you probably know, is Paris. It is lovely in spring, truly.",
        ["The capital of France,", "as you probably know, is Paris.", "It is lovely in spring, truly."],
    ),
    (
        "first-clause-dash",
        "Paris is the answer - a lovely city. Go there.",
        ["Paris is the answer", "a lovely city.", "Go there."],
    ),
    (
        "short-first-clause",
        "Yes, it is Paris. Lovely city in spring.",
        ["Yes, it is Paris.", "Lovely city in spring."],
    ),
    (
        "pending-then-clause",
        "Sure. The capital of France, as you know, is Paris.",
        ["Sure. The capital of France,", "as you know, is Paris."],
    ),
    # fragments under three words join the next chunk, except at the end of the reply
    ("tiny-merged", "Hi! Oh! I am glad you asked me that.", ["Hi! Oh! I am glad you asked me that."]),
    ("tiny-at-end", "That is really great. Thanks!", ["That is really great.", "Thanks!"]),
    (
        "tiny-after-clause",
        "It is sunny today, and warm. Later, we might see some rain, maybe.",
        ["It is sunny today,", "and warm. Later, we might see some rain, maybe."],
    ),
    (
        "interrobang",
        "Really?! That is amazing news. Tell me more.",
        ["Really?! That is amazing news.", "Tell me more."],
    ),
    # nothing unspeakable goes out
    ("punctuation-only", "Hello there my friend. ... !!! 🎉", ["Hello there my friend."]),
    ("emoji-only", "🎉🎉 👋", []),
    ("empty", "", []),
]


def random_deltas(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    deltas, i = [], 0
    while i < len(text):
        n = rng.randint(1, 5)
        deltas.append(text[i : i + n])
        i += n
    return deltas


def word_tokens(text: str) -> list[str]:
    """Deltas the way an LLM streams them: a leading space glued to each word."""
    tokens: list[str] = []
    for piece in text.split(" "):
        tokens.append(f" {piece}" if tokens else piece)
    return tokens


def run(deltas: list[str], settings: ChunkerSettings | None = None) -> list[str]:
    chunker = SentenceChunker(settings)
    chunks = [chunk for delta in deltas for chunk in chunker.feed(delta)]
    return chunks + chunker.flush()


BOUNDARIES_ONLY = ChunkerSettings(first_clause_max_words=0)  # the cases test where text may be cut


@pytest.mark.parametrize(("reply", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_chunks_whole_and_streamed(reply: str, expected: list[str]) -> None:
    assert run([reply], BOUNDARIES_ONLY) == expected
    assert run(word_tokens(reply), BOUNDARIES_ONLY) == expected
    assert run(list(reply), BOUNDARIES_ONLY) == expected
    for seed in range(5):
        assert run(random_deltas(reply, seed), BOUNDARIES_ONLY) == expected, f"seed {seed}"


SEVEN = ChunkerSettings(first_clause_max_words=7)


def test_a_long_first_sentence_goes_after_first_clause_max_words() -> None:
    reply = "My favourite season of the year is autumn because of the colours. I love it."
    expected = ["My favourite season of the year is", "autumn because of the colours.", "I love it."]
    for deltas in ([reply], word_tokens(reply), list(reply)):
        assert run(deltas, SEVEN) == expected  # seven words, cut at a word's end, however the text streams
    # never after a word a phrase goes on from ("of", "the", "in"): the cut waits for the next word
    assert run(word_tokens("So I went to a shop in the town yesterday and bought bread."), SEVEN)[0] == (
        "So I went to a shop in the town"
    )
    assert run(word_tokens("Yes, it is a quarter past four."), SEVEN) == ["Yes, it is a quarter past four."]
    # "Of course," is too short to go alone; the cap cannot know the sentence ends one word later
    assert run(word_tokens("Of course, it is a quarter past four."), SEVEN) == [
        "Of course, it is a quarter past",
        "four.",
    ]
    # The default cap is four words ("of" and "the" wait for the word after them).
    assert run(word_tokens(reply))[0] == "My favourite season of the year"


def test_a_first_clause_with_no_word_to_end_on_goes_after_twice_the_cap() -> None:
    # Digits, or words a phrase goes on from: no natural end, yet the first audio must not wait
    # for the whole reply (the TTS would then also read it all before its first sample).
    digits = " ".join(str(n) for n in range(4, 40))
    assert run(word_tokens(digits))[0] == "4 5 6 7 8 9 10"  # 10 counts as two words: eight in all
    assert run(list(digits))[0] == "4 5 6 7 8 9 10"
    assert run(word_tokens("and the and the and the and the and the."))[0] == "and the and the and the and the"
    assert run(word_tokens(f"{digits} {digits}"), SEVEN)[0] == " ".join(str(n) for n in range(4, 14))
    # Figures read out digit by digit: eight such words, not eight figures (a bench reply's first
    # chunk of eight took Piper 410 ms, against 50-90 ms for a first chunk of words).
    figures = " ".join(f"10.{n}0" for n in range(1, 10)) + " 11."
    assert run(word_tokens(figures))[0] == "10.10 10.20"
    # A run with no space at all (a small model gone round in a loop) goes at a mark inside it.
    loop = "3:" + "33:" * 40
    assert run([loop[k : k + 3] for k in range(0, len(loop), 3)])[0] == "3:33:33:33:33:"
    assert run(list("and the and the and the and don't stop and the."))[0] == "and the and the and the and don't"
    assert run(word_tokens(digits), BOUNDARIES_ONLY) == [digits]  # the cap off: no early cut at all


def test_the_first_clause_is_released_while_the_sentence_is_still_streaming() -> None:
    chunker = SentenceChunker()
    released: list[str] = []
    for token in word_tokens("The capital of France, as you probably know, is Paris."):
        released += chunker.feed(token)
        if released:
            break
    assert released == ["The capital of France,"]
    assert chunker.feed(" It is") == []  # no more early clauses in this reply


def test_a_sentence_is_released_as_soon_as_the_next_one_starts() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("Dr. Smith is in today.") == []  # "." may still be "today.5" or "today. and"
    assert chunker.feed(" T") == ["Dr. Smith is in today."]


LONG = (
    "Our walking tour starts at the old harbour, continues past the cathedral and the market hall, "
    "crosses the river on the stone bridge; then it climbs the hill to the castle where the view "
    "over the whole valley and the mountains beyond is simply wonderful on a clear day in summer."
)


@pytest.mark.parametrize("max_chars", [40, 60, 100])
def test_long_sentences_are_cut_at_a_clause_or_space_before_max_chars(max_chars: int) -> None:
    settings = ChunkerSettings(max_chars=max_chars)
    reply = "Here is the plan for today. " + LONG
    chunks = run([reply], settings)
    assert all(len(chunk) <= max_chars for chunk in chunks), chunks
    assert " ".join(chunks).split() == reply.split()  # nothing lost, nothing split mid-word
    assert run(word_tokens(reply), settings) == chunks
    assert run(random_deltas(reply, 7), settings) == chunks


def test_a_long_sentence_prefers_its_last_clause_boundary() -> None:
    chunks = run(["Here is the plan for today. " + LONG], ChunkerSettings(max_chars=120, first_clause_max_words=7))
    assert chunks[1] == "Our walking tour starts at the old harbour, continues past the cathedral and the market hall,"


def test_a_word_longer_than_max_chars_is_cut_hard() -> None:
    chunks = run(["Look: " + "a" * 100], ChunkerSettings(max_chars=40))
    assert all(0 < len(chunk) <= 40 for chunk in chunks)
    assert "".join(chunks).replace("Look:", "").replace(" ", "") == "a" * 100


def test_min_words_and_first_clause_follow_the_settings() -> None:
    reply = "Well, yes. It is."
    assert run([reply], ChunkerSettings(first_clause_min_words=1, min_words=1)) == ["Well,", "yes.", "It is."]
    assert run([reply], ChunkerSettings(first_clause_min_words=3, min_words=3)) == ["Well, yes. It is."]


def test_flush_starts_a_fresh_reply() -> None:
    chunker = SentenceChunker()
    assert chunker.feed("You need: 1. Milk 2. Eggs") == ["You need:", "1. Milk"]
    assert chunker.flush() == ["2. Eggs"]
    # the early clause is allowed again, and the list numbering starts over
    assert chunker.feed("The capital of France, as") == ["The capital of France,"]
    assert chunker.flush() == ["as"]
    chunker.feed("You need: 1. Milk 2. Eggs")
    chunker.flush()
    # a "3." in the next reply is not the list's next item
    assert run_on(chunker, "We saw 3. Birds flew by us.") == ["We saw 3.", "Birds flew by us."]


def run_on(chunker: SentenceChunker, text: str) -> list[str]:
    return chunker.feed(text) + chunker.flush()


def test_a_list_continues_only_with_its_next_number() -> None:
    assert run(["You need: 1. Milk 2. Eggs and 4. Rice"]) == [
        "You need:",
        "1. Milk",
        "2. Eggs and 4.",
        "Rice",
    ]
    assert run(["We saw 3. Birds flew by us."]) == ["We saw 3.", "Birds flew by us."]
    assert run(["1. Milk\n2. Eggs\nWe saw 3. Birds flew by."]) == [
        "1. Milk",
        "2. Eggs",
        "We saw",
        "3. Birds flew by.",
    ]


def test_reset_drops_the_reply_in_progress() -> None:
    chunker = SentenceChunker()
    chunker.feed("This reply was interrupted halfway")
    chunker.reset()
    assert chunker.feed("New reply here. ") == []
    assert chunker.flush() == ["New reply here."]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**Bold** and *italic* and `code`", "Bold and italic and code"),
        ("- a bullet", "a bullet"),
        ("• another one", "another one"),
        ("### Heading", "Heading"),
        ("snake_case stays", "snake_case stays"),
        ("Thumbs up 👍🏽 and a flag 🇫🇷 done", "Thumbs up and a flag done"),
        ("Cool 😎!", "Cool!"),
        ("...", "..."),
    ],
)
def test_speakable(text: str, expected: str) -> None:
    assert speakable(text) == expected


def test_count_words_ignores_punctuation_and_counts_a_number_by_its_digits() -> None:
    assert count_words("Hi - there , !") == 2
    assert count_words("10.50 or 7") == 6  # "ten point five zero or seven": as long to say as six words


# --- the stage ------------------------------------------------------------------------------


async def feed_stage(
    stage: ChunkerStage, session: Session, deltas: list[str], *, cut_off: bool = False
) -> list[ReplyChunk | ReplyDone]:
    out: list[ReplyChunk | ReplyDone] = []
    done = session.make(ReplyDone, text="".join(deltas), cut_off=cut_off)
    frames = [session.make(ReplyText, text=d) for d in deltas] + [done]
    for frame in frames:
        async for produced in stage.process(frame):
            assert isinstance(produced, ReplyChunk | ReplyDone)
            out.append(produced)
    return out


async def test_stage_numbers_chunks_per_reply_and_passes_reply_done_last() -> None:
    session = Session()
    stage = ChunkerStage(session, ChunkerSettings())
    reply = "The capital of France, as you know, is Paris. It is lovely."
    for _ in range(2):  # the index starts from 0 again for the second reply
        out = await feed_stage(stage, session, word_tokens(reply))
        chunks = [f for f in out if isinstance(f, ReplyChunk)]
        assert [(c.index, c.text) for c in chunks] == [
            (0, "The capital of France,"),
            (1, "as you know, is Paris."),
            (2, "It is lovely."),
        ]
        assert isinstance(out[-1], ReplyDone) and out[-1].text == reply
        assert all(c.session_id == session.id for c in chunks)


async def test_stage_marks_first_chunk_when_the_first_chunk_leaves() -> None:
    session = Session()
    stage = ChunkerStage(session)
    async for _ in stage.process(session.make(ReplyText, text="Hello there friend")):
        pass
    assert "first_chunk" not in session.trace.marks
    out = [f async for f in stage.process(session.make(ReplyText, text=", my dear. "))]
    assert [f.text for f in out if isinstance(f, ReplyChunk)] == ["Hello there friend,"]
    assert "first_chunk" in session.trace.marks


@pytest.mark.parametrize(
    ("reply", "spoken"),
    [
        ("The sea is vast and deep. It covers most of the planet and", ["The sea is vast", "and deep."]),
        ("The sea is vast. It covers most of the planet, and it is deep. Fish live", None),
        ("The sea is vast and deep and it covers", None),  # no sentence ends: all of it, not silence
    ],
)
async def test_a_reply_cut_off_at_max_tokens_is_spoken_to_its_last_whole_sentence(
    reply: str, spoken: list[str] | None
) -> None:
    session = Session()
    out = await feed_stage(ChunkerStage(session), session, word_tokens(reply), cut_off=True)
    said = [f.text for f in out if isinstance(f, ReplyChunk)]
    assert isinstance(out[-1], ReplyDone) and out[-1].cut_off
    whole = [f.text for f in await feed_stage(ChunkerStage(session), session, word_tokens(reply))]
    if spoken is not None:
        assert said == spoken
    else:
        assert " ".join(said) == (whole_sentences(reply) if any(c in reply for c in ".!?") else reply)
    assert whole[: len(said) - 1] == said[:-1]  # the same chunks up to where the unfinished end was cut


@pytest.mark.parametrize(
    ("text", "ends", "whole"),
    [
        ("Hi there.", True, "Hi there."),
        ("Hi there. And the", False, "Hi there."),
        ('She said "yes!"  ', True, 'She said "yes!"'),
        ("One! Two? Thr", False, "One! Two?"),
        ("no sentence ends here", False, "no sentence ends here"),
        ("", False, ""),
    ],
)
def test_sentence_ends(text: str, ends: bool, whole: str) -> None:
    assert ends_sentence(text) is ends
    assert whole_sentences(text) == whole


async def test_stage_reset_clears_buffer_and_index() -> None:
    session = Session()
    stage = ChunkerStage(session)
    await feed_stage(stage, session, ["First reply is long enough. And then some more."])
    async for _ in stage.process(session.make(ReplyText, text="Half a reply that")):
        pass
    await stage.reset()
    out = await feed_stage(stage, session, ["A new reply starts."])
    chunks = [f for f in out if isinstance(f, ReplyChunk)]
    assert [(c.index, c.text) for c in chunks] == [(0, "A new reply starts.")]


WORDS = (
    "the cat sat on a mat Dr. Smith U.S.A. e.g. 3.14 1. 2. 3. - * ** _ 🎉 ... … , ; : — ( ) "
    '" “ ” ? ! . Paris it well, Yes. no. and is\n \n-'
)
VOCABULARY = WORDS.split(" ")


@pytest.mark.parametrize("seed", range(40))
def test_random_replies_chunk_the_same_however_they_are_split(seed: int) -> None:
    rng = random.Random(seed)
    reply = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(5, 80)))
    settings = ChunkerSettings(max_chars=60)
    whole = run([reply], settings)
    assert run(random_deltas(reply, seed), settings) == whole
    assert run(list(reply), settings) == whole
    for chunk in whole:
        assert count_words(chunk) > 0, chunk
        assert len(chunk) <= 60, chunk
        assert chunk == chunk.strip()
