"""Turning what simulated users received into figures: per-turn latency, underruns, WER, summaries."""

from __future__ import annotations

from typing import Any

import jiwer
import numpy as np

from voxloop.bench.conversation import Conversation, normalise, score_endpoints
from voxloop.bench.user import UserRun, playback, reply_chunks
from voxloop.rtc_client import RTC_AUDIO

FRAME_S = 0.02  # a WebRTC audio frame
OVERLAP_MS = 50  # less is one wait ending as another begins: too short a contest for the CPU to count
BOOTSTRAP_RESAMPLES = 2000
MODEL_SPANS = ("stt", "llm_first_token", "first_chunk", "tts_first_audio")
OVERHEAD_METHOD = (
    "per turn: server voice-to-voice minus the endpointing wait (endpoint_delay) minus the model spans "
    "(stt, llm_first_token, first_chunk, tts_first_audio); what is left is the send step plus any time no "
    "stage mark accounts for. Queue hops inside a model span count as model time, so this is a lower bound. "
    "Per frame: server CPU time over the run divided by the 20 ms input frames all users sent (an upper "
    "bound: it includes VAD inference and every model's compute)."
)


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "max": round(float(arr.max()), 1),
    }


def turns(run: UserRun) -> list[dict[str, Any]]:
    """One record per completed reply: client and server voice-to-voice, spans, underruns."""
    received = run.client.received
    out = []
    for item in received:
        event = item.event
        if event.get("type") != "response.done" or event["response"]["status"] != "completed":
            continue
        rid = event["response"]["id"]
        created = next(r.at for r in received if r.event.get("type") == "response.created" and _rid(r.event) == rid)
        chunks = reply_chunks(received, rid)
        ends = [run.wall_of(voiced_end) for _, voiced_end, _ in run.speech if run.wall_of(voiced_end) < created]
        # A reply begun inside a recorded segment answered a pause in it (an early end of turn):
        # there is no true end of speech to measure it from, so it counts apart.
        mid_speech = any(run.wall_of(start) <= created < run.wall_of(voiced) for start, voiced, _ in run.speech)
        trace: dict[str, Any] = next(
            (r.event["trace"] for r in received[item.index :] if r.event.get("type") == "voxloop.trace"), {}
        )
        rtc = any(r.event.get("type") == RTC_AUDIO for r in received)
        played = playback(chunks)
        spans = trace.get("spans_ms", {})
        # The server's figure needs an end of turn it decided; a reply to a pause inside a segment
        # counts apart on both sides (its speech end moves on when the user talks on).
        v2v = trace.get("voice_to_voice_ms") if "endpoint_delay" in spans and not mid_speech else None
        overhead = None
        if v2v is not None and all(k in spans for k in ("endpoint_delay", *MODEL_SPANS)):
            overhead = v2v - spans["endpoint_delay"] - sum(spans[k] for k in MODEL_SPANS)
        timed = bool(chunks and ends and not mid_speech)
        out.append(
            {
                "response_id": rid,
                "client_v2v_ms": (chunks[0][0] - max(ends)) * 1000 if timed else None,
                # When the user was waiting (true end of speech -> first reply audio), on the bench's clock.
                "waiting_s": (max(ends), chunks[0][0]) if timed else None,
                "mid_speech": mid_speech,
                "server_v2v_ms": v2v,
                "spans_ms": spans,
                "marks_ms": trace.get("marks_ms", {}),  # every stage mark, from the speech end: the turn's timeline
                "notes": trace.get("notes", {}),  # endpoint kind, reply kind, speculations dropped, late input ...
                "overhead_ms": overhead,
                "reply_audio_s": sum(n for _, n in chunks) / 16000,
                "underruns": played.underruns if not rtc else None,  # WebRTC: the receiver's jitter buffer decides
                "frame_jitter_ms": frame_jitter(chunks) if rtc else [],
                "underrun_ms": played.underrun_ms if not rtc else 0.0,
                "reply_text": reply_text(event),
            }
        )
    return out


