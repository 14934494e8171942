"""The offline default LLM: a GGUF model run in-process by llama-cpp-python.

Chosen by measurement on a 2-core CPU: llama.cpp streams SmolLM2-135M several times faster than
transformers' GGUF loading, and the engine compiles once at install time. The model loads once
per process and is shared by every session. A llama.cpp context is not thread-safe, so all
generation goes through one worker thread and sessions queue for it; cancelling a stream
stops generation at the next token and frees the thread for the next reply.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxloop.pipeline.assets import resolve_model
from voxloop.pipeline.config import LlmSettings
from voxloop.pipeline.errors import AssetError, FatalError, TransientError
from voxloop.pipeline.workers import ModelWorker
from voxloop.stages.llm.deltas import CUT_OFF

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with `pip install llama-cpp-python` (it compiles llama.cpp: about 10 minutes on "
    "2 cores), or use a server instead: set llm.backend: openai and llm.base_url"
)


def resolve_gguf(model: str, store: AssetStore) -> Path:
    """The .gguf file that `model` names: an asset name, a .gguf path, or a folder holding one."""
    found = resolve_model(model, store)
    if isinstance(found, str):
        raise AssetError(
            f"llm.model = {model!r} is neither a model asset nor an existing file: name an asset "
            "(e.g. smollm2-135m-q8_0) or the path of a .gguf file"
        )
    if found.is_file():
        return found
    ggufs = sorted(found.glob("*.gguf"))
    if len(ggufs) != 1:
        what = f"{len(ggufs)} .gguf files" if ggufs else "no .gguf file"
        raise AssetError(f"llm.model = {model!r}: {found} holds {what}; set llm.model to the .gguf file's path")
    return ggufs[0]


async def _aclose(iterator: AsyncIterator[str]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


class EmbeddedLlamaBackend:
    """A ChatBackend running a GGUF model with llama-cpp-python, one generation at a time."""

    name = "embedded"

    def __init__(self, llama: Any, model_path: Path) -> None:
        self.model_path = model_path
        self.generated_tokens = 0  # text deltas produced since load (a counter for tests and metrics)
        self._llama = llama
        self._worker = ModelWorker("llm", max_workers=1)  # one thread: the context is not thread-safe
        self._last_prompt: list[dict[str, str]] | None = None  # what the cache holds (set on the model's thread)

    @classmethod
    def load(cls, settings: LlmSettings, store: AssetStore) -> EmbeddedLlamaBackend:
        """Load the model and warm it up. Blocking (a second or so): call it at startup."""
        try:
            import llama_cpp
        except ImportError as exc:
            raise FatalError(f"the embedded LLM needs llama-cpp-python, which is missing: {INSTALL_HINT}") from exc
        path = resolve_gguf(settings.model, store)
        started = time.monotonic()
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=settings.context_tokens,
                n_threads=settings.threads or os.cpu_count() or 1,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise AssetError(
                f"llama.cpp could not load {path} ({exc}): the file may be damaged or not a GGUF model; "
                "delete it from the asset cache to fetch it again, or set llm.model"
            ) from exc
        backend = cls(llama, path)
        backend._warm_up()
        log.info(
            "llm loaded",
            extra={
                "event": "llm_loaded",
                "backend": cls.name,
                "model": path.name,
                "load_ms": round((time.monotonic() - started) * 1000),
            },
        )
        return backend

    def _warm_up(self) -> None:
        # The first completion pays for allocating buffers; a user turn should not.
        self._llama.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=1)

    async def prefill(
        self,
        messages: list[dict[str, str]],
        *,
        after: list[dict[str, str]] | None = None,
        conversation: str | None = None,
    ) -> None:
        """Evaluate the prompt now (one token is sampled and dropped): llama-cpp-python keeps the
        evaluated tokens and reuses the longest common prefix, so the real request that follows
        starts generating at once (~1 ms to the first token instead of ~50 ms on 2 cores).
        With `after`, only if the last request was that prompt: decided on the model's thread,
        when the call's turn comes, since other sessions may have used the one cache meanwhile."""

        def evaluate() -> bool:
            if after is not None and self._last_prompt is not after:
                return False
            self._last_prompt = messages
            self._llama.create_chat_completion(messages, max_tokens=1)
            return True

        started = time.perf_counter()
        done = await self._worker.run(evaluate)
        ms = round((time.perf_counter() - started) * 1000)
        extra = {"event": "llm_prefill", "ms": ms, "messages": len(messages), "skipped": not done}
        log.debug("llm prefill", extra=extra | {"after_reply": after is not None})

    async def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        conversation: str | None = None,
    ) -> AsyncGenerator[str, None]:
        def generate() -> Iterator[str]:
            self._last_prompt = messages
            completion = self._llama.create_chat_completion(
                messages, stream=True, max_tokens=max_tokens, temperature=temperature
            )
            try:
                for chunk in completion:
                    choice = chunk["choices"][0]
                    content = choice["delta"].get("content")
                    if content:
                        self.generated_tokens += 1
                        yield content
                    if choice.get("finish_reason") == "length":
                        yield CUT_OFF
            except ValueError as exc:
                if "context" not in str(exc):
                    raise
                # how llama_cpp reports a prompt longer than the context window
                raise TransientError(
                    f"the conversation does not fit llama.cpp's context ({exc}): lower "
                    "llm.max_history_messages or raise llm.context_tokens"
                ) from exc
            finally:
                completion.close()  # on cancellation: stop llama.cpp before the next token

        log.info("llm request", extra={"event": "llm_request", "backend": self.name, "messages": len(messages)})
        # A short buffer: a consumer that stops reading (first_audio_first) stops llama.cpp too.
        contents = self._worker.stream(generate, buffer=4)
        try:
            async for content in contents:
                yield content
        finally:
            await _aclose(contents)  # sets the worker's stop flag now, not when collected

    def busy(self) -> bool:
        return self._worker.busy

    async def close(self) -> None:
        # Through the worker, so the model is freed only after a generation in flight stops.
        close = getattr(self._llama, "close", None)
        if close is not None:
            await self._worker.run(close)
        self._worker.shutdown()
