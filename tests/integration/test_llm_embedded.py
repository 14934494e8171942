"""The embedded LLM backend on the real SmolLM2-135M GGUF asset, through llama-cpp-python."""

from __future__ import annotations

import asyncio
import builtins
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.errors import AssetError, FatalError, TransientError
from voxloop.pipeline.frames import ReplyDone, ReplyText, Transcript
from voxloop.pipeline.session import Message, Session
from voxloop.pipeline.text import ends_sentence, whole_sentences
from voxloop.stages.llm import LlmStage, load_llm
from voxloop.stages.llm.embedded import EmbeddedLlamaBackend, resolve_gguf

pytestmark = [pytest.mark.integration, pytest.mark.llm]

SYSTEM = LlmSettings().system_prompt
GUARD_S = 60  # only so that a hang fails the test instead of the whole run


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_the_build_runs_a_prompt_on_this_cpu() -> None:
    # In a child process: a build for CPU features the machine only claims (AMX on some VMs)
    # dies of SIGILL on its first prompt, which would take the test run with it.
    pytest.importorskip("llama_cpp", reason="the embedded LLM needs llama-cpp-python")
    check = [sys.executable, "-m", "voxloop.stages.llm.embedded_check"]
    done = subprocess.run(check, capture_output=True, text=True, timeout=GUARD_S, check=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "the embedded LLM runs" in done.stdout


@pytest.fixture(scope="module")
def llm(asset_store: AssetStore) -> Iterator[EmbeddedLlamaBackend]:
    pytest.importorskip("llama_cpp", reason="the embedded LLM needs llama-cpp-python")
    backend = load_llm(LlmSettings(backend="embedded", threads=2), asset_store)
    assert isinstance(backend, EmbeddedLlamaBackend)
    yield backend
    asyncio.run(backend.close())


async def answer(llm: EmbeddedLlamaBackend, question: str, max_tokens: int = 40) -> list[str]:
    stream = llm.stream(ask(question), max_tokens=max_tokens, temperature=0.0)
    return await asyncio.wait_for(_collect(stream), GUARD_S)


async def _collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


async def test_answers_a_short_question_in_several_deltas(llm: EmbeddedLlamaBackend) -> None:
    deltas = await answer(llm, "How many days are in a week?")
    reply = "".join(deltas)
    assert len(deltas) >= 3, deltas
    assert "7" in reply or "seven" in reply.lower(), reply
    sky = "".join(await answer(llm, "What color is the sky on a clear day?"))
    assert "blue" in sky.lower(), sky


async def test_cancelling_stops_generation_at_once_and_the_model_is_free_again(
    llm: EmbeddedLlamaBackend,
) -> None:
    prompt = ask("Write a long story about a dragon who bakes bread.")
    story = llm.stream(prompt, max_tokens=200, temperature=0)
    before = llm.generated_tokens
    got = [await anext(story) for _ in range(3)]
    await story.aclose()  # what a barge-in does to the consumer
    # The worker thread makes at most the token in flight, not the 197 still allowed.
    again = await answer(llm, "How many days are in a week?")
    assert llm.generated_tokens - before - len(again) <= len(got) + 2
    assert "".join(again).strip()


async def test_cancelling_the_consuming_task_also_stops_generation(llm: EmbeddedLlamaBackend) -> None:
    started = asyncio.Event()
    before = llm.generated_tokens

    async def consume() -> None:
        async for _ in llm.stream(ask("Write a long story about a castle."), max_tokens=200, temperature=0):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), GUARD_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    again = await answer(llm, "What color is the sky on a clear day?")
    assert llm.generated_tokens - before - len(again) < 40  # far fewer than the 200 allowed
    assert "blue" in "".join(again).lower()