def reply_text(done: dict[str, Any]) -> str:
    """What a completed reply said (the assistant items' transcripts in its response.done): the
    bench's own replies, so a slow first chunk can be read against the words that made it."""
    items = done["response"].get("output", [])
    return " ".join(c.get("transcript", "") for item in items for c in item.get("content", ())).strip()


def frame_jitter(chunks: list[tuple[float, int]]) -> list[float]:
    """WebRTC: how far each reply frame's arrival strayed from the one before + 20 ms (inter-arrival jitter)."""
    times = np.asarray([at for at, _ in chunks], dtype=float)
    return [round(abs(d - FRAME_S) * 1000, 2) for d in np.diff(times)]


def _rid(event: dict[str, Any]) -> str:
    return str(event["response"]["id"])


def user_figures(run: UserRun, conversation: Conversation) -> dict[str, Any]:
    received = run.client.events
    heard = " ".join(
        e["transcript"] for e in received if e.get("type") == "conversation.item.input_audio_transcription.completed"
    )
    reference = normalise(conversation.reference)
    endpoints = [e["audio_end_ms"] / 1000 for e in received if e.get("type") == "input_audio_buffer.speech_stopped"]
    return {
        "turns": turns(run),
        "wer": jiwer.wer(reference, normalise(heard) or "<nothing>") if reference else None,
        "cancelled_replies": sum(
            1 for e in received if e.get("type") == "response.done" and e["response"]["status"] == "cancelled"
        ),
        "errors": [e["error"] for e in received if e.get("type") == "error"],
        "frames_sent": len(run.sent_at),
        "client_late_frames": run.late_frames,
        "endpoints": score_endpoints(run.speech, endpoints) if len(run.speech) > 1 else None,
        "unended_utterances": unended(received),
    }


def unended(events: list[dict[str, Any]]) -> int:
    """Utterances the client saw start but never saw stop (a speech_started with no speech_stopped
    before the next one): the server lost an end of speech on its way to the client."""
    count, open_ = 0, False
    for kind in (e.get("type") for e in events):
        if kind == "input_audio_buffer.speech_started":
            count += open_
            open_ = True
        elif kind == "input_audio_buffer.speech_stopped":
            open_ = False
    return count


