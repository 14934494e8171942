"""One realtime connection: OpenAI-Realtime events in and out, a Session and its Graph inside.

Three tasks per connection, joined with asyncio.wait(FIRST_COMPLETED):

    receive  client events → session changes, audio → graph.push()
    pump     graph.frames() → server events (transcripts, reply audio, response lifecycle)
    send     the one writer to the socket, draining an ordered outbox (bounded: transport.Outbox)

When any of them ends (the client left, the server is shutting down, a fatal error, a client
that stopped reading: limits.send_timeout_s, limits.send_buffer_bytes) the others are cancelled
and the graph closed, so nothing of the session outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from voxloop.pipeline.audio import Resampler
from voxloop.pipeline.frames import (
    PCM16,
    AudioInput,
    AudioOutput,
    ErrorFrame,
    Frame,
    Interrupt,
    ReplyDone,
    Respond,
    SpeechEnded,
    SpeechStarted,
    Transcript,
    WakeWordDetected,
)
from voxloop.pipeline.kiosk import chime
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.tasks import cancel_and_wait
from voxloop.pipeline.trace import TurnTrace
from voxloop.server import events as ev
from voxloop.server.events import ProtocolError
from voxloop.server.limits import InboundLimits, PolicyViolation
from voxloop.server.security import close_reason
from voxloop.server.transport import (
    CLOSE_POLICY_VIOLATION,
    AudioOut,
    ClientNotReading,
    Close,
    Outbox,
    Transport,
    TransportClosed,
)
from voxloop.stages.vad import VadStage
from voxloop.stages.wake import WakeStage
from voxloop.tracing import Tracer, TurnRecorder

if TYPE_CHECKING:
    from voxloop.engine import Engines
    from voxloop.voices.store import VoiceStore

log = logging.getLogger(__name__)

INNER_RATE = 16000

Companion = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Reply:
    """The response in flight: its ids and, for truncation, where each chunk's audio began."""

    response_id: str
    item_id: str
    trace: TurnTrace
    chunks: list[tuple[str, float]] = field(default_factory=list)  # (text, start ms)
    audio_ms: float = 0.0
    chunk_index: int = -1
    resampler: Resampler | None = None

    @property
    def ids(self) -> dict[str, Any]:
        """The fields that place an event in this reply's audio content part."""
        return {"response_id": self.response_id, "item_id": self.item_id, "output_index": 0, "content_index": 0}

    def heard_text(self, audio_end_ms: float) -> str:
        """The words of the reply played by `audio_end_ms`, the partial chunk cut by its share."""
        words: list[str] = []
        for index, (text, start) in enumerate(self.chunks):
            if start >= audio_end_ms:
                break
            end = self.chunks[index + 1][1] if index + 1 < len(self.chunks) else self.audio_ms
            share = 1.0 if end <= audio_end_ms else (audio_end_ms - start) / max(end - start, 1e-6)
            chunk_words = text.split()
            words += chunk_words[: round(len(chunk_words) * share)]
        return " ".join(words)


