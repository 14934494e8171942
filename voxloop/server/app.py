"""The ASGI app: the realtime WebSocket, the REST API, the browser client, all on one loop.

Models load once in the lifespan (or are handed in, for tests) and every connection shares
them; each connection gets its own Session and Graph (server/realtime.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, WebSocket
from fastapi.staticfiles import StaticFiles

from voxloop import __version__
from voxloop.pipeline.config import Settings
from voxloop.server.realtime import RealtimeConnection

if TYPE_CHECKING:
    from voxloop.engine import Engines

log = logging.getLogger(__name__)

WEB_CLIENT = Path(__file__).resolve().parents[2] / "web_client"


class Connections:
    """The open realtime connections, so shutdown can tell each one."""

    def __init__(self) -> None:
        self.open: set[RealtimeConnection] = set()

    def close_all(self, reason: str) -> None:
        for connection in list(self.open):
            connection.close(reason)


def create_app(settings: Settings, engines: Engines | None = None) -> FastAPI:
    connections = Connections()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from voxloop.engine import Engines

        loaded = engines or await Engines.load(settings)
        app.state.engines = loaded
        log.info("models ready", extra={"event": "server_ready", "load_s": loaded.load_s})
        try:
            yield
        finally:
            connections.close_all("the server is shutting down")
            if engines is None:
                await loaded.close()

    app = FastAPI(
        title="voxloop",
        version=__version__,
        summary="A realtime voice-chat server: OpenAI-Realtime-compatible WebSocket plus REST.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.connections = connections

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        connection = RealtimeConnection(websocket, websocket.app.state.engines)
        connections.open.add(connection)
        try:
            await connection.run()
        finally:
            connections.open.discard(connection)

    from voxloop.server.rest import router

    app.include_router(router)
    if WEB_CLIENT.is_dir():
        app.mount("/", StaticFiles(directory=WEB_CLIENT, html=True), name="web_client")
    return app
