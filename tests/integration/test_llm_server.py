"""The OpenAI-compatible backend against a real server: llama-cpp-python's own, serving SmolLM2.

The fixture starts `python -m llama_cpp.server` as a subprocess on a free local port and stops
it afterwards. The server needs llama-cpp-python's [server] extra (uvicorn, fastapi,
sse-starlette, starlette-context, pydantic-settings).
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.errors import TransientError
from voxloop.pipeline.frames import ReplyDone, ReplyText, Transcript
from voxloop.pipeline.session import Session
from voxloop.stages.llm import LlmStage, load_llm
from voxloop.stages.llm.embedded import resolve_gguf
from voxloop.stages.llm.openai_compat import OpenAICompatBackend

pytestmark = [pytest.mark.integration, pytest.mark.llm]

SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
START_TIMEOUT_S = 90
GUARD_S = 60  # only so that a hang fails the test instead of the whole run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def server_url(asset_store: AssetStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"llama_cpp.server needs {', '.join(missing)}: pip install 'llama-cpp-python[server]'")
    gguf = resolve_gguf(LlmSettings().model, asset_store)
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", "2", "--n_ctx", "2048"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def client(server_url: str, asset_store: AssetStore) -> AsyncIterator[OpenAICompatBackend]:
    settings = LlmSettings(backend="openai", base_url=server_url, model="smollm2", api_key_env="")
    backend = load_llm(settings, asset_store)
    assert isinstance(backend, OpenAICompatBackend)
    yield backend
    await backend.close()


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": LlmSettings().system_prompt}, {"role": "user", "content": question}]


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


async def test_the_server_streams_an_answer_in_several_deltas(client: OpenAICompatBackend) -> None:
    stream = client.stream(ask("How many days are in a week?"), max_tokens=40, temperature=0.0)
    deltas = await asyncio.wait_for(collect(stream), GUARD_S)
    reply = "".join(deltas)
    assert len(deltas) >= 3, deltas
    assert "7" in reply or "seven" in reply.lower(), reply


async def test_leaving_a_stream_early_leaves_the_server_ready(client: OpenAICompatBackend) -> None:
    story = client.stream(ask("Write a long story about a dragon."), max_tokens=300, temperature=0.0)
    got = [await asyncio.wait_for(anext(story), GUARD_S) for _ in range(3)]
    await story.aclose()
    assert all(isinstance(delta, str) for delta in got) and "".join(got).strip()
    stream = client.stream(ask("What color is the sky on a clear day?"), max_tokens=40, temperature=0.0)
    again = "".join(await asyncio.wait_for(collect(stream), GUARD_S))
    assert "blue" in again.lower(), again


async def test_the_stage_answers_through_the_server(client: OpenAICompatBackend) -> None:
    session = Session()
    session.user_said("How many days are in a week?")
    stage = LlmStage(session, LlmSettings(temperature=0.0, max_tokens=40), client)
    transcript = session.make(Transcript, text="How many days are in a week?")
    frames = await asyncio.wait_for(collect_frames(stage, transcript), GUARD_S)
    texts = [f.text for f in frames if isinstance(f, ReplyText)]
    assert len(texts) >= 3
    assert isinstance(frames[-1], ReplyDone) and frames[-1].text == "".join(texts).strip()
    assert "llm_first_token" in session.trace.marks


async def collect_frames(stage: LlmStage, transcript: Transcript) -> list[ReplyText | ReplyDone]:
    frames: list[ReplyText | ReplyDone] = []
    frames_out = stage.process(transcript)
    assert await anext(frames_out) is transcript  # the user's words are passed on first
    async for frame in frames_out:
        assert isinstance(frame, ReplyText | ReplyDone)
        frames.append(frame)
    return frames


async def test_a_wrong_base_url_gets_a_404_that_says_what_to_fix(server_url: str) -> None:
    wrong = server_url.removesuffix("/v1")  # a common mistake: the /v1 left out
    client = OpenAICompatBackend(LlmSettings(backend="openai", base_url=wrong, api_key_env=""))
    try:
        with pytest.raises(TransientError, match=r"404 .*check llm.base_url \(it usually ends in /v1"):
            await collect(client.stream(ask("hi"), max_tokens=4, temperature=0.0))
    finally:
        await client.close()
