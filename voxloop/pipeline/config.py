"""Typed settings, loaded from config.yaml with environment overrides.

An override is `VOXLOOP_<SECTION>__<KEY>=value` (double underscore between levels), e.g.
`VOXLOOP_LLM__BASE_URL=http://127.0.0.1:8080/v1`; values are parsed as YAML so numbers and
booleans keep their type. The one top-level key, `mode`, is `VOXLOOP_MODE=kiosk`. A bad
setting raises ConfigError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from voxloop.pipeline.errors import ConfigError

ENV_PREFIX = "VOXLOOP_"
TOP_LEVEL_KEYS = frozenset({"mode"})  # settings outside any section: VOXLOOP_MODE=kiosk
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
DEFAULT_VOICES_DIR = Path(__file__).resolve().parents[2] / "voices"


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


# Per-word defaults chosen by scripts/eval_wake on ../shared/eval: the first threshold with no
# false accepts on music, noise and other speech, plus a step of margin (recall was 100% up to 0.9).
WAKE_THRESHOLDS = {"hey_jarvis": 0.5, "alexa": 0.8, "hey_mycroft": 0.7}


class WakeWord(Section):
    name: str
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="default: the word's measured default, else 0.5")

    @model_validator(mode="before")
    @classmethod
    def _measured_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "threshold" not in data and data.get("name") in WAKE_THRESHOLDS:
            return {**data, "threshold": WAKE_THRESHOLDS[data["name"]]}
        return data


class WakeSettings(Section):
    enabled: bool = False
    words: list[WakeWord] = Field(default_factory=lambda: [WakeWord(name="hey_jarvis")])
    awake_s: float = Field(8.0, gt=0, description="how long after the wake word speech is accepted")


class KioskSettings(Section):
    """Kiosk mode (mode: kiosk): asleep until a wake word, a follow-up window, a fresh start per visitor."""

    follow_up_s: float = Field(6.0, ge=0, description="after a reply, how long speech needs no wake word")
    idle_reset_s: float = Field(120.0, gt=0, description="seconds without a turn after which history is cleared")
    goodbye_phrases: list[str] = Field(
        default_factory=lambda: ["goodbye", "bye", "bye bye", "see you", "that's all", "that is all"],
        description="an utterance ending in one of these puts the session to sleep once it is answered",
    )
    ack_sound: bool = Field(True, description="send a short chime when the wake word wakes the session")


class VadSettings(Section):
    start_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    end_threshold: float = Field(0.35, gt=0.0, lt=1.0)
    min_speech_ms: int = Field(250, ge=0)
    hangover_ms: int = Field(500, ge=32)
    speculate_ms: int = Field(100, ge=0, description="silence after which STT starts early; 0: off")
    eager_hangover_ms: int = Field(
        250,
        ge=0,
        description="silence that ends the turn when the early transcript reads as a finished sentence; 0: off",
    )
    speculative_reply: bool = Field(
        True,
        description="answer the early transcript while the hangover runs; its audio is held until the turn ends",
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
    threads: int = Field(
        1, ge=0, description="CTranslate2 threads per transcription; 0: its default (tiny.en on 2 cores: 1 is as fast)"
    )
    workers: int = Field(
        2, ge=1, le=16, description="transcriptions at once (CTranslate2 replicas): a final need not wait for a guess"
    )
    window_min_s: float = Field(
        10.0, ge=0.0, le=30.0, description="shortest encoder window (see stages/stt.py); 0: Whisper's full 30 s"
    )
    window_margin_s: float = Field(3.0, ge=0.0, le=30.0, description="silence left in the window after the audio")
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
    model: str = Field("smollm2-135m-q8_0", description="embedded: asset name or .gguf path; openai: model id")
    base_url: str = "http://127.0.0.1:8080/v1"
    api_key_env: str = Field("OPENAI_API_KEY", description="the environment variable holding the key")
    server_slots: int = Field(
        1,
        ge=1,
        description="openai: replies the server generates at once (llama-server --parallel, vLLM); "
        "a speculative reply is asked for only while a slot is free",
    )
    pin_slots: bool = Field(
        False,
        description="openai with llama.cpp's llama-server: keep each conversation on a slot of its own "
        "(the request's id_slot), so no other conversation takes the prompt cache it left there; "
        "server_slots must match the server's --parallel",
    )
    system_prompt: str = (
        "You are a friendly voice assistant. Answer in one or two short spoken sentences, "
        "without lists, markdown or emoji."
    )
    server_prefill: bool = Field(
        False,
        description="openai: when the user starts speaking, read the conversation so far into the server's "
        "prompt cache with a 1-token request (llama.cpp's llama-server keeps one per slot); off for cloud "
        "APIs, which cache prompts by themselves and bill every request",
    )
    max_history_messages: int = Field(12, ge=0)
    max_tokens: int = Field(
        60, ge=1, description="the longest reply; one stopped by it is spoken to its last whole sentence"
    )
    temperature: float = Field(0.4, ge=0.0, le=2.0)
    connect_timeout_s: float = Field(3.0, gt=0)
    first_token_timeout_s: float = Field(10.0, gt=0)
    total_timeout_s: float = Field(30.0, gt=0)
    turn_deadline_s: float = Field(
        6.0, gt=0, description="openai: longest wait for a first token, retries included; then the apology"
    )
    retry_max_attempts: int = Field(4, ge=1, description="openai: requests per turn at most; 1: never retry")
    retry_backoff_initial_s: float = Field(0.25, gt=0, description="the first pause before a retry; doubles each time")
    retry_backoff_max_s: float = Field(2.0, gt=0, description="the longest pause between two attempts")
    threads: int = Field(0, ge=0, description="embedded: CPU threads, 0 = all cores")
    first_audio_first: bool = Field(
        True, description="pause generation after the first clause until the TTS has made its audio"
    )
    context_tokens: int = Field(2048, ge=256)


class ChunkerSettings(Section):
    first_clause_min_words: int = Field(3, ge=1)
    first_clause_max_words: int = Field(
        4,
        ge=0,
        description="with no clause boundary by then, the first chunk goes at the next word a phrase may end "
        "on after this many words, at any word after twice as many (a number counts one per digit); 0: off",
    )
    min_words: int = Field(3, ge=1)
    max_chars: int = Field(220, ge=40)


class VoiceSettings(Section):
    """A voice declared in config (voices/voices.yaml adds cloned ones): see stages/tts/voice.py VoiceSpec."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    provider: Literal["piper", "xtts", "openai", "elevenlabs", "google"]
    language: str = "en"
    model: str | None = Field(None, description="piper: asset name or .onnx path; cloud: the provider's voice id")
    reference: Path | None = Field(None, description="xtts: the recording the voice is cloned from")
    settings: dict[str, Any] = Field(default_factory=dict, description="the provider's own knobs")
    fallback: list[str] = Field(default_factory=list, description="voices to try, in order, when this one fails")


