"""The ASGI app: the realtime WebSocket, the REST API, the browser client, all on one loop.

Models load once in the lifespan (or are handed in, for tests) and every connection shares
them; each connection gets its own Session and Graph (server/realtime.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Response, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from voxloop import __version__
from voxloop.pipeline.config import Settings
from voxloop.pipeline.looplag import LoopLagMonitor
from voxloop.server.limits import sessions_full
from voxloop.server.realtime import RealtimeConnection
from voxloop.server.rest import BatchPriority, invalid_request
from voxloop.server.security import SecurityMiddleware, build_gate, refuse_websocket
from voxloop.server.transport import WebSocketTransport
from voxloop.server.webrtc import RtcCalls
from voxloop.stages.tts.stats import TtsCollector
from voxloop.tracing import build_tracer, prometheus_sink
from voxloop.voices.store import VoiceStore, builtin_voices

if TYPE_CHECKING:
    from voxloop.engine import Engines

log = logging.getLogger(__name__)

WEB_CLIENT = Path(__file__).resolve().parents[2] / "web_client"
LOOP_LAG_INTERVAL_S = 0.01
LOOP_LAG_WINDOW = 6000  # the last minute of samples, reported by /healthz
CLOSE_TRY_AGAIN_LATER = 1013


class Connections:
    """The open realtime connections, so shutdown can tell each one."""

    def __init__(self) -> None:
        self.open: set[RealtimeConnection] = set()
        self._none_open = asyncio.Event()

    def add(self, connection: RealtimeConnection) -> None:
        self.open.add(connection)
        self._none_open.clear()

    def discard(self, connection: RealtimeConnection) -> None:
        self.open.discard(connection)
        if not self.open:
            self._none_open.set()

    def close_all(self, reason: str) -> None:
        for connection in list(self.open):
            connection.close(reason)

    async def close_all_and_wait(self, reason: str, timeout_s: float) -> None:
        """Tell each connection why and wait (at most `timeout_s`) until each has sent that and closed."""
        self.close_all(reason)
        if self.open:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none_open.wait(), timeout_s)


def create_app(settings: Settings, engines: Engines | None = None) -> FastAPI:
    """The app; ConfigError when settings.security requires an API key and none is configured."""
    gate = build_gate(settings)
    connections = Connections()
    tracer = build_tracer(settings)
    metrics = prometheus_sink(tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from voxloop.engine import Engines

        loaded = engines or await Engines.load(settings, voices=[app.state.voices])
        app.state.engines = loaded
        if metrics is not None:
            metrics.registry.register(TtsCollector(loaded.tts.stats, lambda: loaded.tts.cache_stats))
        log.info("models ready", extra={"event": "server_ready", "load_s": loaded.load_s})
        # Watched from here on: loading the models stalls the loop (imports, sessions built), which
        # says nothing about serving, and /healthz's last-minute figures would carry it for a minute.
        async with LoopLagMonitor(LOOP_LAG_INTERVAL_S, window=LOOP_LAG_WINDOW) as app.state.loop_lag:
            try:
                yield
            finally:
                connections.close_all("the server is shutting down")
                await app.state.rtc_calls.close()
                if engines is None:
                    await loaded.close()
                await asyncio.to_thread(tracer.close)

    app = FastAPI(
        title="voxloop",
        version=__version__,
        summary="A realtime voice-chat server: OpenAI-Realtime-compatible WebSocket plus REST.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.state.settings = settings
    app.state.gate = gate
    app.state.connections = connections
    app.add_middleware(BatchPriority)
    app.add_middleware(SecurityMiddleware, gate=gate)
    app.add_middleware(CORSMiddleware, **gate.origins.cors_options())  # type: ignore[arg-type]
    app.state.tracer = tracer
    app.state.rtc_calls = RtcCalls()
    if metrics is not None:
        metrics.watch(peer_connections=lambda: len(app.state.rtc_calls.peers))
    app.state.voices = VoiceStore(settings.voices.dir, builtin_voices(settings.tts), default=settings.tts.default_voice)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        full = sessions_full(len(connections.open), settings.limits)
        if full is not None:
            log.warning("session refused", extra={"event": "session_refused", "reason": "max_sessions"})
            await refuse_websocket(websocket.scope, websocket.receive, websocket.send, CLOSE_TRY_AGAIN_LATER, full)
            return
        state = websocket.app.state
        transport = WebSocketTransport(websocket, settings.limits)
        connection = RealtimeConnection(transport, state.engines, tracer, state.voices)
        connections.add(connection)
        try:
            await connection.run()
        finally:
            connections.discard(connection)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        if metrics is None:
            raise HTTPException(404, "metrics are off: set trace.prometheus to true to serve /metrics")
        return Response(metrics.exposition(), media_type=metrics.content_type)

    from voxloop.server.rest import router
    from voxloop.server.security import router as security_router
    from voxloop.server.voices_api import router as voices_router
    from voxloop.server.webrtc import router as webrtc_router

    app.include_router(router)
    app.include_router(voices_router)
    app.include_router(webrtc_router)
    app.include_router(security_router)

    @app.get("/kiosk", include_in_schema=False)
    async def kiosk_page() -> FileResponse:
        """The kiosk page (full screen, hands free); the server's mode should be kiosk."""
        return FileResponse(WEB_CLIENT / "kiosk.html", media_type="text/html")

    if WEB_CLIENT.is_dir():
        app.mount("/", StaticFiles(directory=WEB_CLIENT, html=True), name="web_client")
    return app
