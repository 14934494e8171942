"""Cloud speech providers over httpx: OpenAI-compatible /v1/audio/speech, ElevenLabs, Google.

Each is optional and on when its API key is in the environment (tts.<provider>.api_key_env
names the variable; `enabled: true` turns one on without a key, for local servers). The key is
read once at load and sent only in the request header: it is never logged, never in an error
message and never in a URL. HTTP failures become the router's error types:

    connect error, timeout, 429, 5xx  ─► TransientError
    401, 403                          ─► ConfigError (the key)
    other 4xx                         ─► InputError (the provider refused the text or settings)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from voxloop.pipeline.config import CloudTtsSettings
from voxloop.pipeline.errors import ConfigError, InputError, TransientError, VoxloopError
from voxloop.stages.tts.voice import VoiceSpec

__all__ = ["api_key", "check_response", "http_client", "public_url", "request_error"]


def api_key(settings: CloudTtsSettings, provider: str) -> str:
    """The key from the environment; ConfigError when the provider is off (no key, not enabled)."""
    key = os.environ.get(settings.api_key_env, "") if settings.api_key_env else ""
    if settings.enabled is False or (settings.enabled is None and not key):
        raise ConfigError(
            f"the {provider} speech provider is off: put its API key in ${settings.api_key_env} "
            f"(or set tts.{provider}.enabled: true for a server that needs no key)"
        )
    return key


def http_client(settings: CloudTtsSettings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    return httpx.AsyncClient(base_url=settings.base_url.rstrip("/"), timeout=timeout, transport=transport)


def public_url(url: str | httpx.URL) -> str:
    """`url` without credentials or query (a key may ride in either)."""
    parts = urlsplit(str(url))
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def request_error(provider: str, url: str | httpx.URL, exc: httpx.HTTPError) -> VoxloopError:
    where = f"{provider} at {public_url(url)}"
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"{where} timed out ({type(exc).__name__}): check that it is up and not overloaded")
    return TransientError(f"{where} is unreachable ({type(exc).__name__}): check tts.{provider}.base_url")


async def check_response(provider: str, response: httpx.Response, key_env: str) -> None:
    """Raise the router's error type for a failed response; reads a little of its body for the reason."""
    status = response.status_code
    if status < 400:
        return
    body = (await response.aread())[:300].decode("utf-8", "replace").strip()
    where = f"{provider} at {public_url(response.request.url)}"
    if status in (401, 403):
        raise ConfigError(f"{where} refused the API key ({status}): put a valid key in ${key_env}")
    if status == 429 or status >= 500:
        raise TransientError(f"{where} answered {status}: {body or 'no detail'}")
    raise InputError(f"{where} refused the request ({status}): {body or 'no detail'}")


def check_settings(provider: str, voice: VoiceSpec, known: Sequence[str]) -> None:
    """InputError naming the settings of `voice` that `provider` does not take."""
    unknown = sorted(set(voice.settings) - set(known))
    if unknown:
        raise InputError(f"voice {voice.name!r}: unknown {provider} settings {unknown}; known: {', '.join(known)}")


async def send(
    provider: str, client: httpx.AsyncClient, request: httpx.Request, key_env: str, *, stream: bool
) -> httpx.Response:
    """Send `request`; a transport failure or an error status raises the router's error type.
    A streamed response that comes back is the caller's to close."""
    try:
        response = await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        raise request_error(provider, request.url, exc) from None
    try:
        await check_response(provider, response, key_env)
    except BaseException:
        await response.aclose()
        raise
    return response
