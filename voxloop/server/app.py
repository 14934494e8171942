"""The ASGI app: the realtime WebSocket, the REST API, the browser client, all on one loop.

Models load once in the lifespan (or are handed in, for tests) and every connection shares
them; each connection gets its own Session and Graph (server/realtime.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Response, WebSocket
from fastapi.staticfiles import StaticFiles

from voxloop import __version__
from voxloop.pipeline.config import Settings
from voxloop.pipeline.looplag import LoopLagMonitor
from voxloop.server.realtime import RealtimeConnection
from voxloop.tracing import build_tracer, prometheus_sink

if TYPE_CHECKING:
    from voxloop.engine import Engines

log = logging.getLogger(__name__)

WEB_CLIENT = Path(__file__).resolve().parents[2] / "web_client"
LOOP_LAG_INTERVAL_S = 0.01
LOOP_LAG_WINDOW = 6000  # the last minute of samples, reported by /healthz


class Connections:
    """The open realtime connections, so shutdown can tell each one."""

    def __init__(self) -> None:
        self.open: set[RealtimeConnection] = set()

    def close_all(self, reason: str) -> None:
        for connection in list(self.open):
            connection.close(reason)


def create_app(settings: Settings, engines: Engines | None = None) -> FastAPI:
    connections = Connections()
    tracer = build_tracer(settings)
    metrics = prometheus_sink(tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from voxloop.engine import Engines

        async with LoopLagMonitor(LOOP_LAG_INTERVAL_S, window=LOOP_LAG_WINDOW) as app.state.loop_lag:
            loaded = engines or await Engines.load(settings)
            app.state.engines = loaded
            log.info("models ready", extra={"event": "server_ready", "load_s": loaded.load_s})
            try:
                yield
            finally:
                connections.close_all("the server is shutting down")
                if engines is None:
                    await loaded.close()
                await asyncio.to_thread(tracer.close)

    app = FastAPI(
        title="voxloop",
        version=__version__,
        summary="A realtime voice-chat server: OpenAI-Realtime-compatible WebSocket plus REST.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.connections = connections
    app.state.tracer = tracer

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        connection = RealtimeConnection(websocket, websocket.app.state.engines, tracer)
        connections.open.add(connection)
        try:
            await connection.run()
        finally:
            connections.open.discard(connection)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        if metrics is None:
            raise HTTPException(404, "metrics are off: set trace.prometheus to true to serve /metrics")
        return Response(metrics.exposition(), media_type=metrics.content_type)

    from voxloop.server.rest import router

    app.include_router(router)
    if WEB_CLIENT.is_dir():
        app.mount("/", StaticFiles(directory=WEB_CLIENT, html=True), name="web_client")
    return app
