"""The realtime event codec: parse client events, build server events (docs/PROTOCOL.md).

Client events are validated with pydantic; anything wrong becomes a ProtocolError carrying
the error code and a message that says what to fix. Server events are plain dicts built by
small functions, so the wire format is visible in one place.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voxloop.pipeline.frames import PCM16

ACCEPTED_RATES = (16000, 24000, 48000)
DEFAULT_RATE = 24000


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param
        self.event_id = event_id  # the client event's id, when it was read before the error was found


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields from newer clients are ignored


class AudioFormat(Loose):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: int = DEFAULT_RATE


class TurnDetection(Loose):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, gt=0, lt=1)
    silence_duration_ms: int | None = Field(None, ge=32, le=5000)
    prefix_padding_ms: int | None = Field(None, ge=0, le=2000)
    create_response: bool = True
    interrupt_response: bool = True


class AudioInput(Loose):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)


class AudioOutput(Loose):
    format: AudioFormat | None = None
    voice: str | None = None


class AudioConfig(Loose):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class VoxloopOptions(Loose):
    binary_audio: bool = False


class SessionConfig(Loose):
    type: Literal["realtime"] = "realtime"
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=4096)] | Literal["inf"] | None = None  # "inf": llm.max_tokens
    audio: AudioConfig | None = None
    voxloop: VoxloopOptions | None = None


CLIENT_EVENTS = frozenset(
    {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "response.create",
        "response.cancel",
        "conversation.item.truncate",
        "voxloop.playback.started",
    }
)


def parse_event(text: str) -> dict[str, Any]:
    """A client message → its event dict, or ProtocolError (invalid_json / unknown_event)."""
    try:
        event = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("invalid_event", "an event must be a JSON object with a string 'type'")
    if event["type"] not in CLIENT_EVENTS:
        raise ProtocolError(
            "unknown_event",
            f"unknown event type {event['type']!r}; supported: {', '.join(sorted(CLIENT_EVENTS))}",
            param="type",
            event_id=event["event_id"] if isinstance(event.get("event_id"), str) else None,
        )
    return event


def parse_session(event: dict[str, Any]) -> SessionConfig:
    try:
        return SessionConfig.model_validate(event.get("session") or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ProtocolError("invalid_event", f"session.{where}: {error['msg']}", param=f"session.{where}") from None


def check_rate(fmt: AudioFormat | None, current: int) -> int:
    if fmt is None:
        return current
    if fmt.rate not in ACCEPTED_RATES:
        raise ProtocolError(
            "unsupported_format",
            f"audio rate {fmt.rate} Hz is not accepted; use one of {', '.join(map(str, ACCEPTED_RATES))}",
            param="session.audio.format.rate",
        )
    return fmt.rate


def field(event: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """A field of a client event, checked for type; missing → default (or an error if None)."""
    value = event.get(name, default)
    if value is None:
        raise ProtocolError("invalid_event", f"{event['type']} needs the field {name!r}", param=name)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ProtocolError(
            "invalid_event", f"{event['type']}.{name} must be a {kind.__name__}, not {value!r}", param=name
        )
    return value


def decode_pcm(data: str | bytes) -> PCM16:
    """Base64 (or raw bytes) PCM16 LE → samples; odd byte counts and bad base64 are errors."""
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_audio", "audio is not valid base64", param="audio") from None
    if len(data) % 2:
        raise ProtocolError("invalid_audio", f"audio has {len(data)} bytes: PCM16 needs an even count", param="audio")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def encode_pcm(pcm: PCM16) -> str:
    return base64.b64encode(pcm.astype("<i2").tobytes()).decode("ascii")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# --- server events --------------------------------------------------------------------------


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(code: str, message: str, *, param: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    kind = "server_error" if code == "stage_error" else "invalid_request_error"
    error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
    return server_event("error", error=error)


def wake_word_event(word: str, score: float, audio_end_ms: int, woke: bool, ack: PCM16 | None) -> dict[str, Any]:
    """`voxloop.wake_word.detected`; `ack_audio` (base64 PCM16 at the output rate) when it woke a kiosk."""
    fields: dict[str, Any] = {"word": word, "score": round(score, 3), "audio_end_ms": audio_end_ms, "woke": woke}
    if ack is not None:
        fields["ack_audio"] = encode_pcm(ack)
    return server_event("voxloop.wake_word.detected", **fields)


def response_object(response_id: str, status: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": response_id, "object": "realtime.response", "status": status, "output": items}


def assistant_item(item_id: str, status: str, transcript: str = "") -> dict[str, Any]:
    content = [{"type": "output_audio", "transcript": transcript}] if transcript or status != "in_progress" else []
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }
