"""Each speech provider's health (with backoff) and its numbers, for /healthz and /metrics.

    failure ─► unhealthy for backoff_initial_s, doubling per failure up to backoff_max_s
    after the pause ─► the next request may try it again (one probe); success ─► healthy

Times are seconds on an injected clock (the event loop's by default), so tests run on a
virtual one. Nothing here knows about sessions or HTTP.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

FailureKind = Literal["load", "error", "deadline"]
FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
EMA_ALPHA = 0.2


def loop_time() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class ProviderHealth:
    """Whether a provider may be asked now; failures push the next try back exponentially."""

    backoff_initial_s: float
    backoff_max_s: float
    consecutive_failures: int = 0
    retry_at: float | None = None
    reason: str | None = None

    @property
    def healthy(self) -> bool:
        return self.consecutive_failures == 0

    def available(self, now: float) -> bool:
        """Healthy, or unhealthy but its backoff has run out (the next request is a probe)."""
        return self.retry_at is None or now >= self.retry_at

    def failed(self, reason: str, now: float) -> float:
        """Record a failure; returns the backoff, in seconds, before the provider is tried again."""
        self.consecutive_failures += 1
        backoff = min(self.backoff_initial_s * 2.0 ** (self.consecutive_failures - 1), self.backoff_max_s)
        self.retry_at, self.reason = now + backoff, reason
        return backoff

    def succeeded(self) -> None:
        self.consecutive_failures, self.retry_at, self.reason = 0, None, None

    def retry_in(self, now: float) -> float | None:
        return None if self.retry_at is None else max(0.0, self.retry_at - now)


@dataclass
class ProviderStats:
    """Requests, failures by kind, first-audio latency (an EMA and a histogram)."""

    requests: int = 0
    failures: dict[FailureKind, int] = field(default_factory=lambda: {"load": 0, "error": 0, "deadline": 0})
    first_audio_ema_s: float | None = None
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(FIRST_AUDIO_BUCKETS) + 1))
    first_audio_sum_s: float = 0.0
    spoke: int = 0  # requests that produced audio

    def first_audio(self, seconds: float) -> None:
        self.spoke += 1
        self.first_audio_sum_s += seconds
        self.bucket_counts[bisect.bisect_left(FIRST_AUDIO_BUCKETS, seconds)] += 1
        ema = self.first_audio_ema_s
        self.first_audio_ema_s = seconds if ema is None else ema + EMA_ALPHA * (seconds - ema)

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        bounds = [*(str(b) for b in FIRST_AUDIO_BUCKETS), "+Inf"]
        total, out = 0, []
        for bound, count in zip(bounds, self.bucket_counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0


class TtsCollector:
    """A prometheus_client collector that reads the router's numbers at scrape time.

    voxloop_tts_requests_total{provider}
    voxloop_tts_failures_total{provider,kind}        kind: load, error, deadline
    voxloop_tts_first_audio_seconds{provider}        histogram
    voxloop_tts_first_audio_ema_seconds{provider}
    voxloop_tts_provider_healthy{provider}           1 or 0
    voxloop_tts_cache_{hits,misses,stored}_total
    """

    def __init__(
        self,
        stats: Callable[[], Mapping[str, tuple[ProviderStats, ProviderHealth]]],
        cache: Callable[[], CacheStats | None],
    ) -> None:
        self._stats, self._cache = stats, cache

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("voxloop_tts_requests", "Speech requests per provider", labels=["provider"])
        failures = CounterMetricFamily("voxloop_tts_failures", "Provider failures", labels=["provider", "kind"])
        latency = HistogramMetricFamily(
            "voxloop_tts_first_audio_seconds", "Request to first audio block", labels=["provider"]
        )
        ema = GaugeMetricFamily("voxloop_tts_first_audio_ema_seconds", "First-audio EMA", labels=["provider"])
        healthy = GaugeMetricFamily("voxloop_tts_provider_healthy", "1: healthy, 0: in backoff", labels=["provider"])
        for name, (stats, health) in sorted(self._stats().items()):
            requests.add_metric([name], stats.requests)
            for kind, count in stats.failures.items():
                failures.add_metric([name, kind], count)
            latency.add_metric([name], stats.cumulative_buckets(), stats.first_audio_sum_s)
            if stats.first_audio_ema_s is not None:
                ema.add_metric([name], stats.first_audio_ema_s)
            healthy.add_metric([name], 1.0 if health.healthy else 0.0)
        yield from (requests, failures, latency, ema, healthy)
        cache = self._cache()
        if cache is not None:
            for key, value in (("hits", cache.hits), ("misses", cache.misses), ("stored", cache.stored)):
                yield CounterMetricFamily(f"voxloop_tts_cache_{key}", f"Audio cache {key}", value=value)
