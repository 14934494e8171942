"""REST API: health, public settings, one-shot transcription and synthesis (voices: voices_api.py).

    GET  /healthz          per-stage readiness; "degraded" names what is wrong; 503 while models load
    GET  /api/config       the public settings: the API key's variable name, never its value
    POST /api/transcribe   multipart field `file` (any container FFmpeg reads) → text
    POST /api/synthesize   {"text", "voice"?, "rate"?} → audio/wav (PCM16 mono)

Nothing blocks the loop: uploads are read as a stream (and cut off at the size limit), decoding
runs in a thread, Whisper and Piper in their models' workers. Those workers are the ones the
realtime sessions use, so a REST call takes its turn with them rather than competing for cores.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import ssl
import time
import wave
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from voxloop import __version__
from voxloop.pipeline.audio import decode_audio, resample
from voxloop.pipeline.config import (
    LimitsSettings,
    LlmSettings,
    Settings,
    TtsSettings,
)
from voxloop.pipeline.errors import TransientError
from voxloop.pipeline.frames import PCM16
from voxloop.pipeline.tasks import cancel_and_wait
from voxloop.pipeline.workers import batch_priority
from voxloop.server.schemas import (
    ErrorBody,
    Health,
    LastSpoke,
    LlmHealth,
    PublicConfig,
    Stages,
    SttHealth,
    SynthesizeRequest,
    Transcription,
    TtsHealth,
    TtsProviderHealth,
    VadHealth,
    WakeHealth,
)

if TYPE_CHECKING:
    from voxloop.engine import Engines
    from voxloop.stages.tts.router import VoiceRouter

log = logging.getLogger(__name__)

router = APIRouter()

STT_RATE = 16000
MAX_UPLOAD_BYTES: int = LimitsSettings.model_fields["max_upload_bytes"].default  # the default of the setting
MULTIPART_SLACK = 64 * 1024  # room for the form's boundaries and part headers around the file
MAX_AUDIO_S = 300.0
OUTPUT_RATES = (16000, 24000, 48000)
PROBE_TIMEOUT_S = 1.0
PROBE_TTL_S = 3.0
FORMATS_HINT = "upload a recording FFmpeg reads (WAV, FLAC, OGG/Opus, MP3, M4A, WebM)"
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, it only ends the handler quietly

T = TypeVar("T")


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """A body or query that failed validation: one readable sentence in `detail` (as every other
    error here), the itemised problems in `errors`."""
    assert isinstance(exc, RequestValidationError)
    problems = jsonable_encoder(exc.errors())
    where = [".".join(str(part) for part in e["loc"] if part != "body") or "body" for e in problems]
    said = "; ".join(f"{at}: {e['msg']}" for at, e in zip(where, problems, strict=True))
    body = ErrorBody(detail=f"the request is not valid: {said}", errors=problems)
    return JSONResponse(body.model_dump(mode="json"), status_code=422)


class BatchPriority:
    """The REST API uses the shared models at batch priority: sessions in conversation go first,
    and a long upload gives them the model between two Whisper windows (pipeline/workers.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            with batch_priority():
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


# --- health ---------------------------------------------------------------------------------


class LlmProbe:
    """Does the OpenAI-compatible server answer `GET {base_url}/models`? Asked at most once per `ttl_s`."""

    def __init__(
        self, settings: LlmSettings, *, ttl_s: float = PROBE_TTL_S, timeout_s: float = PROBE_TIMEOUT_S
    ) -> None:
        self.base_url = settings.base_url.rstrip("/")
        self._key_env = settings.api_key_env
        self._ttl_s, self._timeout_s = ttl_s, timeout_s
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._reason: str | None = None

    async def reason(self) -> str | None:
        """Why the server is not usable, or None; concurrent callers share one probe."""
        async with self._lock:
            if self._checked_at is None or time.monotonic() - self._checked_at >= self._ttl_s:
                reason = await self._probe()
                if reason != self._reason or self._checked_at is None:
                    extra = {"event": "health_llm_probe", "ready": reason is None, "server": public_url(self.base_url)}
                    log.log(logging.INFO if reason is None else logging.WARNING, "llm server probed", extra=extra)
                self._reason, self._checked_at = reason, time.monotonic()
            return self._reason

    async def _probe(self) -> str | None:
        where = f"the LLM server at {public_url(self.base_url)}"
        key = os.environ.get(self._key_env, "") if self._key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with httpx.AsyncClient(timeout=self._timeout_s, verify=_tls_context()) as client:
                response = await client.get(f"{self.base_url}/models", headers=headers)
        except httpx.TimeoutException:
            return f"{where} did not answer within {self._timeout_s:g} s: check that it is running and not overloaded"
        except httpx.HTTPError as exc:
            return f"{where} is unreachable ({_network_reason(exc)}): start it or set llm.base_url"
        status = response.status_code
        if status in (401, 403):
            return f"{where} refused the API key ({status}): put a valid key in ${self._key_env}"
        if status == 404:
            return f"{where} has no /models (404): check llm.base_url (it usually ends in /v1)"
        if status >= 400:
            return f"{where} answered {status} to GET /models: check its log"
        return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every probe: making one reads the CA bundle (~15 ms of CPU here), and a
    client polling /healthz every half second made that an eighth of the event loop's time."""
    return ssl.create_default_context()


def _network_reason(exc: httpx.HTTPError) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower():
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def public_url(url: str) -> str:
    """`url` without user:password or query, which may carry credentials."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


async def _llm_health(request: Request, settings: LlmSettings) -> LlmHealth:
    health = LlmHealth(ready=True, backend=settings.backend, model=settings.model)
    if settings.backend != "openai":
        return health
    probe: LlmProbe | None = getattr(request.app.state, "llm_probe", None)
    if probe is None:
        probe = request.app.state.llm_probe = LlmProbe(settings)
    reason = await probe.reason()
    return health.model_copy(update={"ready": reason is None, "reason": reason, "base_url": public_url(probe.base_url)})


async def _stages(request: Request, engines: Engines) -> Stages:
    s = engines.settings
    if engines.wake is not None:
        wake = WakeHealth(ready=True, enabled=True, words=[word.name for word in engines.wake.words])
    elif s.wake.enabled:
        wake = WakeHealth(ready=False, enabled=True, words=[], reason="wake.enabled is true but no model is loaded")
    else:
        wake = WakeHealth(ready=True, enabled=False, words=[])
    return Stages(
        vad=VadHealth(ready=True),
        stt=SttHealth(ready=True, model=s.stt.model, language=s.stt.language),
        llm=await _llm_health(request, s.llm),
        tts=tts_health(engines),
        wake=wake,
    )


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "the models are still loading"}},
    tags=["health"],
)
async def healthz(request: Request, response: Response) -> Health:
    """Per-stage readiness. 200 with status ok or degraded (the problems say why); 503 while starting."""
    sessions = len(request.app.state.connections.open)
    engines: Engines | None = getattr(request.app.state, "engines", None)
    if engines is None:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return Health(status="starting", stages=None, problems=[], sessions=sessions, version=__version__)
    stages = await _stages(request, engines)
    problems = [
        f"{name}: {stage.reason or 'not ready'}"
        for name, stage in (("vad", stages.vad), ("stt", stages.stt), ("llm", stages.llm), ("tts", stages.tts))
        if not stage.ready
    ]
    problems += [f"tts: {problem}" for problem in stages.tts.problems]
    if stages.wake.enabled and not stages.wake.ready:
        problems.append(f"wake: {stages.wake.reason}")
    status: Literal["ok", "degraded"] = "degraded" if problems else "ok"
    lag = getattr(request.app.state, "loop_lag", None)
    return Health(
        status=status,
        stages=stages,
        problems=problems,
        sessions=sessions,
        version=__version__,
        loop_lag_ms=lag.summary() if lag is not None else None,
    )


# --- config ---------------------------------------------------------------------------------


@router.get("/api/config", response_model=PublicConfig, tags=["config"])
async def public_config(request: Request) -> PublicConfig:
    """The settings in effect, minus secrets and local file paths (cache dir, trace file)."""
    s: Settings = request.app.state.settings
    llm = s.llm.model_copy(update={"base_url": public_url(s.llm.base_url)})
    return PublicConfig(
        version=__version__,
        server=s.server,
        audio=s.audio,
        wake=s.wake,
        vad=s.vad,
        stt=s.stt,
        llm=llm,
        chunker=s.chunker,
        tts=public_tts(s.tts),
    )


def public_tts(tts: TtsSettings) -> TtsSettings:
    """tts.* without credentials in the cloud URLs and without local paths (cache dir, references)."""
    clouds = {name: getattr(tts, name) for name in ("openai", "elevenlabs", "google")}
    update: dict[str, Any] = {
        name: cloud.model_copy(update={"base_url": public_url(cloud.base_url)}) for name, cloud in clouds.items()
    }
    update["cache"] = tts.cache.model_copy(update={"dir": None})
    update["voices"] = [voice.model_copy(update={"reference": None}) for voice in tts.voices]
    if tts.xtts is not None:  # its checkpoint and cache directories are local paths
        update["xtts"] = {
            key: value for key, value in tts.xtts.items() if not (isinstance(value, str) and "/" in value)
        }
    return tts.model_copy(update=update)


# --- transcribe -----------------------------------------------------------------------------


def multipart_body(file: str, **fields: str) -> dict[str, Any]:
    """The OpenAPI request body of an upload: a `file` part described by `file`, and text
    fields (name → description). Every part is required but `settings` and `language`."""
    properties: dict[str, Any] = {name: {"type": "string", "description": text} for name, text in fields.items()}
    properties["file"] = {"type": "string", "format": "binary", "description": file}
    required = [name for name in properties if name not in OPTIONAL_FIELDS]
    schema = {"type": "object", "required": required, "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


OPTIONAL_FIELDS = frozenset({"settings", "language"})
_UPLOAD_BODY = multipart_body(
    f"an audio file, at most {MAX_UPLOAD_BYTES >> 20} MB (limits.max_upload_bytes) and "
    f"{MAX_AUDIO_S / 60:g} minutes, in a container FFmpeg reads"
)


@router.post(
    "/api/transcribe",
    response_model=Transcription,
    openapi_extra=_UPLOAD_BODY,
    responses=_errors(400, 413, 415, 503),
    tags=["speech"],
)
async def transcribe(request: Request) -> Transcription:
    """Transcribe one uploaded audio file with the server's Whisper model."""
    engines = _engines(request)
    started = time.perf_counter()
    upload = await read_upload(request, "send the audio in the form field 'file' (curl -F file=@speech.wav)")
    filename, data = upload.filename, upload.data
    if not data:
        raise HTTPException(400, f"{filename!r} is empty: {FORMATS_HINT}")
    pcm = await unless_disconnected(request, _decode(filename, data))
    duration_s = len(pcm) / STT_RATE
    result = await unless_disconnected(request, engines.stt.atranscribe(pcm))
    extra = {
        "event": "rest_transcribe",
        "bytes": len(data),
        "audio_s": round(duration_s, 3),
        "ms": round((time.perf_counter() - started) * 1000, 1),
        "chars": len(result.text),
        "rejected_reason": result.rejected_reason,
    }
    log.info("transcribed upload", extra=extra)
    return Transcription(
        text=result.text,
        language=result.language,
        duration_s=round(duration_s, 3),
        rejected_reason=result.rejected_reason,
    )


@dataclass(frozen=True, slots=True)
class Upload:
    """A multipart form's one file (field `file`) and its text fields."""

    filename: str
    data: bytes
    fields: dict[str, str]


async def read_upload(request: Request, hint: str) -> Upload:
    """The form, read as the request streams in: 413 as soon as it is too big, else 400/415 ending
    with `hint` (how to send it)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, f"the upload is not multipart/form-data: {hint}")
    max_bytes = upload_limit(request)
    limit = max_bytes + MULTIPART_SLACK
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_big(max_bytes)
    parser = MultiPartParser(request.headers, _limited(request.stream(), limit), max_files=1, max_fields=8)
    try:
        form = await parser.parse()  # on any error the parser closes the files it spooled
    except MultiPartException as exc:
        raise HTTPException(400, f"the multipart form is malformed ({exc.message}): {hint}") from None
    except ClientDisconnect:
        raise client_gone(request.url.path, "upload") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, f"no file in the form field 'file': {hint}")
        data = await upload.read()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        filename = upload.filename or "upload"
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise _too_big(max_bytes)
    return Upload(filename, data, fields)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _too_big(limit - MULTIPART_SLACK)
        yield chunk


def client_gone(path: str, during: str) -> HTTPException:
    """The client hung up: log it and end the handler (the answer can reach nobody)."""
    log.info("client disconnected", extra={"event": "client_gone", "path": path, "during": during})
    return HTTPException(CLIENT_GONE, f"the client closed the connection during the {during}")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work` (after the request body was read), cancelling it as soon as the client disconnects:
    a dropped upload stops using the models at once. Raises HTTPException(499) then."""
    job = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_disconnected(request), name="http-disconnect-watch")
    try:
        await asyncio.wait((job, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*(task for task in (job, watcher) if not task.done()))
    if job.cancelled():
        raise client_gone(request.url.path, "processing")
    return job.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def upload_limit(request: Request) -> int:
    """The largest upload this server takes (limits.max_upload_bytes)."""
    settings: Settings = request.app.state.settings
    return settings.limits.max_upload_bytes


def _too_big(max_bytes: int) -> HTTPException:
    size = f"{max_bytes / 2**20:g} MB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
    return HTTPException(
        413, f"the upload is larger than {size} (limits.max_upload_bytes): send a shorter or compressed recording"
    )


async def _decode(filename: str, data: bytes) -> PCM16:
    try:
        pcm = await asyncio.to_thread(decode_audio, data, STT_RATE)
    except ValueError as exc:
        detail = getattr(exc.__cause__, "strerror", None) or str(exc).replace("<bytes>", repr(filename))
        raise HTTPException(415, f"cannot decode {filename!r} as audio ({detail}): {FORMATS_HINT}") from None
    if len(pcm) == 0:
        raise HTTPException(400, f"{filename!r} holds no audio samples: {FORMATS_HINT}")
    if len(pcm) > MAX_AUDIO_S * STT_RATE:
        raise HTTPException(
            413, f"{filename!r} is {len(pcm) / STT_RATE:.0f} s long; the limit is {MAX_AUDIO_S:g} s: split it"
        )
    return pcm


# --- synthesize and voices ------------------------------------------------------------------


@router.post(
    "/api/synthesize",
    response_class=Response,
    responses={200: {"content": {"audio/wav": {}}, "description": "PCM16 mono WAV"}, **_errors(404, 422, 503)},
    tags=["speech"],
)
async def synthesize(body: SynthesizeRequest, request: Request) -> Response:
    """Speak `text` with a voice from /api/voices; returns a WAV file."""
    engines = _engines(request)
    router = engines.tts
    name = body.voice or router.default_voice
    if router.voice(name) is None:
        known = ", ".join(router.voice_names())
        raise HTTPException(404, f"unknown voice {name!r}: use one of {known} (GET /api/voices)")
    started = time.perf_counter()
    try:
        pcm, voice_rate, spoken = await router.speak(body.text, name)
    except TransientError as exc:
        raise HTTPException(503, f"{exc}: retry, or pick another voice", headers={"Retry-After": "5"}) from None
    if not len(pcm):
        raise HTTPException(422, "the text holds nothing the voice can speak: give it words")
    rate = body.rate or voice_rate
    if rate != voice_rate:
        pcm = await asyncio.to_thread(resample, pcm, voice_rate, rate)
    extra = {
        "event": "rest_synthesize",
        "chars": len(body.text),
        "voice": name,
        "spoke": spoken.voice if spoken else None,
        "provider": spoken.provider if spoken else None,
        "rate": rate,
        "audio_s": round(len(pcm) / rate, 3),
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    log.info("synthesized text", extra=extra)
    return Response(content=wav_bytes(pcm, rate), media_type="audio/wav")


async def _speak(tts: VoiceRouter, text: str, voice: str | None = None) -> PCM16:
    """All of `text`'s audio at `tts.sample_rate` (the built-in voice's); cancelling stops the synthesis."""
    pcm, rate, _ = await tts.speak(text, voice)
    if len(pcm) and rate != tts.sample_rate:
        pcm = await asyncio.to_thread(resample, pcm, rate, tts.sample_rate)
    return pcm


def wav_bytes(pcm: PCM16, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return buffer.getvalue()


def tts_health(engines: Engines) -> TtsHealth:
    """The TTS stage: ready while any voice of the default chain can speak; each provider's state,
    and a problem for each one in backoff (its voices fall back meanwhile)."""
    router = engines.tts
    providers = [TtsProviderHealth(**asdict(status)) for status in router.health()]
    chain = {spec.provider for spec in router.chain()}
    problems = [
        f"the {p.name} provider {p.reason or 'failed'}; its voices fall back"
        + (f" (retry in {p.retry_in_s:.0f} s)" if p.retry_in_s else "")
        for p in providers
        if p.state == "unhealthy"
    ]
    usable = any(p.state != "unhealthy" for p in providers if p.name in chain)
    last = router.last_spoke
    return TtsHealth(
        ready=usable,
        reason=None if usable else "no provider of the default voice's chain can speak: see problems",
        engine=engines.settings.tts.engine,
        voice=router.default_voice,
        sample_rate=router.sample_rate,
        providers=providers,
        problems=problems,
        last_spoke=LastSpoke(voice=last.voice, provider=last.provider, fallback=last.fallback) if last else None,
    )


def voice_name(configured: str) -> str:
    """The name a voice setting (an asset name, a .onnx path or a directory) is known by."""
    return Path(configured).name.removesuffix(".onnx").removeprefix("piper-")


def _engines(request: Request) -> Engines:
    engines: Engines | None = getattr(request.app.state, "engines", None)
    if engines is None:
        raise HTTPException(503, "the models are still loading: retry in a few seconds", headers={"Retry-After": "5"})
    return engines
