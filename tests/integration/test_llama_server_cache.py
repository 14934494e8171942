"""The llama-server the benchmark starts keeps a conversation's cache when its history window moves.

voxloop moves a long conversation's window in steps (stages/llm: build_messages); the messages it
keeps are in the slot's cache at later positions, and `--cache-reuse` shifts them into place. The
server's prompt cache in RAM would instead swap in a saved prompt with a longer common prefix and
read every kept message again (seen in four-user benchmark runs: up to 240 tokens, 2 s in which no
other slot decoded). Uses llama.cpp's llama-server, which scripts/test builds once (scripts/build_llama_server).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from voxloop.bench import llama_server
from voxloop.bench.procs import start_llama
from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.config import LlmSettings
from voxloop.stages.llm.embedded import resolve_gguf

pytestmark = [pytest.mark.integration, pytest.mark.llm]

SYSTEM = {"role": "system", "content": "You are a friendly voice assistant. Answer in one or two short sentences."}


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    llama_server.find_or_build()
    gguf = resolve_gguf(LlmSettings().model, AssetStore())
    llama, url = start_llama(tmp_path_factory.mktemp("llama"), gguf, "llama-server", slots=2, threads=1)
    try:
        yield url
    finally:
        llama.stop()


def message(index: int) -> dict[str, str]:
    role = "user" if index % 2 == 0 else "assistant"
    return {
        "role": role,
        "content": f"Message {index} of our chat, on topic number {index * 7}, with a few more words.",
    }


def read_tokens(url: str, messages: list[dict[str, str]]) -> int:
    """Ask slot 0 for one token; how many prompt tokens the server had to read (not from cache)."""
    body: dict[str, Any] = {"messages": messages, "max_tokens": 1, "id_slot": 0, "cache_prompt": True}
    response = httpx.post(f"{url}/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return int(response.json()["timings"]["prompt_n"])


def test_a_moved_history_window_is_shifted_in_the_slots_cache_not_read_again(server_url: str) -> None:
    history = [message(i) for i in range(12)]
    read_tokens(server_url, [SYSTEM, *history[6:8]])  # an earlier prompt that starts like the moved window
    whole = read_tokens(server_url, [SYSTEM, *history, {"role": "user", "content": "And now?"}])
    assert whole > 150  # a long conversation, read once
    moved = read_tokens(server_url, [SYSTEM, *history[6:], {"role": "user", "content": "And then?"}])
    assert moved < 20, f"the kept messages were read again ({moved} tokens)"
