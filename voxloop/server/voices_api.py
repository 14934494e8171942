"""REST API for voices: list, clone from an uploaded recording, change, delete, preview.

    GET    /api/voices                  every voice: built-in (config.yaml) and cloned (voices/voices.yaml)
    POST   /api/voices                  multipart: name, file (the reference recording), settings? (JSON), language?
    PATCH  /api/voices/{name}           JSON {settings?, language?, fallback?}
    DELETE /api/voices/{name}
    POST   /api/voices/{name}/preview   JSON {text} → audio/wav
    GET    /api/voices/{name}/sample    the reference recording (WAV)

An upload is read as it streams in and cut off at the size limit (rest.py's reader), decoded in
a thread, checked by voices/quality.py (speech found by the server's Silero VAD, in its worker)
and only then stored (voices/store.py, atomic). A rejection is a 4xx whose `code` says why and
whose `detail` says what to do, with the measures when the audio could be decoded.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from voxloop.pipeline.frames import PCM16
from voxloop.server.rest import (
    MAX_UPLOAD_BYTES,
    _engines,
    _errors,
    _speak,
    multipart_body,
    read_upload,
    wav_bytes,
)
from voxloop.server.schemas import (
    PreviewRequest,
    Voice,
    VoiceCreated,
    VoicePatch,
    VoiceQuality,
    VoiceRejected,
    Voices,
    VoiceStatus,
    XttsVoiceSettings,
    check_language,
)
from voxloop.stages.tts.voice import VoiceSpec
from voxloop.voices.quality import REFERENCE_RATE, QualityReport, UploadRejected, assess, trimmed
from voxloop.voices.store import StoredVoice, VoiceStore, VoiceStoreError, check_name

if TYPE_CHECKING:
    from voxloop.engine import Engines

log = logging.getLogger(__name__)

router = APIRouter(tags=["voices"])

REJECT_STATUS = {"empty": 400, "not_audio": 415}  # every other rejection code: 422
UPLOAD_HINT = "send multipart/form-data with 'name' and the recording in 'file' (curl -F name=alice -F file=@me.wav)"

_UPLOAD_BODY = multipart_body(
    f"6-30 s of one person speaking; at most {MAX_UPLOAD_BYTES // 2**20} MB; WAV, MP3, M4A, OGG, WebM or anything "
    "FFmpeg reads",
    name="letters, digits, '-' and '_' (1-48)",
    settings="JSON: XttsVoiceSettings",
    language="the language the voice speaks (en)",
)


def voice_store(request: Request) -> VoiceStore:
    store: VoiceStore = request.app.state.voices
    return store


# --- listing --------------------------------------------------------------------------------


@router.get("/api/voices", response_model=Voices, responses=_errors(503))
async def list_voices(request: Request) -> Voices:
    """Every voice; `default` is the one the realtime sessions speak with unless they pick another."""
    engines = _engines(request)
    store = voice_store(request)
    voices = [describe(entry, engines) for entry in store.entries()]
    return Voices(voices=voices, default=store.default or voices[0].name)


def describe(entry: StoredVoice, engines: Engines) -> Voice:
    spec = entry.spec
    rate: int | None = None
    if spec.provider == "piper" and spec.model == engines.settings.tts.voice:
        rate = engines.tts.sample_rate
    elif spec.provider == "xtts":
        rate = REFERENCE_RATE
    return Voice(
        name=spec.name,
        engine=spec.provider,
        language=spec.language,
        sample_rate=rate,
        status=_status(spec, engines),
        builtin=entry.builtin,
        sample=f"/api/voices/{spec.name}/sample" if spec.reference is not None else None,
        settings=dict(spec.settings),
        fallback=list(spec.fallback),
    )


def _status(spec: VoiceSpec, engines: Engines) -> VoiceStatus:
    if spec.provider != "xtts":
        return "ready"
    if spec.reference is None or not spec.reference.is_file():
        return "missing"
    return "ready" if engines.settings.tts.xtts is not None else "fallback"


# --- upload ---------------------------------------------------------------------------------


@router.post(
    "/api/voices",
    status_code=201,
    response_model=VoiceCreated,
    openapi_extra=_UPLOAD_BODY,
    responses={
        400: {"model": VoiceRejected},
        409: {"model": VoiceRejected},
        413: {"model": VoiceRejected},
        415: {"model": VoiceRejected},
        422: {"model": VoiceRejected},
        503: {"model": VoiceRejected},
    },
)
async def create_voice(request: Request) -> Response:
    """Clone a voice from a recording: checked (6-30 s of clear speech, not music), trimmed and stored."""
    engines = _engines(request)
    store = voice_store(request)
    started = time.perf_counter()
    upload = await read_upload(request, UPLOAD_HINT)
    fields, data = upload.fields, upload.data
    name, settings, language = _voice_fields(fields)
    try:
        store.ensure_free(name)
        decoded, report = await assess(engines.vad, data)
    except UploadRejected as exc:
        return _rejected(exc.code, exc.message, exc.report, len(data))
    except VoiceStoreError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if not report.accepted:
        return _rejected(report.code or "corrupt", report.message, report, len(data))
    try:
        entry = await store.add(
            name, trimmed(decoded, report), REFERENCE_RATE, language=language, settings=settings, quality=_kept(report)
        )
    except VoiceStoreError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    extra = {
        "event": "voice_upload",
        "voice": name,
        "bytes": len(data),
        "container": decoded.container,
        "speech_s": report.speech_s,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    log.info("voice uploaded", extra=extra)
    body = VoiceCreated(voice=describe(entry, engines), quality=VoiceQuality(**report.as_dict()))
    return JSONResponse(body.model_dump(mode="json"), status_code=201)


def _voice_fields(fields: dict[str, str]) -> tuple[str, dict[str, Any], str]:
    """The checked name, settings and language of an upload form; 422 saying what is wrong."""
    if "name" not in fields:
        raise HTTPException(422, f"no 'name' in the form: {UPLOAD_HINT}")
    try:
        name = check_name(fields["name"].strip())
        language = check_language(fields.get("language", "en").strip() or "en")
    except (VoiceStoreError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    return name, _settings(fields.get("settings", "")), language


def _settings(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        return XttsVoiceSettings.model_validate(json.loads(raw)).given()
    except json.JSONDecodeError as exc:
        raise HTTPException(
            422, f"'settings' is not valid JSON ({exc.msg}): send e.g. {{\"temperature\": 0.7}}"
        ) from None
    except ValidationError as exc:
        raise HTTPException(422, f"'settings' is not valid: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "settings"
    allowed = ", ".join(XttsVoiceSettings.model_fields)
    return f"{where}: {error['msg']} (known settings: {allowed})"


def _rejected(code: str, message: str, report: QualityReport | None, size: int) -> JSONResponse:
    log.info("voice upload rejected", extra={"event": "voice_rejected", "code": code, "bytes": size})
    quality = VoiceQuality(**report.as_dict()) if report is not None else None
    body = VoiceRejected(detail=message, code=code, quality=quality)
    return JSONResponse(body.model_dump(mode="json"), status_code=REJECT_STATUS.get(code, 422))


def _kept(report: QualityReport) -> dict[str, Any]:
    """The measures worth keeping in voices.yaml beside the voice."""
    keys = ("duration_s", "speech_s", "snr_db", "loudness_dbfs", "clipping_ratio")
    return {key: getattr(report, key) for key in keys}


# --- change, delete, preview, sample --------------------------------------------------------


@router.patch("/api/voices/{name}", response_model=Voice, responses=_errors(404, 409, 422, 503))
async def update_voice(name: str, body: VoicePatch, request: Request) -> Voice:
    """Change a cloned voice's settings (merged), language or fallback chain."""
    engines = _engines(request)
    try:
        entry = await voice_store(request).update(
            name,
            settings=body.settings.given() if body.settings else None,
            language=body.language,
            fallback=body.fallback,
        )
    except VoiceStoreError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return describe(entry, engines)


