"""The `voxloop` command: one subcommand per module in voxloop/commands/."""

from __future__ import annotations

import argparse
import sys

from voxloop import __version__
from voxloop.commands import converse, models, serve, talk, trace
from voxloop.logs import setup_logging
from voxloop.pipeline.errors import VoxloopError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxloop", description="A realtime voice-chat server.")
    parser.add_argument("--version", action="version", version=f"voxloop {__version__}")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (default: WARNING; serve: server.log_level)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (serve, talk, converse, models, trace):
        command.add_parser(subparsers)
    return parser


def _errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _errors(sub)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level or "WARNING", json_lines=args.log_json)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (VoxloopError, BaseExceptionGroup) as exc:
        errors = _errors(exc)
        if not all(isinstance(e, VoxloopError) for e in errors):
            raise
        for error in errors:
            print(f"voxloop: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
