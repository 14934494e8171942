"""The REST API's request and response bodies: pydantic models, so /openapi.json is exact."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voxloop.pipeline.config import (
    AudioSettings,
    ChunkerSettings,
    LlmSettings,
    ServerSettings,
    SttSettings,
    TtsSettings,
    VadSettings,
    WakeSettings,
)

MAX_TEXT_CHARS = 2000


class StageHealth(BaseModel):
    ready: bool = Field(description="the stage can do its part of a turn now")
    reason: str | None = Field(None, description="why not, and what to do; null when ready")


class VadHealth(StageHealth):
    model: str = "silero-vad"


class SttHealth(StageHealth):
    model: str
    language: str | None


class LlmHealth(StageHealth):
    backend: Literal["embedded", "openai"]
    model: str
    base_url: str | None = Field(None, description="openai backend: the server probed, without credentials")


class TtsProviderHealth(BaseModel):
    name: str = Field(description="piper, xtts, openai, elevenlabs or google")
    state: Literal["idle", "loading", "ready", "unhealthy"] = Field(
        description="idle: not asked yet; unhealthy: failed, its voices fall back until retry_in_s has passed"
    )
    reason: str | None = Field(None, description="the last failure, while unhealthy")
    retry_in_s: float | None = Field(None, description="seconds until the provider is tried again")
    requests: int
    failures: int
    first_audio_ema_ms: float | None = Field(None, description="moving average of request → first audio")


class LastSpoke(BaseModel):
    voice: str = Field(description="the voice that spoke the most recent speech")
    provider: str
    fallback: bool = Field(description="true: another voice of the chain spoke in place of the one asked for")


class TtsHealth(StageHealth):
    engine: str
    voice: str = Field(description="the default voice")
    sample_rate: int = Field(description="the built-in Piper voice's rate")
    providers: list[TtsProviderHealth] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="providers in backoff; the stage still speaks")
    last_spoke: LastSpoke | None = None


class WakeHealth(StageHealth):
    enabled: bool = Field(description="false: every sound goes to the VAD, nothing waits for a wake word")
    words: list[str]


class Stages(BaseModel):
    vad: VadHealth
    stt: SttHealth
    llm: LlmHealth
    tts: TtsHealth
    wake: WakeHealth


class Health(BaseModel):
    status: Literal["ok", "degraded", "starting"] = Field(
        description="ok: every stage ready; degraded: some stage is not (see problems); starting: models loading"
    )
    stages: Stages | None = Field(description="null while the models are still loading")
    problems: list[str] = Field(description="'stage: reason' for each stage that is not ready")
    sessions: int = Field(description="open realtime connections")
    version: str
    loop_lag_ms: dict[str, float] | None = Field(
        None, description="event-loop lag over the last minute: p50, p99, max (ms); null before the app starts"
    )


class PublicConfig(BaseModel):
    """The settings a client may see: no secrets, no local cache or trace paths."""

    version: str
    server: ServerSettings
    audio: AudioSettings
    wake: WakeSettings
    vad: VadSettings
    stt: SttSettings
    llm: LlmSettings
    chunker: ChunkerSettings
    tts: TtsSettings


class Transcription(BaseModel):
    text: str = Field(description="what Whisper heard; empty when rejected")
    language: str
    duration_s: float = Field(description="length of the decoded audio")
    rejected_reason: str | None = Field(
        description="why the hallucination guard dropped the text (no_speech, phantom, too_short, ...); null if kept"
    )


class SynthesizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, description="the words to speak")
    voice: str | None = Field(None, description="a name from GET /api/voices; default: the configured voice")
    rate: Literal[16000, 24000, 48000] | None = Field(None, description="output sample rate; default: the voice's")

    @field_validator("text")
    @classmethod
    def _has_words(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is blank: give the words to speak")
        return text


VoiceStatus = Literal["ready", "fallback", "missing"]


class Voice(BaseModel):
    name: str
    engine: Literal["piper", "xtts", "openai", "elevenlabs", "google"]
    language: str
    sample_rate: int | None = Field(description="the rate the voice speaks at; null until its engine is loaded")
    status: VoiceStatus = Field(
        description="ready: its engine can speak; fallback: its engine is not configured here, so its fallback "
        "voices speak; missing: its reference recording is gone (DELETE it and upload again)"
    )
    builtin: bool = Field(True, description="declared in config.yaml: listed, not changeable through the API")
    sample: str | None = Field(None, description="URL of the reference recording (cloned voices)")
    settings: dict[str, Any] = Field(default_factory=dict)
    fallback: list[str] = Field(default_factory=list, description="the voices that speak when this one cannot")


class Voices(BaseModel):
    voices: list[Voice]
    default: str


# --- voice management (server/voices_api.py) -------------------------------------------------

XTTS_LANGUAGES = (
    "en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi",
)  # fmt: skip


class XttsVoiceSettings(BaseModel):
    """A cloned voice's synthesis knobs (coqui-tts XTTS v2 inference arguments); unset: the engine's default."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, gt=0.0, le=2.0, description="sampling temperature (0.75)")
    length_penalty: float | None = Field(None, ge=-10.0, le=10.0, description="(1.0)")
    repetition_penalty: float | None = Field(None, ge=1.0, le=50.0, description="(10.0)")
    top_k: int | None = Field(None, ge=1, le=500, description="(50)")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="(0.85)")
    speed: float | None = Field(None, ge=0.25, le=4.0, description="speaking rate (1.0)")

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class VoicePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: XttsVoiceSettings | None = Field(None, description="merged into the voice's settings")
    language: str | None = Field(None, description=f"one of {', '.join(XTTS_LANGUAGES)}")
    fallback: list[str] | None = Field(None, description="names of voices to try, in order, when this one fails")

    @field_validator("language")
    @classmethod
    def _language(cls, language: str | None) -> str | None:
        return check_language(language) if language is not None else None


