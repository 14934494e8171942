"""`voxloop serve`: the realtime server on uvicorn (HTTP + WebSocket on one asyncio loop)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from types import FrameType

from voxloop.logs import setup_logging
from voxloop.pipeline.config import load_settings

FAREWELL_S = 2.0  # the longest shutdown waits for sessions to send why they are closed


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from voxloop.server.app import create_app
    from voxloop.server.limits import ws_max_size
    from voxloop.server.security import describe_auth
    from voxloop.server.transport import ClosableWebSocketProtocol

    settings = load_settings(args.config)
    if args.kiosk:
        settings = settings.model_copy(update={"mode": "kiosk"})
    level = args.log_level or settings.server.log_level
    setup_logging(level, json_lines=args.log_json)
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"host": host, "port": port})})
    app = create_app(settings)  # refuses (ConfigError) to serve beyond loopback without an API key
    auth = describe_auth(settings, app.state.gate.auth)
    logging.getLogger(__name__).info(auth, extra={"event": "server_auth", "auth": app.state.gate.auth.enabled})

    class Server(uvicorn.Server):
        farewell: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Tell every session first and let it send that; only then may uvicorn close the
            # sockets (it would race the sessions' senders) and run the lifespan end.
            if self.farewell is not None:  # a second signal: no more waiting
                super().handle_exit(sig, frame)
                return
            asyncio.get_event_loop().call_soon_threadsafe(self._start_farewell, sig, frame)

        def _start_farewell(self, sig: int, frame: FrameType | None) -> None:
            self.farewell = asyncio.create_task(self._farewell_then_exit(sig, frame), name="voxloop-farewell")

        async def _farewell_then_exit(self, sig: int, frame: FrameType | None) -> None:
            try:
                await app.state.connections.close_all_and_wait("the server is shutting down", FAREWELL_S)
            finally:
                uvicorn.Server.handle_exit(self, sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=ClosableWebSocketProtocol,  # websockets-sansio, plus closing a client that stopped reading (transport.py)
        log_level=level.lower(),
        ws_max_size=ws_max_size(settings.limits),  # above it uvicorn closes with 1009; below, limits.py answers
        timeout_graceful_shutdown=5,
    )
    server = Server(config)
    where = "localhost" if host in ("127.0.0.1", "::1") else host
    page = "kiosk" if settings.kiosk_mode else ""
    print(f"voxloop: {auth}", file=sys.stderr, flush=True)
    print(f"voxloop: loading models, then serving on http://{where}:{port}/{page}", file=sys.stderr, flush=True)
    server.run()
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="run the realtime voice server (browser client at /)")
    parser.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port, 8765; 0 picks a free one)")
    parser.add_argument("--config", help="settings file (default: the repo's config.yaml)")
    parser.add_argument(
        "--kiosk", action="store_true", help="kiosk mode: asleep until a wake word (mode: kiosk); page at /kiosk"
    )
    parser.set_defaults(func=run)