async def test_sessions_queue_for_the_model_and_get_their_own_answers(llm: EmbeddedLlamaBackend) -> None:
    alone = [await answer(llm, q) for q in ("How many days are in a week?", "What color is the sky?")]
    together = await asyncio.gather(answer(llm, "How many days are in a week?"), answer(llm, "What color is the sky?"))
    assert list(together) == alone  # greedy decoding: the same text, nothing interleaved


async def test_the_stage_streams_a_reply_from_the_embedded_model(llm: EmbeddedLlamaBackend) -> None:
    session = Session()
    session.user_said("How many days are in a week?")
    stage = LlmStage(session, LlmSettings(temperature=0.0, max_tokens=40), llm)
    frames = [f async for f in stage.process(session.make(Transcript, text="How many days are in a week?"))]
    texts = [f.text for f in frames if isinstance(f, ReplyText)]
    assert len(texts) >= 3
    assert isinstance(frames[-1], ReplyDone) and frames[-1].text == "".join(texts).strip()
    assert not frames[-1].cut_off  # a short answer ends well within max_tokens
    assert "llm_first_token" in session.trace.marks


async def test_a_reply_stopped_by_max_tokens_keeps_its_whole_sentences(llm: EmbeddedLlamaBackend) -> None:
    question = "Tell me a long story about a castle by the sea."
    session = Session()
    session.user_said(question)
    stage = LlmStage(session, LlmSettings(temperature=0.0, max_tokens=30), llm)
    frames = [f async for f in stage.process(session.make(Transcript, text=question))]
    said = "".join(f.text for f in frames if isinstance(f, ReplyText)).strip()
    done = frames[-1]
    assert isinstance(done, ReplyDone) and done.cut_off, said
    assert done.text == whole_sentences(said) and ends_sentence(done.text) and len(done.text) < len(said), said


async def test_after_a_reply_the_next_turns_moved_window_is_read_while_the_reply_plays(
    llm: EmbeddedLlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of 6 messages starts at message 3 for the 4th and 5th questions and at message 6
    for the 6th. The stage reads that window when the 5th reply is done, so the 6th question's
    request evaluates little more than the question itself."""
    evaluated: list[int] = []  # tokens per llama.cpp evaluation, in order
    real_eval = llm._llama.eval
    monkeypatch.setattr(llm._llama, "eval", lambda tokens: evaluated.append(len(tokens)) or real_eval(tokens))
    session = Session()
    for n, topic in enumerate(("cats", "dogs", "birds")):
        session.history += [Message("user", f"Name a fact about {topic}."), Message("assistant", f"Fact {n}.")]
    settings = LlmSettings(temperature=0.0, max_tokens=20, max_history_messages=6)

    async def turn(question: str) -> None:
        session.user_said(question)
        frames = [f async for f in LlmStage(session, settings, llm).process(session.make(Transcript, text=question))]
        assert isinstance(frames[-1], ReplyDone)
        session.reply_finished(frames[-1].text)

    await turn("What is the capital of France?")
    evaluated.clear()
    await turn("And the capital of Italy?")
    after_reply = evaluated[-2:]  # the reply's last token, then the prefill
    evaluated.clear()
    await turn("And of Spain?")
    assert after_reply[-1] > 40, after_reply  # the moved window, read while the 5th reply plays
    assert 0 < evaluated[0] < 25, evaluated  # the 6th request: its question and the assistant's cue


async def test_a_prefill_after_a_request_is_skipped_once_another_request_came_between(
    llm: EmbeddedLlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluated: list[int] = []
    real_eval = llm._llama.eval
    monkeypatch.setattr(llm._llama, "eval", lambda tokens: evaluated.append(len(tokens)) or real_eval(tokens))
    mine, theirs = ask("How many days are in a week?"), ask("What color is the sky?")
    await _collect(llm.stream(mine, max_tokens=5, temperature=0.0))
    await _collect(llm.stream(theirs, max_tokens=5, temperature=0.0))  # another session's turn
    evaluated.clear()
    await llm.prefill([*mine, {"role": "assistant", "content": "Seven."}], after=mine)
    assert evaluated == []  # the cache holds their conversation: refilling mine would be overwritten again
    await llm.prefill([*theirs, {"role": "assistant", "content": "Blue."}], after=theirs)
    assert evaluated and sum(evaluated) > 3


async def test_a_conversation_longer_than_the_context_is_a_transient_error(asset_store: AssetStore) -> None:
    pytest.importorskip("llama_cpp")
    small = EmbeddedLlamaBackend.load(LlmSettings(context_tokens=256, threads=2), asset_store)
    try:
        with pytest.raises(TransientError, match=r"exceed context window of 256.*raise llm.context_tokens"):
            await _collect(small.stream(ask("word " * 300), max_tokens=8, temperature=0))
    finally:
        await small.close()


PASSAGE = (
    "The kettle clicked off and the kitchen went quiet. Anna poured the water over the tea leaves, "
    "waited three minutes, and carried two cups to the table by the window. Outside, the rain had "
    "stopped, and the street lamps were coming on one after another. Her brother looked up from his "
    "book and asked whether the train to the city still left at seven in the morning. She said it did, "
    "but that on Sundays the first one was an hour later, so they would have time for breakfast."
)


def next_token_logprobs(gguf: Path, tokens: list[int]) -> Any:
    import llama_cpp
    import numpy as np

    model = llama_cpp.Llama(model_path=str(gguf), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    model.eval(tokens)
    logits = np.asarray(model.scores[: len(tokens)], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def test_the_q8_0_copy_predicts_as_the_q4_1_it_was_made_from(asset_store: AssetStore) -> None:
    import llama_cpp
    import numpy as np

    original, copy = (resolve_gguf(name, asset_store) for name in ("smollm2-135m", "smollm2-135m-q8_0"))
    tokens = llama_cpp.Llama(model_path=str(original), vocab_only=True, verbose=False).tokenize(PASSAGE.encode())
    before, after = next_token_logprobs(original, tokens), next_token_logprobs(copy, tokens)
    positions = np.arange(len(tokens) - 1)
    perplexity = [float(np.exp(-lp[positions, tokens[1:]].mean())) for lp in (before, after)]
    agree = float((before.argmax(axis=1) == after.argmax(axis=1)).mean())
    assert abs(perplexity[1] / perplexity[0] - 1) < 0.03, perplexity  # a Q4_0 copy: +11 %
    assert agree > 0.9, agree  # Q8_0: 0.98; a Q4_0 copy: 0.67


def test_model_may_be_an_asset_name_a_gguf_path_or_its_folder(asset_store: AssetStore) -> None:
    gguf = resolve_gguf("smollm2-135m-q8_0", asset_store)
    assert gguf.name == "SmolLM2-135M-Instruct.Q8_0.gguf" and gguf.is_file()
    assert resolve_gguf(str(gguf), asset_store) == gguf
    assert resolve_gguf(str(gguf.parent), asset_store) == gguf


def test_a_model_that_names_nothing_usable_is_an_asset_error(asset_store: AssetStore, tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"'someone/some-model' is neither a model asset nor an existing"):
        resolve_gguf("someone/some-model", asset_store)
    with pytest.raises(AssetError, match=r"holds no .gguf file; set llm.model to the .gguf file's path"):
        resolve_gguf(str(tmp_path), asset_store)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(AssetError, match=r"llama.cpp could not load .*broken.gguf"):
        EmbeddedLlamaBackend.load(LlmSettings(model=str(bad)), asset_store)


def test_without_llama_cpp_the_error_says_how_to_install_it(
    asset_store: AssetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_llama(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "llama_cpp":
            raise ImportError("No module named 'llama_cpp'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_llama)
    with pytest.raises(FatalError, match=r"needs llama-cpp-python.*pip install llama-cpp-python"):
        load_llm(LlmSettings(backend="embedded"), asset_store)
