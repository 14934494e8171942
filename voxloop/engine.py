"""Wiring: load the shared models once, then build each session's stage graph from settings.

pipeline/ knows nothing of models and stages/ know nothing of each other; this module is the
one place that knows which stage follows which:

    [wake] → vad → stt → llm → chunker → tts
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.config import Settings
from voxloop.pipeline.graph import Graph
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import Stage
from voxloop.stages.chunker import ChunkerStage
from voxloop.stages.llm import ChatBackend, LlmStage, load_llm
from voxloop.stages.stt import SttStage, WhisperEngine, load_whisper
from voxloop.stages.tts import TtsStage
from voxloop.stages.tts.providers import build_router
from voxloop.stages.tts.router import VoiceRouter
from voxloop.stages.tts.voice import VoiceLookup
from voxloop.stages.vad import SileroVadModel, VadStage, load_vad_model
from voxloop.stages.wake import WakeModels, WakeStage, load_wake_models

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Engines:
    """The models every session shares, loaded once per process."""

    settings: Settings
    vad: SileroVadModel
    stt: WhisperEngine
    llm: ChatBackend
    tts: VoiceRouter
    wake: WakeModels | None = None
    load_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    async def load(
        cls, settings: Settings, store: AssetStore | None = None, voices: Sequence[VoiceLookup] = ()
    ) -> Engines:
        """Load every model in worker threads, concurrently; fails with the first error.

        `voices` are looked up after the config's own (tts.voices), e.g. the voices/ store."""
        store = store or AssetStore(settings.assets.cache_dir)
        load_s: dict[str, float] = {}

        async def timed_async(name: str, loading: Awaitable[T]) -> T:
            start = time.perf_counter()
            model = await loading
            load_s[name] = round(time.perf_counter() - start, 3)
            log.info("model loaded", extra={"event": "model_loaded", "model": name, "s": load_s[name]})
            return model

        async def timed(name: str, load: Callable[..., T], *args: Any) -> T:
            start = time.perf_counter()
            model = await asyncio.to_thread(load, *args)
            load_s[name] = round(time.perf_counter() - start, 3)
            log.info("model loaded", extra={"event": "model_loaded", "model": name, "s": load_s[name]})
            return model

        async with asyncio.TaskGroup() as group:
            vad = group.create_task(timed("vad", load_vad_model, store))
            stt = group.create_task(timed("stt", load_whisper, settings.stt, store))
            llm = group.create_task(timed("llm", load_llm, settings.llm, store))
            tts = group.create_task(timed_async("tts", build_router(settings, store, voices)))
            wake = (
                group.create_task(timed("wake", load_wake_models, settings.wake, store))
                if settings.wake_enabled
                else None
            )
        return cls(
            settings=settings,
            vad=vad.result(),
            stt=stt.result(),
            llm=llm.result(),
            tts=tts.result(),
            wake=wake.result() if wake else None,
            load_s=load_s,
        )

    def stages(self, session: Session) -> list[Stage]:
        s = self.settings
        stages: list[Stage] = []
        if self.wake is not None:
            stages.append(WakeStage(session, s.wake, self.wake, s.kiosk if s.kiosk_mode else None))
        stages += [
            VadStage(session, s.vad, self.vad),
            SttStage(session, s.stt, self.stt),
            LlmStage(session, s.llm, self.llm),
            ChunkerStage(session, s.chunker),
            TtsStage(session, s.tts, self.tts, s.audio.output_sample_rate),
        ]
        return stages

    def graph(self, session: Session) -> Graph:
        return Graph(session, self.stages(session))

    async def close(self) -> None:
        await self.llm.close()
        self.stt.close()
        await self.tts.aclose()
        self.vad.close()
        if self.wake is not None:
            self.wake.close()