class TtsRouterSettings(Section):
    first_audio_timeout_s: float = Field(4.0, gt=0, description="a provider silent this long is skipped")
    backoff_initial_s: float = Field(5.0, gt=0, description="first pause before retrying a failed provider")
    backoff_max_s: float = Field(300.0, gt=0, description="the pause doubles per failure up to this")
    last_resort: bool = Field(True, description="end every chain with the built-in Piper voice (tts.voice)")


class TtsCacheSettings(Section):
    enabled: bool = False
    dir: Path | None = Field(None, description="default: <assets cache dir>/tts-cache")
    max_mb: float = Field(64.0, gt=0, description="oldest entries are evicted beyond this")
    ttl_s: float = Field(7 * 86400.0, gt=0, description="entries older than this are synthesised again")
    max_chars: int = Field(200, ge=1, description="only texts up to this length are cached (greetings, prompts)")


class CloudTtsSettings(Section):
    enabled: bool | None = Field(None, description="null: on when the API key variable is set")
    base_url: str
    api_key_env: str = Field(description="the environment variable holding the key, never the key")
    model: str = Field("", description="the provider's model id")
    connect_timeout_s: float = Field(3.0, gt=0)
    read_timeout_s: float = Field(15.0, gt=0)


class OpenAiTtsSettings(CloudTtsSettings):
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini-tts"
    response_format: Literal["pcm", "wav"] = Field("pcm", description="pcm: raw 24 kHz; wav: any rate")


