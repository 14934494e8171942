"""`voxloop models list | fetch | verify`: the model assets, where they come from, and the local cache.

Results go to stdout, progress and errors to stderr; each command returns an exit code
(0 ok, 1 something failed or is damaged).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from voxloop.pipeline.asset_manifest import Asset
from voxloop.pipeline.assets import AssetStore, PipDownloader, format_size
from voxloop.pipeline.config import load_settings
from voxloop.pipeline.errors import VoxloopError

Command = Callable[[argparse.Namespace], int]

_CACHED_LABEL = {"cached": "yes", "missing": "no", "unverified": "unhashed", "damaged": "DAMAGED"}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = subparsers.add_parser(
        "models", help="list, fetch and verify model assets", description=__doc__.splitlines()[0]
    )
    models.set_defaults(func=_print_help(models))
    commands = models.add_subparsers(title="commands", metavar="COMMAND")

    listing = commands.add_parser("list", help="every model asset: licence, size, source, cached or not")
    listing.add_argument("--json", action="store_true", help="print everything, including each file's sha256")
    listing.set_defaults(func=run_list)

    fetch = commands.add_parser("fetch", help="download, assemble and verify assets into the cache")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="default: the assets the default config uses")
    fetch.add_argument("--all", action="store_true", help="fetch every asset in the manifest")
    fetch.add_argument("--force", action="store_true", help="fetch again even if cached (repairs damage)")
    fetch.set_defaults(func=run_fetch)

    verify = commands.add_parser("verify", help="re-hash cached assets against the manifest's sha256")
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: every cached asset")
    verify.set_defaults(func=run_verify)

    for command in (listing, fetch, verify):
        command.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="default: assets.cache_dir, $VOXLOOP_CACHE_DIR, user cache",
        )
        command.add_argument("--config", help="settings file whose assets.cache_dir to use (without --cache-dir)")


def open_store(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> AssetStore:
    """The store for --cache-dir, else the configured cache dir (assets.cache_dir), else the default."""
    cache_dir = args.cache_dir
    if cache_dir is None:
        cache_dir = load_settings(getattr(args, "config", None)).assets.cache_dir
    # On a terminal, pip draws its own download progress bar; elsewhere our step lines suffice.
    pip = PipDownloader(echo=progress is not None and sys.stderr.isatty())
    return AssetStore(cache_dir, progress=progress, downloader=pip)


def _reporting_errors(command: Command) -> Command:
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except VoxloopError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


@_reporting_errors
def run_list(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.json:
        print(json.dumps([_describe(store, asset) for asset in store.manifest.values()], indent=2))
        return 0
    rows = [("NAME", "LICENCE", "SIZE", "CACHED", "SHA256", "SOURCE")]
    for asset in store.manifest.values():
        cached = _CACHED_LABEL[store.state(asset.name)]
        sha = asset.main_file.sha256[:12]
        rows.append((asset.name, asset.licence, format_size(asset.size), cached, sha, asset.sources[0].label))
    print(f"model assets (cache: {store.cache_dir})")
    print(_table(rows))
    notes = [f"  {asset.name}: {asset.notes}" for asset in store.manifest.values() if asset.notes]
    if notes:
        print("\nlicence notes:\n" + "\n".join(notes))
    return 0


@_reporting_errors
def run_fetch(args: argparse.Namespace) -> int:
    store = open_store(args, progress=_to_stderr)
    names: list[str] = list(args.names)
    if args.all:
        names = list(store.manifest)
    elif not names:
        names = [asset.name for asset in store.manifest.values() if asset.default]
        _to_stderr(f"fetching the default config's assets ({', '.join(names)}); --all fetches every asset")
    for report in store.fetch(names, force=args.force):
        print(f"{report.name}: {'fetched' if report.downloaded else 'already cached'} in {report.path}")
    return 0


@_reporting_errors
def run_verify(args: argparse.Namespace) -> int:
    store = open_store(args)
    names: list[str] = list(args.names) or [n for n in store.manifest if store.state(n) != "missing"]
    if not names:
        print(f"nothing cached in {store.cache_dir}; fetch assets with `voxloop models fetch`")
        return 0
    failed = 0
    for name in names:
        try:
            path = store.verify(name)
        except VoxloopError as exc:
            failed += 1
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            continue
        print(f"{name}: ok, {format_size(store.asset(name).size)} match the manifest's sha256 ({path})")
    return 1 if failed else 0


def _describe(store: AssetStore, asset: Asset) -> dict[str, Any]:
    state = store.state(asset.name)
    return {
        "name": asset.name,
        "description": asset.description,
        "licence": asset.licence,
        "notes": asset.notes,
        "origin": asset.origin,
        "size": asset.size,
        "default": asset.default,
        "state": state,
        "path": str(store.cache_dir / asset.name) if state != "missing" else None,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in asset.files],
        "sources": [source.label for source in asset.sources],
    }


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _print_help(parser: argparse.ArgumentParser) -> Command:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