def aggregate(users: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage and overall summaries over every user's turns."""
    all_turns = [t for u in users for t in u["turns"]]
    span_names = sorted({k for t in all_turns for k in t["spans_ms"]})
    wers = [u["wer"] for u in users if u["wer"] is not None]
    return {
        "turns": len(all_turns),
        "voice_to_voice_ms": summary([t["client_v2v_ms"] for t in all_turns if t["client_v2v_ms"] is not None]),
        "server_voice_to_voice_ms": summary([t["server_v2v_ms"] for t in all_turns if t["server_v2v_ms"] is not None]),
        "replies_mid_speech": sum(1 for t in all_turns if t["mid_speech"]),
        "stages_ms": {
            name: summary([t["spans_ms"][name] for t in all_turns if name in t["spans_ms"]]) for name in span_names
        },
        "overhead_per_turn_ms": summary([t["overhead_ms"] for t in all_turns if t["overhead_ms"] is not None]),
        "wer": round(float(np.mean(wers)), 4) if wers else None,
        "reply_underruns": sum(t["underruns"] or 0 for t in all_turns),
        "reply_frame_jitter_ms": summary([j for t in all_turns for j in t.get("frame_jitter_ms", [])]),
        "reply_underrun_ms": round(sum(t["underrun_ms"] for t in all_turns), 1),
        "reply_audio_s": round(sum(t["reply_audio_s"] for t in all_turns), 2),
        "cancelled_replies": sum(u["cancelled_replies"] for u in users),
        "errors": sum(len(u["errors"]) for u in users),
        "unended_utterances": sum(u["unended_utterances"] for u in users),
        "frames_sent": sum(u["frames_sent"] for u in users),
        "client_late_frames": sum(u["client_late_frames"] for u in users),
        # The server never drops input (a full lane holds the socket reader back); it counts frames
        # that reached the VAD over 100 ms after arriving, which is how falling behind shows.
        "input_frames_dropped": 0,
        "server_late_input_frames": sum(t["notes"].get("late_input_frames", 0) for t in all_turns),
        "input_backlog_ms": summary([b for t in all_turns if (b := t["notes"].get("input_backlog_ms_max"))]),
        "eager_endpoints": sum(1 for t in all_turns if t["notes"].get("endpoint") == "eager"),
        "contention": contention(users),
    }


def contention(users: list[dict[str, Any]]) -> dict[str, Any]:
    """Client voice-to-voice of the turns during which another user was also waiting for a reply
    ("overlapping": their waits shared at least `OVERLAP_MS`) against the turns that had the
    machine's models to themselves ("alone"). Tells turns slowed by coinciding turns from turns
    slowed by anything else (a long question, other users' replies being made)."""
    alone: list[float] = []
    overlapping: list[float] = []
    for index, user in enumerate(users):
        others = [t["waiting_s"] for i, u in enumerate(users) if i != index for t in u["turns"] if t.get("waiting_s")]
        for turn in user["turns"]:
            if turn.get("waiting_s"):  # set for exactly the turns with a client voice-to-voice
                shared = sum(_overlap(turn["waiting_s"], other) for other in others)
                (overlapping if shared * 1000 >= OVERLAP_MS else alone).append(turn["client_v2v_ms"])
    return {"alone": summary(alone), "overlapping": summary(overlapping)}


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def scaling(runs: list[dict[str, Any]]) -> list[str]:
    """For each LLM and transport run with several user counts: each count's p95 voice-to-voice
    (client and server) as a multiple of the first count's, with a bootstrap interval where the
    runs carry their turns."""
    lines = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["llm"], run["transport"]), []).append(run)
    for (llm, transport), group in groups.items():
        base = group[0]
        for run in group[1:]:
            ratios = [
                _ratio(run["overall"][key]["p95"], base["overall"][key]["p95"])
                + _interval(ratio_interval(_turn_values(run, turn_key), _turn_values(base, turn_key)))
                for key, turn_key in (
                    ("voice_to_voice_ms", "client_v2v_ms"),
                    ("server_voice_to_voice_ms", "server_v2v_ms"),
                )
            ]
            lines.append(
                f"{llm:>9} {transport:>9} x{run['users']} against x{base['users']}: "
                f"p95 voice-to-voice {ratios[0]} (client), {ratios[1]} (server)"
            )
    return lines


def ratio_interval(
    values: list[float], base: list[float], *, level: float = 0.9, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float] | None:
    """A bootstrap interval for p95(values) / p95(base): where the ratio could have fallen with other
    turns drawn from the same sittings. A one-user p95 over 35 turns rests on its two slowest, so a
    single sitting's ratio moves by a third from one to the next; this says by how much."""
    if len(values) < 2 or len(base) < 2:
        return None
    rng = np.random.default_rng(0)  # the same turns always give the same interval
    draws = np.percentile(rng.choice(values, (resamples, len(values))), 95, axis=1)
    base_draws = np.percentile(rng.choice(base, (resamples, len(base))), 95, axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws / base_draws, [tail, 100 - tail])
    return float(low), float(high)


def _turn_values(run: dict[str, Any], key: str) -> list[float]:
    return [t[key] for user in run.get("per_user", []) for t in user["turns"] if t.get(key) is not None]


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "n/a"


def _interval(bounds: tuple[float, float] | None) -> str:
    return f" (90% interval {bounds[0]:.2f}-{bounds[1]:.2f}x)" if bounds else ""