class RealtimeConnection:
    def __init__(
        self,
        transport: Transport,
        engines: Engines,
        tracer: Tracer | None = None,
        voices: VoiceStore | None = None,
        *,
        audio_out: AudioOut | None = None,
    ) -> None:
        self.transport = transport
        self.audio_out = audio_out  # None: reply audio goes out as events; else (WebRTC) to this sink
        self.engines = engines
        self.voices = voices  # to check a voice a client picks; None: any name is taken as given
        self.session = Session()
        self.graph = engines.graph(self.session)
        self.tts_rate = engines.settings.audio.output_sample_rate
        self.in_rate = self.out_rate = ev.DEFAULT_RATE
        self.inbound = Resampler(self.in_rate, INNER_RATE)
        self.server_vad = True
        self.binary = False
        self.manual_audio: list[PCM16] = []
        self.reply: Reply | None = None
        self.last_reply: Reply | None = None
        self.user_item: str | None = None
        self.speech_start_ms = 0  # where the current utterance began in the input stream
        self.outbox = Outbox(engines.settings.limits.send_buffer_bytes)
        self.limits = InboundLimits(engines.settings.limits)
        self.recorder = TurnRecorder(tracer or Tracer(), self.session)
        self.session.on_interrupt(self._interrupted)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *companions: Companion) -> None:
        """Serve the connection; each companion (e.g. a WebRTC track reader) runs alongside and ends it too."""
        await self.transport.accept()
        log.info("session opened", extra={"event": "session_open", "session": self.session.id})
        self.recorder.opened()
        async with self.graph:
            self.emit("session.created", session=self.describe())
            self.emit("voxloop.state", state=self.session.state.value)  # once, after stages set theirs at start
            self.session.on_state(lambda state: self.emit("voxloop.state", state=state.value))
            tasks = [
                asyncio.create_task(self._receive(), name=f"rt-receive-{self.session.id}"),
                asyncio.create_task(self._pump(), name=f"rt-pump-{self.session.id}"),
                asyncio.create_task(self._send(), name=f"rt-send-{self.session.id}"),
                *(asyncio.create_task(c(), name=f"rt-{c.__name__}-{self.session.id}") for c in companions),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                await cancel_and_wait(*tasks)
                self.recorder.closed()
                log.info("session closed", extra={"event": "session_close", "session": self.session.id})

    def close(self, reason: str) -> None:
        """Say why, then close the socket once everything queued before has been sent."""
        self.send(ev.error_event("session_closed", reason))
        self.send(Close(reason))

    def send(self, message: dict[str, Any] | bytes | Close) -> None:
        """Queue one message for the sender (events as JSON text, reply audio as bytes, or the close)."""
        self.outbox.put(json.dumps(message) if isinstance(message, dict) else message)

    def emit(self, kind: str, **fields: Any) -> None:
        self.send(ev.server_event(kind, **fields))

    def emit_error(self, error: ProtocolError, event_id: str | None = None) -> None:
        self.send(ev.error_event(error.code, error.message, param=error.param, event_id=event_id))

    async def _send(self) -> None:
        try:
            await self._send_all()
        except ClientNotReading as stalled:
            extra = {"event": "client_not_reading", "session": self.session.id, "waiting_bytes": self.outbox.bytes}
            log.warning("closing a client that is not reading", extra=extra)
            with contextlib.suppress(TransportClosed):
                await self.transport.close(CLOSE_POLICY_VIOLATION, close_reason(str(stalled)), now=True)
        except TransportClosed:
            return  # the client left; run() winds the session down

    async def _send_all(self) -> None:
        while True:
            message = await self.outbox.get()
            if isinstance(message, Close):
                await self.transport.close(message.code, message.reason)
                return
            if isinstance(message, bytes):
                await self.transport.send_bytes(message)
            else:
                await self.transport.send_text(message)

    # -- client events ---------------------------------------------------------------------

    async def _receive(self) -> None:
        while True:
            message = await self.transport.receive()
            if message is None:
                return
            event_id = None
            try:
                if not self.limits.admit(message):
                    continue
                if isinstance(message, bytes):
                    await self._binary_audio(message)
                    continue
                event = ev.parse_event(message)
                event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
                await self._handle(event)
            except PolicyViolation as error:
                log.warning("client closed for abuse", extra={"event": "policy_violation", "code": error.code})
                self.emit_error(error)
                self.send(Close(close_reason(error.message), CLOSE_POLICY_VIOLATION))
                await asyncio.Event().wait()  # read no more: the sender closes the socket, then run() ends us
            except ProtocolError as error:
                log.info("client event refused", extra={"event": "protocol_error", "code": error.code})
                self.emit_error(error, event_id or error.event_id)

    async def _handle(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "session.update":
            self._update_session(ev.parse_session(event))
        elif kind == "input_audio_buffer.append":
            await self._audio(ev.decode_pcm(ev.field(event, "audio", str)))
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            self.manual_audio.clear()
            self.emit("input_audio_buffer.cleared")
        elif kind == "response.create":
            response = event.get("response") or {}
            instructions = response.get("instructions") if isinstance(response, dict) else None
            self._start_reply()
            await self.graph.push(self.session.make(Respond, instructions=instructions or ""))
        elif kind == "response.cancel":
            if self.reply is None:
                raise ProtocolError("response_cancel_not_active", "there is no response in progress to cancel")
            await self.session.interrupt("cancel")
        elif kind == "conversation.item.truncate":
            self._truncate(event)
        elif kind == "voxloop.playback.started":
            self._playback_started()

    def _playback_started(self) -> None:
        reply = self.reply or self.last_reply
        if reply is None or not reply.trace.mark("playback_start", self.session.now_ns()):
            return
        self.recorder.playback_started(reply.trace)
        if reply is self.last_reply:  # its trace went out already: send the completed one
            self.emit("voxloop.trace", trace=reply.trace.to_dict())

    def _update_session(self, config: ev.SessionConfig) -> None:
        output = config.audio.output if config.audio else None
        voice = self._known_voice(output.voice) if output and output.voice is not None else None  # before any change
        if config.instructions is not None:
            self.session.instructions = config.instructions or None
        if config.max_output_tokens is not None:
            limit = config.max_output_tokens
            self.session.max_output_tokens = None if limit == "inf" else limit
        audio = config.audio
        if audio and audio.input:
            rate = ev.check_rate(audio.input.format, self.in_rate)
            if rate != self.in_rate:
                self.in_rate, self.inbound = rate, Resampler(rate, INNER_RATE)
            if "turn_detection" in audio.input.model_fields_set:
                detection = audio.input.turn_detection
                self.server_vad = detection is not None
                self.session.auto_respond = detection is not None and detection.create_response
                if detection is not None:
                    self._retune_vad(detection)
        if audio and audio.output:
            self.out_rate = ev.check_rate(audio.output.format, self.out_rate)
            self.session.voice = voice or self.session.voice
        if config.voxloop is not None:
            self.binary = config.voxloop.binary_audio
        self.emit("session.updated", session=self.describe())

    def _known_voice(self, name: str) -> str:
        if self.voices is not None and self.voices.get(name) is None:
            known = ", ".join(self.voices.names())
            raise ProtocolError(
                "invalid_value",
                f"unknown voice {name!r}: use one of {known} (GET /api/voices)",
                param="session.audio.output.voice",
            )
        return name

    def _retune_vad(self, detection: ev.TurnDetection) -> None:
        vad = next((stage for stage in self.graph.stages if isinstance(stage, VadStage)), None)
        if vad is None:
            return
        changes: dict[str, Any] = {}
        if detection.threshold is not None:
            changes["start_threshold"] = detection.threshold
            changes["end_threshold"] = min(vad.settings.end_threshold, detection.threshold)
        if detection.silence_duration_ms is not None:
            changes["hangover_ms"] = detection.silence_duration_ms
        if detection.prefix_padding_ms is not None:
            changes["preroll_ms"] = detection.prefix_padding_ms
        if changes:
            vad.retune(vad.settings.model_copy(update=changes))

    def describe(self) -> dict[str, Any]:
        vad = next((stage for stage in self.graph.stages if isinstance(stage, VadStage)), None)
        detection: dict[str, Any] = {"type": "server_vad", "create_response": self.session.auto_respond}
        if vad is not None:
            detection |= {
                "threshold": vad.settings.start_threshold,
                "silence_duration_ms": vad.settings.hangover_ms,
                "prefix_padding_ms": vad.settings.preroll_ms,
            }
        return {
            "id": self.session.id,
            "object": "realtime.session",
            "type": "realtime",
            "instructions": self.session.instructions or self.engines.settings.llm.system_prompt,
            "max_output_tokens": self.session.max_output_tokens or self.engines.settings.llm.max_tokens,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.in_rate},
                    "turn_detection": detection if self.server_vad else None,
                },
                "output": {"format": {"type": "audio/pcm", "rate": self.out_rate}, "voice": self._voice_name()},
            },
            "voxloop": {"binary_audio": self.binary, "mode": self.engines.settings.mode},
        }

    def _voice_name(self) -> str:
        return self.session.voice or (self.voices.default if self.voices else None) or "default"

    async def _binary_audio(self, data: bytes) -> None:
        if not self.binary:
            raise ProtocolError(
                "binary_not_enabled",
                "binary audio frames need session.update with voxloop.binary_audio = true first",
            )
        await self._audio(ev.decode_pcm(data))

    async def _audio(self, pcm: PCM16) -> None:
        await self.inner_audio(pcm if self.in_rate == INNER_RATE else self.inbound.push(pcm))

    async def inner_audio(self, inner: PCM16) -> None:
        """Microphone audio already at the inner rate (16 kHz): a WebRTC track's, or resampled events'."""
        if not len(inner):
            return
        if self.server_vad:
            await self.graph.push(self.session.make(AudioInput, pcm=inner))
        else:
            self.limits.check_turn_audio(sum(map(len, self.manual_audio)) + len(inner), INNER_RATE)
            self.manual_audio.append(inner)

    async def _commit(self) -> None:
        if self.server_vad:
            raise ProtocolError(
                "invalid_event", "input_audio_buffer.commit is for manual turns: set turn_detection to null"
            )
        if not self.manual_audio:
            raise ProtocolError("input_audio_buffer_commit_empty", "the input audio buffer is empty")
        audio = np.concatenate(self.manual_audio)
        self.manual_audio.clear()
        await self.session.user_started_speaking()
        self.session.user_stopped_speaking(self.session.now_ns(), audio)
        self._user_item_started()
        await self.graph.push(self.session.make(SpeechEnded, audio=audio, speech_end_ns=self.session.now_ns()))

    def _truncate(self, event: dict[str, Any]) -> None:
        item_id = ev.field(event, "item_id", str)
        audio_end_ms = ev.field(event, "audio_end_ms", int)
        reply = next((r for r in (self.reply, self.last_reply) if r and r.item_id == item_id), None)
        if reply is None:
            raise ProtocolError("item_not_found", f"no assistant item {item_id!r} to truncate", param="item_id")
        self.session.truncate_reply(reply.heard_text(audio_end_ms))
        self.emit("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)

    # -- graph output → server events ------------------------------------------------------

    async def _pump(self) -> None:
        async for frame in self.graph.frames():
            self.session.output_sent(frame)
            await self._on_frame(frame)

    async def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, SpeechStarted):
            self._flush_audio()  # a reply still playing out of the server's track stops at once
            self._user_item_started()
            self.speech_start_ms = round(frame.audio_offset_s * 1000)
            self.emit("input_audio_buffer.speech_started", audio_start_ms=self.speech_start_ms, item_id=self.user_item)
        elif isinstance(frame, SpeechEnded):
            if self.server_vad:  # on the input stream's timeline, like audio_start_ms
                end_ms = max(round(frame.speech_end_s * 1000), self.speech_start_ms)
                self.emit("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=self.user_item)
            self.emit("input_audio_buffer.committed", item_id=self.user_item, previous_item_id=None)
        elif isinstance(frame, Transcript) and not frame.final:
            self.emit("voxloop.input_audio_transcription.partial", item_id=self.user_item, transcript=frame.text)
        elif isinstance(frame, Transcript):
            self.emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=self.user_item,
                content_index=0,
                transcript=frame.text,
            )
            stale = frame.epoch < self.session.epoch  # a barge-in came first: no reply to these words
            if self.session.auto_respond and self.reply is None and not stale:
                self._start_reply()
        elif isinstance(frame, AudioOutput):
            self._audio_out(frame)
        elif isinstance(frame, ReplyDone):
            self._finish_reply("completed", frame.text)
        elif isinstance(frame, Interrupt):
            if self.reply is not None:
                if self.audio_out is None:  # with an AudioOut, _flush_audio said it when it cut the track
                    self.emit("output_audio_buffer.cleared", response_id=self.reply.response_id)
                self._finish_reply("cancelled", " ".join(text for text, _ in self.reply.chunks))
        elif isinstance(frame, WakeWordDetected):
            self._wake_word(frame)
        elif isinstance(frame, ErrorFrame):
            self.recorder.error(frame.stage)
            self.send(ev.error_event("stage_error", f"{frame.stage}: {frame.message}"))

    def _wake_word(self, frame: WakeWordDetected) -> None:
        settings = self.engines.settings
        ack = chime(self.out_rate) if frame.woke and settings.kiosk_mode and settings.kiosk.ack_sound else None
        audio_end_ms = round(frame.audio_end_s * 1000)
        self.send(ev.wake_word_event(frame.word, frame.score, audio_end_ms, frame.woke, ack))

    def _reply_plays_until(self, reply: Reply) -> None:
        """Kiosk: the follow-up window opens when the client has played the reply, not when it was sent."""
        wake = next((stage for stage in self.graph.stages if isinstance(stage, WakeStage)), None)
        first_sent = reply.trace.marks.get("first_audio_sent")
        if wake is not None and wake.kiosk is not None and first_sent is not None:
            wake.kiosk.played_until(first_sent + round(reply.audio_ms * 1e6))

    async def _interrupted(self, epoch: int, reason: str) -> None:
        self.recorder.interrupted(reason)
        self._flush_audio()

    # -- reply audio through an AudioOut (WebRTC) -----------------------------------------

    def _flush_audio(self) -> None:
        """Cut the reply audio queued in the AudioOut; truncate the reply to what had left (as OpenAI does)."""
        key = self.audio_out.flush() if self.audio_out is not None else None
        reply = self._reply_by_id(key)
        if self.audio_out is None or key is None or reply is None:
            return
        sent_ms = self.audio_out.sent_ms(key)
        self.emit("output_audio_buffer.cleared", response_id=key)
        if sent_ms > 0:
            self.session.truncate_reply(reply.heard_text(sent_ms))
            end_ms = round(sent_ms)
            self.emit("conversation.item.truncated", item_id=reply.item_id, content_index=0, audio_end_ms=end_ms)

    def _reply_by_id(self, response_id: str | None) -> Reply | None:
        return next((r for r in (self.reply, self.last_reply) if r and r.response_id == response_id), None)

    def audio_started(self, response_id: str) -> None:
        """The AudioOut handed out the reply's first audio: that is when it was sent (first_audio_sent)."""
        self.emit("output_audio_buffer.started", response_id=response_id)
        reply = self._reply_by_id(response_id)
        if reply is None or not reply.trace.mark("first_audio_sent", self.session.now_ns(), replace=True):
            return
        if reply is self.last_reply and reply.trace.marks:  # its trace went out already: send the true one
            self.emit("voxloop.trace", trace=reply.trace.to_dict())

    def audio_stopped(self, response_id: str) -> None:
        """The AudioOut played the reply's last audio."""
        self.emit("output_audio_buffer.stopped", response_id=response_id)

    def _user_item_started(self) -> None:
        self.user_item = ev.new_id("item")

    def _start_reply(self) -> Reply:
        if self.reply is not None:
            raise ProtocolError(
                "conversation_already_has_active_response", "a response is in progress: cancel it first"
            )
        reply = Reply(ev.new_id("resp"), ev.new_id("item"), self.session.trace)
        if self.out_rate != self.tts_rate:
            reply.resampler = Resampler(self.tts_rate, self.out_rate)
        self.reply = reply
        self.emit("response.created", response=ev.response_object(reply.response_id, "in_progress", []))
        item = ev.assistant_item(reply.item_id, "in_progress")
        self.emit("response.output_item.added", response_id=reply.response_id, output_index=0, item=item)
        self.emit("response.content_part.added", part={"type": "output_audio", "transcript": ""}, **reply.ids)
        return reply

    def _audio_out(self, frame: AudioOutput) -> None:
        reply = self.reply or self._start_reply()
        ids = reply.ids
        if frame.chunk_index != reply.chunk_index:
            reply.chunk_index = frame.chunk_index
            reply.chunks.append((frame.chunk_text, reply.audio_ms))
            delta = (" " if len(reply.chunks) > 1 else "") + frame.chunk_text
            self.emit("response.output_audio_transcript.delta", delta=delta, **ids)
        reply.audio_ms += frame.duration_s * 1000
        if self.audio_out is not None:
            self.audio_out.write(reply.response_id, frame.pcm, self.tts_rate)
            return
        pcm = reply.resampler.push(frame.pcm) if reply.resampler else frame.pcm
        if self.binary:
            self.send(pcm.astype("<i2").tobytes())
        else:
            self.emit("response.output_audio.delta", delta=ev.encode_pcm(pcm), **ids)

    def _finish_reply(self, status: str, text: str) -> None:
        reply = self.reply or self._start_reply()
        ids = reply.ids
        if self.audio_out is not None:
            self.audio_out.end(reply.response_id)
        if status == "completed":
            self.emit("response.output_audio.done", **ids)
            self.emit("response.output_audio_transcript.done", transcript=text, **ids)
            self.emit("response.content_part.done", part={"type": "output_audio", "transcript": text}, **ids)
        item = ev.assistant_item(reply.item_id, "completed" if status == "completed" else "incomplete", text)
        self.emit("response.output_item.done", response_id=reply.response_id, output_index=0, item=item)
        self.emit("response.done", response=ev.response_object(reply.response_id, status, [item]))
        if reply.trace.marks:
            self.emit("voxloop.trace", trace=reply.trace.to_dict())
            self.recorder.reply_finished(reply.trace, text)
        self.last_reply, self.reply = reply, None
        if status == "completed":
            self._reply_plays_until(reply)
        if self.session.state is State.SPEAKING:
            self.session.state = State.LISTENING
