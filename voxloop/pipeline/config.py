"""Typed settings, loaded from config.yaml with environment overrides.

An override is `VOXLOOP_<SECTION>__<KEY>=value` (double underscore between levels), e.g.
`VOXLOOP_LLM__BASE_URL=http://127.0.0.1:8080/v1`; values are parsed as YAML so numbers and
booleans keep their type. A bad setting raises ConfigError naming the key, the value and
what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voxloop.pipeline.errors import ConfigError

ENV_PREFIX = "VOXLOOP_"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioSettings(Section):
    input_sample_rate: int = Field(16000, description="inner rate; Silero and Whisper need 16 kHz")
    output_sample_rate: int = Field(24000, gt=0)
    frame_ms: int = Field(20, gt=0, le=200)

    @model_validator(mode="after")
    def _inner_rate(self) -> AudioSettings:
        if self.input_sample_rate != 16000:
            raise ValueError("input_sample_rate must be 16000: the VAD and Whisper work at 16 kHz")
        return self


class AssetSettings(Section):
    cache_dir: Path | None = Field(None, description="default: the user's cache dir / voxloop")


class WakeWord(Section):
    name: str
    threshold: float = Field(0.5, gt=0.0, lt=1.0)


class WakeSettings(Section):
    enabled: bool = False
    words: list[WakeWord] = Field(default_factory=lambda: [WakeWord(name="hey_jarvis")])
    awake_s: float = Field(8.0, gt=0, description="how long after the wake word speech is accepted")


class VadSettings(Section):
    start_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    end_threshold: float = Field(0.35, gt=0.0, lt=1.0)
    min_speech_ms: int = Field(250, ge=0)
    hangover_ms: int = Field(500, ge=32)
    speculate_ms: int = Field(150, ge=0, description="silence after which STT starts early; 0: off")
    eager_hangover_ms: int = Field(
        250,
        ge=0,
        description="silence that ends the turn when the early transcript reads as a finished sentence; 0: off",
    )
    preroll_ms: int = Field(300, ge=0)
    max_utterance_s: float = Field(30.0, gt=1.0)

    @model_validator(mode="after")
    def _thresholds(self) -> VadSettings:
        if self.end_threshold > self.start_threshold:
            raise ValueError("end_threshold must not exceed start_threshold")
        return self


class SttSettings(Section):
    model: str = Field("whisper-tiny.en", description="an asset name, a hub name or a local dir")
    language: str | None = "en"
    beam_size: int = Field(1, ge=1, le=10)
    compute_type: str = "int8"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int = Field(0, ge=0, description="0: let CTranslate2 decide")
    no_speech_threshold: float = Field(0.6, ge=0.0, le=1.0)
    logprob_threshold: float = Field(-1.0, le=0.0)
    phantom_phrases: list[str] = Field(
        default_factory=lambda: [
            "thanks for watching",
            "thank you for watching",
            "please subscribe",
            "subtitles by the amara.org community",
            "you",
        ]
    )


class LlmSettings(Section):
    backend: Literal["embedded", "openai"] = "embedded"
    model: str = Field("smollm2-135m", description="embedded: asset name or .gguf path; openai: model id")
    base_url: str = "http://127.0.0.1:8080/v1"
    api_key_env: str = Field("OPENAI_API_KEY", description="the environment variable holding the key")
    system_prompt: str = (
        "You are a friendly voice assistant. Answer in one or two short spoken sentences, "
        "without lists, markdown or emoji."
    )
    max_history_messages: int = Field(12, ge=0)
    max_tokens: int = Field(80, ge=1)
    temperature: float = Field(0.4, ge=0.0, le=2.0)
    connect_timeout_s: float = Field(3.0, gt=0)
    first_token_timeout_s: float = Field(10.0, gt=0)
    total_timeout_s: float = Field(30.0, gt=0)
    threads: int = Field(0, ge=0, description="embedded: CPU threads, 0 = all cores")
    context_tokens: int = Field(2048, ge=256)


class ChunkerSettings(Section):
    first_clause_min_words: int = Field(3, ge=1)
    min_words: int = Field(3, ge=1)
    max_chars: int = Field(220, ge=40)


class TtsSettings(Section):
    engine: Literal["piper"] = "piper"
    voice: str = Field("en_US-joe-medium", description="an asset name or a path to a Piper .onnx")
    length_scale: float = Field(1.0, gt=0.1, lt=5.0)
    noise_scale: float = Field(0.667, ge=0.0, le=2.0)
    noise_w: float = Field(0.8, ge=0.0, le=2.0)
    frame_ms: int = Field(40, gt=0, le=500, description="size of the audio frames streamed out")


class TraceSettings(Section):
    jsonl: Path | None = Field(None, description="append one JSON line per turn to this file")
    include_text: bool = Field(False, description="put the user's and assistant's words in trace lines")
    prometheus: bool = Field(True, description="serve GET /metrics")
    otel: bool | None = Field(None, description="OpenTelemetry spans; null: on when OTEL_EXPORTER_OTLP_ENDPOINT is set")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    log_level: str = Field("info", pattern="(?i)^(debug|info|warning|error|critical)$")


class Settings(Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    assets: AssetSettings = Field(default_factory=AssetSettings)
    wake: WakeSettings = Field(default_factory=WakeSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    stt: SttSettings = Field(default_factory=SttSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    chunker: ChunkerSettings = Field(default_factory=ChunkerSettings)
    tts: TtsSettings = Field(default_factory=TtsSettings)
    trace: TraceSettings = Field(default_factory=TraceSettings)


def load_settings(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from a YAML file (default: the repo's config.yaml) plus environment overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded
    elif path != DEFAULT_CONFIG:
        raise ConfigError(f"config file {path} does not exist")
    apply_env_overrides(data, os.environ if env is None else env)
    return validate(data, source=str(path))


def apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(keys)} does not name a setting")
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[keys[-1]] = raw


def validate(data: Mapping[str, Any], source: str = "config") -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


def _explain(exc: ValidationError, source: str) -> str:
    lines = [f"invalid settings in {source}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        value = error.get("input")
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown setting (value {value!r}); check the spelling")
        else:
            lines.append(f"  {key} = {value!r}: {error['msg']}")
    return "\n".join(lines)
