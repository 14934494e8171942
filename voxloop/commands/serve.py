"""`voxloop serve`: the realtime server on uvicorn (HTTP + WebSocket on one asyncio loop)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from types import FrameType

from voxloop.logs import setup_logging
from voxloop.pipeline.config import load_settings


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from voxloop.server.app import create_app

    settings = load_settings(args.config)
    level = args.log_level or settings.server.log_level
    setup_logging(level, json_lines=args.log_json)
    host = args.host or settings.server.host
    port = settings.server.port if args.port is None else args.port
    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Tell every session first; uvicorn then closes the sockets and runs the lifespan end.
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(app.state.connections.close_all, "the server is shutting down")
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ws="websockets-sansio",  # the websockets library's sans-I/O core (the legacy one is deprecated)
        log_level=level.lower(),
        timeout_graceful_shutdown=5,
    )
    server = Server(config)
    where = "localhost" if host in ("127.0.0.1", "::1") else host
    print(f"voxloop: loading models, then serving on http://{where}:{port}/", file=sys.stderr, flush=True)
    server.run()
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="run the realtime voice server (browser client at /)")
    parser.add_argument("--host", help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: server.port, 8765; 0 picks a free one)")
    parser.add_argument("--config", help="settings file (default: the repo's config.yaml)")
    parser.set_defaults(func=run)
