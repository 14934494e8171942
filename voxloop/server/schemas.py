"""The REST API's request and response bodies: pydantic models, so /openapi.json is exact."""

from __future__ import annotations

from typing import Literal

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


class TtsHealth(StageHealth):
    engine: str
    voice: str
    sample_rate: int


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


class Voice(BaseModel):
    name: str
    engine: Literal["piper"]
    language: str
    sample_rate: int
    status: Literal["ready"]


class Voices(BaseModel):
    voices: list[Voice]
    default: str


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong and what to do")
