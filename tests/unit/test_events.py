"""The realtime event codec (voxloop/server/events.py) and what a truncated reply keeps."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from voxloop.pipeline.trace import TurnTrace
from voxloop.server import events as ev
from voxloop.server.events import ProtocolError
from voxloop.server.realtime import Reply


def refused(call: Any, *args: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    return caught.value


# -- parse_event ------------------------------------------------------------------------------


def test_a_known_event_parses_to_its_dict() -> None:
    event = ev.parse_event(json.dumps({"type": "input_audio_buffer.commit", "event_id": "e1", "extra": 1}))
    assert event == {"type": "input_audio_buffer.commit", "event_id": "e1", "extra": 1}


@pytest.mark.parametrize(
    ("text", "code", "says"),
    [
        ("{oops", "invalid_json", "not valid JSON"),
        ("", "invalid_json", "not valid JSON"),
        ("[1, 2]", "invalid_event", "JSON object"),
        ('"session.update"', "invalid_event", "JSON object"),
        ('{"event_id": "e1"}', "invalid_event", "'type'"),
        ('{"type": 7}', "invalid_event", "string 'type'"),
        ('{"type": "conversation.item.create"}', "unknown_event", "conversation.item.create"),
    ],
)
def test_bad_messages_are_refused_with_a_code_and_what_to_do(text: str, code: str, says: str) -> None:
    error = refused(ev.parse_event, text)
    assert error.code == code
    assert says in error.message


def test_an_unknown_event_lists_the_supported_ones_and_keeps_its_id() -> None:
    error = refused(ev.parse_event, '{"type": "response.cancelled", "event_id": "abc"}')
    assert error.param == "type" and error.event_id == "abc"
    assert all(kind in error.message for kind in ev.CLIENT_EVENTS)


# -- session.update -----------------------------------------------------------------------------


def test_an_empty_session_update_keeps_the_defaults() -> None:
    config = ev.parse_session({"type": "session.update"})
    assert config.type == "realtime" and config.instructions is None and config.audio is None


def test_a_full_session_update_is_read() -> None:
    session = {
        "type": "realtime",
        "instructions": "Be brief.",
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": 48000}, "voice": "joe"},
        },
        "voxloop": {"binary_audio": True},
        "tools": [],  # a field voxloop does not use: ignored, not refused
    }
    config = ev.parse_session({"type": "session.update", "session": session})
    assert config.audio is not None and config.audio.input is not None and config.audio.output is not None
    assert config.audio.input.turn_detection is None and "turn_detection" in config.audio.input.model_fields_set
    assert config.audio.input.format is not None and config.audio.input.format.rate == 16000
    assert config.voxloop is not None and config.voxloop.binary_audio


def test_a_missing_turn_detection_means_server_vad() -> None:
    config = ev.parse_session({"session": {"audio": {"input": {}}}})
    assert config.audio is not None and config.audio.input is not None
    detection = config.audio.input.turn_detection
    assert detection is not None and detection.type == "server_vad" and detection.create_response
    assert "turn_detection" not in config.audio.input.model_fields_set


@pytest.mark.parametrize(
    ("session", "where"),
    [
        ({"type": "transcription"}, "session.type"),
        ({"audio": {"input": {"format": {"type": "audio/g711_ulaw"}}}}, "session.audio.input.format.type"),
        ({"audio": {"input": {"turn_detection": {"silence_duration_ms": 5}}}}, "silence_duration_ms"),
        ({"audio": {"input": {"turn_detection": {"threshold": 1.5}}}}, "threshold"),
        ({"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}}, "turn_detection.type"),
        ({"instructions": 42}, "session.instructions"),
    ],
)
def test_a_wrong_session_field_is_named(session: dict[str, Any], where: str) -> None:
    error = refused(ev.parse_session, {"session": session})
    assert error.code == "invalid_event"
    assert where in error.message and error.param is not None and where in error.param


# -- rates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", ev.ACCEPTED_RATES)
def test_accepted_rates_pass(rate: int) -> None:
    assert ev.check_rate(ev.AudioFormat(rate=rate), 24000) == rate


def test_no_format_keeps_the_current_rate() -> None:
    assert ev.check_rate(None, 16000) == 16000


@pytest.mark.parametrize("rate", [44100, 8000, 0, -24000])
def test_other_rates_are_unsupported_and_the_error_lists_the_good_ones(rate: int) -> None:
    error = refused(ev.check_rate, ev.AudioFormat(rate=rate), 24000)
    assert error.code == "unsupported_format" and str(rate) in error.message
    assert all(str(good) in error.message for good in ev.ACCEPTED_RATES)


# -- fields and audio ----------------------------------------------------------------------------


def test_field_checks_presence_and_type() -> None:
    event = {"type": "conversation.item.truncate", "item_id": "i1", "audio_end_ms": 120, "flag": True}
    assert ev.field(event, "item_id", str) == "i1"
    assert ev.field(event, "audio_end_ms", int) == 120
    assert ev.field(event, "content_index", int, 0) == 0
    missing = refused(ev.field, event, "response_id", str)
    assert missing.code == "invalid_event" and "needs the field 'response_id'" in missing.message
    wrong = refused(ev.field, event, "item_id", int)
    assert wrong.param == "item_id" and "must be a int" in wrong.message
    boolean = refused(ev.field, event, "flag", int)  # True is an int in Python, not on the wire
    assert boolean.code == "invalid_event"


def test_pcm_round_trips_through_base64_little_endian() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    encoded = ev.encode_pcm(pcm)
    assert base64.b64decode(encoded)[:4] == b"\x00\x00\x01\x00"
    decoded = ev.decode_pcm(encoded)
    assert decoded.dtype == np.int16 and np.array_equal(decoded, pcm)
    assert np.array_equal(ev.decode_pcm(pcm.astype("<i2").tobytes()), pcm)
    assert len(ev.decode_pcm("")) == 0


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ("not base64!", "not valid base64"),
        ("AAE", "not valid base64"),  # missing padding
        (base64.b64encode(b"\x00\x01\x02").decode(), "3 bytes"),
        (b"\x00\x01\x02", "3 bytes"),
    ],
)
def test_bad_audio_is_refused(data: str | bytes, says: str) -> None:
    error = refused(ev.decode_pcm, data)
    assert error.code == "invalid_audio" and says in error.message and error.param == "audio"


# -- server events -------------------------------------------------------------------------------


def test_error_events_carry_code_message_and_the_causing_event_id() -> None:
    event = ev.error_event("invalid_audio", "audio is not valid base64", param="audio", event_id="c1")
    assert event["type"] == "error" and event["event_id"].startswith("event_")
    assert event["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_audio",
        "message": "audio is not valid base64",
        "param": "audio",
        "event_id": "c1",
    }
    assert ev.error_event("stage_error", "tts: failed")["error"]["type"] == "server_error"


def test_ids_are_unique_and_prefixed() -> None:
    ids = {ev.new_id("resp") for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("resp_") for i in ids)


# -- Reply.heard_text -----------------------------------------------------------------------------


def reply(chunks: list[tuple[str, float]], audio_ms: float) -> Reply:
    return Reply("resp_1", "item_1", TurnTrace("s", 1), chunks=chunks, audio_ms=audio_ms)


@pytest.mark.parametrize(
    ("played_ms", "heard"),
    [
        (0, ""),
        (240, ""),  # 2 words × 0.24 rounds to none: a word counts once it is half played
        (500, "Hello"),
        (1000, "Hello there."),
        (1500, "Hello there. How are"),
        (2000, "Hello there. How are you today?"),
        (60_000, "Hello there. How are you today?"),
    ],
)
def test_heard_text_keeps_the_words_played(played_ms: float, heard: str) -> None:
    spoken = reply([("Hello there.", 0.0), ("How are you today?", 1000.0)], audio_ms=2000.0)
    assert spoken.heard_text(played_ms) == heard


def test_heard_text_of_a_reply_with_no_audio_is_empty() -> None:
    assert reply([], audio_ms=0.0).heard_text(1000) == ""
