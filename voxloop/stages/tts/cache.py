"""An optional on-disk cache of spoken phrases (greetings, fixed prompts), content-addressed.

    key = sha256(provider, model, language, settings, reference file's identity, text)
    <dir>/<key[:2]>/<key>.wav          written atomically (temp file + rename)

An entry older than `ttl_s` is a miss (and is removed); after each store the oldest entries
are evicted until the whole cache fits in `max_bytes`. Disk work runs in a thread, never on
the event loop. Keys never contain the text itself, and nothing here logs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

from voxloop.pipeline.audio import read_wav, write_wav
from voxloop.stages.tts.stats import CacheStats
from voxloop.stages.tts.voice import PcmBlock, VoiceSpec

log = logging.getLogger(__name__)


def cache_key(voice: VoiceSpec, text: str) -> str:
    """The content address of `text` spoken in `voice`: any change to what shapes the sound changes it."""
    reference = None
    if voice.reference is not None:
        try:
            stat = voice.reference.stat()
            reference = [str(voice.reference), stat.st_size, stat.st_mtime_ns]
        except OSError:
            reference = [str(voice.reference)]
    identity = {
        "provider": voice.provider,
        "model": voice.model,
        "language": voice.language,
        "settings": dict(voice.settings),
        "reference": reference,
        "text": text,
    }
    blob = json.dumps(identity, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


class AudioCache:
    def __init__(
        self, directory: Path, *, max_bytes: int, ttl_s: float, max_chars: int, now: Callable[[], float] = time.time
    ) -> None:
        self.directory = directory
        self.max_bytes, self.ttl_s, self.max_chars = max_bytes, ttl_s, max_chars
        self.stats = CacheStats()
        self._now = now
        self._lock = asyncio.Lock()  # one eviction pass at a time

    def accepts(self, text: str) -> bool:
        return len(text) <= self.max_chars

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.wav"

    async def get(self, key: str) -> PcmBlock | None:
        block = await asyncio.to_thread(self._read, key)
        if block is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return block

    async def put(self, key: str, block: PcmBlock) -> None:
        async with self._lock:
            await asyncio.to_thread(self._write, key, block)
            self.stats.stored += 1
            await asyncio.to_thread(self.evict)

    def _read(self, key: str) -> PcmBlock | None:
        path = self.path(key)
        try:
            age = self._now() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        if age > self.ttl_s:
            path.unlink(missing_ok=True)
            return None
        try:
            pcm, rate = read_wav(path)
        except (OSError, ValueError, EOFError, wave.Error) as exc:  # a damaged entry is a miss, and goes
            log.warning("tts cache entry unreadable", extra={"event": "tts_cache_bad_entry", "error": str(exc)})
            path.unlink(missing_ok=True)
            return None
        return PcmBlock(pcm, rate)

    def _write(self, key: str, block: PcmBlock) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".wav")
        os.close(fd)
        try:
            write_wav(tmp, block.pcm, block.sample_rate)
            now = self._now()
            os.utime(tmp, (now, now))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def evict(self) -> int:
        """Remove expired entries, then the oldest until the cache fits; returns how many went."""
        entries = []
        for path in self.directory.glob("*/*.wav"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        entries.sort()
        now, total, removed = self._now(), sum(size for _, size, _ in entries), 0
        for mtime, size, path in entries:
            if now - mtime <= self.ttl_s and total <= self.max_bytes:
                continue
            path.unlink(missing_ok=True)
            total, removed = total - size, removed + 1
        if removed:
            log.info("tts cache evicted", extra={"event": "tts_cache_evict", "removed": removed, "bytes": total})
        return removed

    def size_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.directory.glob("*/*.wav"))