class ElevenLabsTtsSettings(CloudTtsSettings):
    base_url: str = "https://api.elevenlabs.io"
    api_key_env: str = "ELEVENLABS_API_KEY"
    model: str = "eleven_flash_v2_5"
    output_format: Literal["pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100"] = "pcm_24000"


class GoogleTtsSettings(CloudTtsSettings):
    base_url: str = "https://texttospeech.googleapis.com"
    api_key_env: str = "GOOGLE_API_KEY"
    sample_rate: int = Field(24000, ge=8000, le=48000)


class TtsSettings(Section):
    engine: Literal["piper"] = Field("piper", description="the built-in voice's engine")
    voice: str = Field("en_US-joe-medium", description="the built-in Piper voice: an asset name or a .onnx path")
    length_scale: float = Field(1.0, gt=0.1, lt=5.0)
    noise_scale: float = Field(0.667, ge=0.0, le=2.0)
    noise_w: float = Field(0.8, ge=0.0, le=2.0)
    frame_ms: int = Field(40, gt=0, le=500, description="size of the audio frames streamed out")
    threads: int = Field(
        1, ge=0, description="ONNX Runtime threads per Piper synthesis; 1 lets live and background calls run apart"
    )
    default_voice: str | None = Field(None, description="the voice sessions speak with; null: the built-in one")
    voices: list[VoiceSettings] = Field(default_factory=list)
    router: TtsRouterSettings = Field(default_factory=TtsRouterSettings)
    cache: TtsCacheSettings = Field(default_factory=TtsCacheSettings)
    openai: OpenAiTtsSettings = Field(default_factory=OpenAiTtsSettings)
    elevenlabs: ElevenLabsTtsSettings = Field(default_factory=ElevenLabsTtsSettings)
    google: GoogleTtsSettings = Field(default_factory=GoogleTtsSettings)
    xtts: dict[str, Any] | None = Field(None, description="XTTS v2 settings (stages/tts/xtts.py); null: no XTTS")

    @model_validator(mode="after")
    def _unique_voices(self) -> TtsSettings:
        names = [voice.name for voice in self.voices]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"voice names must be unique; repeated: {', '.join(repeated)}")
        return self


class TraceSettings(Section):
    jsonl: Path | None = Field(None, description="append one JSON line per turn to this file")
    include_text: bool = Field(False, description="put the user's and assistant's words in trace lines")
    prometheus: bool = Field(True, description="serve GET /metrics")
    otel: bool | None = Field(None, description="OpenTelemetry spans; null: on when OTEL_EXPORTER_OTLP_ENDPOINT is set")


class VoicesSettings(Section):
    dir: Path = Field(DEFAULT_VOICES_DIR, description="the folder of voices.yaml and the cloned voices' recordings")


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    log_level: str = Field("info", pattern="(?i)^(debug|info|warning|error|critical)$")


class SecuritySettings(Section):
    """Who may connect (docs: README "Security"); the key itself is never a setting."""

    require_auth: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: an API key is required unless server.host is loopback"
    )
    api_key_env: str = Field("VOXLOOP_API_KEY", description="the environment variable holding the API key")
    api_key_file: Path | None = Field(None, description="a file holding the API key (used when the variable is unset)")
    token_ttl_s: int = Field(600, ge=1, le=86400, description="lifetime of tokens from /v1/realtime/client_secrets")
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser origins allowed besides the server's own and loopback ones; '*' allows any",
    )
    protect_metrics: bool = Field(True, description="GET /metrics needs the key too when auth is on")


class LimitsSettings(Section):
    """Bounds on what one client may send; each excess gets a clear error."""

    max_message_bytes: int = Field(1 << 20, ge=1024, description="largest WebSocket message; up to 4x: error event")
    max_turn_audio_s: float = Field(120.0, gt=0, description="audio buffered per manual turn before commit")
    max_sessions: int = Field(32, ge=1, description="open realtime sessions; more are closed with 1013")
    max_upload_bytes: int = Field(25 << 20, ge=1024, description="largest audio upload to the REST API")
    events_per_s: float = Field(1000.0, gt=0, description="client messages per second per connection (sustained)")
    event_burst: int = Field(3000, ge=1, description="messages a connection may send at once above the rate")
    abuse_close_s: float = Field(5.0, gt=0, description="over the rate this long closes the connection (1008)")
    send_timeout_s: float = Field(
        10.0, gt=0, description="a message the client has not taken this long: it is not reading; closed (1008)"
    )
    send_buffer_bytes: int = Field(
        8 << 20, ge=64 * 1024, description="bytes a connection may have waiting to be sent; more: closed (1008)"
    )
    stalled_linger_s: float = Field(
        10.0, ge=0, description="a closed client that is not reading has this long to read the close, then is dropped"
    )
    send_socket_bytes: int = Field(
        256 * 1024, ge=0, description="kernel send buffer per realtime socket (SO_SNDBUF); 0: the kernel's autotuning"
    )


class IceServer(Section):
    """A STUN or TURN server, as RTCIceServer has it."""

    urls: list[str] = Field(min_length=1, description="stun:HOST:PORT or turn:HOST:PORT?transport=udp|tcp URLs")
    username: str | None = None
    credential: str | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class WebRtcSettings(Section):
    """The WebRTC transport (POST /v1/realtime/calls): Opus audio tracks, events on a data channel."""

    enabled: bool = True
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN for peers beyond this host; none: host candidates only"
    )
    ice_disconnect_grace_s: float = Field(5.0, gt=0, description="an ICE disconnect longer than this ends the call")


class Settings(Section):
    mode: Literal["conversation", "kiosk"] = "conversation"
    server: ServerSettings = Field(default_factory=ServerSettings)
    audio: AudioSettings = Field(default_factory=AudioSettings)
    assets: AssetSettings = Field(default_factory=AssetSettings)
    wake: WakeSettings = Field(default_factory=WakeSettings)
    kiosk: KioskSettings = Field(default_factory=KioskSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    stt: SttSettings = Field(default_factory=SttSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    chunker: ChunkerSettings = Field(default_factory=ChunkerSettings)
    tts: TtsSettings = Field(default_factory=TtsSettings)
    trace: TraceSettings = Field(default_factory=TraceSettings)
    voices: VoicesSettings = Field(default_factory=VoicesSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    webrtc: WebRtcSettings = Field(default_factory=WebRtcSettings)

    @property
    def kiosk_mode(self) -> bool:
        return self.mode == "kiosk"

    @property
    def wake_enabled(self) -> bool:
        """Kiosk mode implies the wake stage."""
        return self.wake.enabled or self.kiosk_mode


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
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        if not name.startswith(ENV_PREFIX) or (len(keys) == 1 and keys[0] not in TOP_LEVEL_KEYS):
            continue
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
        value = "<hidden>" if _secret_like(str(error["loc"][-1]) if error["loc"] else "") else error.get("input")
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown setting (value {value!r}); check the spelling")
        else:
            lines.append(f"  {key} = {value!r}: {error['msg']}")
    return "\n".join(lines)


def _secret_like(key: str) -> bool:
    """A key that may hold a secret (e.g. a mistaken `security.api_key: ...`): its value stays out of errors."""
    key = key.lower()
    return any(word in key for word in ("key", "secret", "token", "password")) and not key.endswith(("_env", "_file"))