def check_language(language: str) -> str:
    if language not in XTTS_LANGUAGES:
        raise ValueError(f"language {language!r} is not one XTTS speaks: use one of {', '.join(XTTS_LANGUAGES)}")
    return language


class VoiceQuality(BaseModel):
    """What the upload check measured, and its verdict."""

    verdict: Literal["accept", "reject"]
    code: str | None = Field(
        description="why rejected: empty, not_audio, corrupt, too_quiet, clipped, music, too_short, too_long"
    )
    message: str = Field(description="what was found and what to do")
    duration_s: float
    speech_s: float = Field(description="seconds of speech (short pauses inside phrases included)")
    speech_ratio: float = Field(description="speech_s / duration_s")
    snr_db: float = Field(description="speech level over the background's (capped at 80)")
    clipping_ratio: float = Field(description="share of the speech's samples stuck at full scale")
    loudness_dbfs: float = Field(description="RMS level of the speech, dBFS")
    peak_dbfs: float
    voiced_share: float = Field(description="share of the sounding frames that are voice (low: music or noise)")
    flatness: float = Field(description="median spectral flatness of the sound (low: tonal, e.g. music)")
    trim_s: tuple[float, float] = Field(description="the span kept as the reference: first to last speech")
    warnings: list[str] = Field(default_factory=list)


class VoiceCreated(BaseModel):
    voice: Voice
    quality: VoiceQuality


class VoiceRejected(BaseModel):
    detail: str = Field(description="what was wrong and what to do")
    code: str | None = Field(
        None,
        description="why the recording was refused: empty, not_audio, corrupt, too_quiet, clipped, music, "
        "too_short or too_long; null when the request itself was wrong (name, settings, size, a taken name)",
    )
    quality: VoiceQuality | None = Field(None, description="the measures, when the audio could be decoded")


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(
        "Hello! This is how I sound. Shall we talk?", min_length=1, max_length=500, description="the words to speak"
    )

    @field_validator("text")
    @classmethod
    def _has_words(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is blank: give the words to speak")
        return text


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong and what to do")
    errors: list[dict[str, Any]] | None = Field(
        None, description="for a request that failed validation: each problem with its location (loc) and message"
    )