@router.delete("/api/voices/{name}", status_code=204, responses=_errors(404, 409))
async def delete_voice(name: str, request: Request) -> Response:
    """Delete a cloned voice and its recording; built-in voices cannot be deleted."""
    try:
        await voice_store(request).delete(name)
    except VoiceStoreError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return Response(status_code=204)


@router.post(
    "/api/voices/{name}/preview",
    response_class=Response,
    responses={200: {"content": {"audio/wav": {}}, "description": "PCM16 mono WAV"}, **_errors(404, 422, 503)},
)
async def preview_voice(name: str, body: PreviewRequest, request: Request) -> Response:
    """Speak `text` in the voice (through its fallbacks if its engine cannot); returns a WAV file."""
    engines = _engines(request)
    voice = voice_store(request).get(name)
    if voice is None:
        raise HTTPException(404, f"no voice named {name!r}: GET /api/voices lists them")
    pcm, rate = await speak(engines, voice, body.text)
    if not len(pcm):
        raise HTTPException(422, "the text holds nothing the voice can speak: give it words")
    return Response(content=wav_bytes(pcm, rate), media_type="audio/wav")


@router.get(
    "/api/voices/{name}/sample",
    response_class=FileResponse,
    responses={200: {"content": {"audio/wav": {}}}, **_errors(404)},
)
async def voice_sample(name: str, request: Request) -> FileResponse:
    """The reference recording a cloned voice was made from."""
    voice = voice_store(request).get(name)
    if voice is None or voice.reference is None or not voice.reference.is_file():
        raise HTTPException(404, f"voice {name!r} has no reference recording: GET /api/voices lists the voices")
    return FileResponse(voice.reference, media_type="audio/wav", filename=f"{voice.name}.wav")


async def speak(engines: Engines, voice: VoiceSpec, text: str) -> tuple[PCM16, int]:
    """All of `text` spoken in `voice`: the one place the voices API asks for speech.

    Through the voice router when Engines carries one (`engines.tts.speak(text, name)`);
    until then the loaded Piper voice speaks, whatever the voice (its fallback chain ends there)."""
    router_speak = getattr(engines.tts, "speak", None)
    if callable(router_speak):
        pcm, rate, _ = await router_speak(text, voice.name)
        return pcm, int(rate)
    pcm = await _speak(engines.tts, text)
    extra = {"event": "voice_preview", "voice": voice.name, "provider": "piper", "fallback": voice.provider != "piper"}
    log.info("voice previewed", extra=extra)
    return pcm, engines.tts.sample_rate
