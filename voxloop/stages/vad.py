"""Voice activity detection: Silero VAD probabilities → an endpointer → turn boundaries.

    AudioInput ─► VadStream (Silero, 512-sample windows, ModelWorker) ─► Endpointer ─► SpeechStarted
                                                                                    └► SpeechEnded(audio)

`SileroVadModel` holds the one onnxruntime session every session shares; each session streams
through its own `VadStream` (recurrent state + context). `Endpointer` is the pure turn logic:
start/end hysteresis, minimum speech, silence hangover, pre-roll and a maximum utterance.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from voxloop.pipeline.assets import resolve_model
from voxloop.pipeline.audio import pcm16_to_float32
from voxloop.pipeline.config import VadSettings
from voxloop.pipeline.errors import AssetError
from voxloop.pipeline.frames import PCM16, AudioInput, EndOfInput, Frame, SpeechEnded, SpeechStarted
from voxloop.pipeline.session import Session
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.workers import ModelWorker

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # Silero's window at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous window that Silero 5+/6 expects before each window
# A window takes ~0.18 ms of CPU here, about what handing it to a thread and back costs: a frame
# completing this many windows or fewer is scored on the event loop (it blocks the loop no longer
# than a thread hop would cost it); a burst of late audio goes to the worker.
INLINE_WINDOWS = 2
# An input frame that reaches the VAD this long after it arrived is late: the pipeline is not
# keeping up with real time (a starved CPU, a blocked loop), and endpoints come late with it.
LATE_INPUT_NS = 100_000_000
VAD_ASSET = "silero-vad"
VAD_FILE = "silero_vad.onnx"

_Float = npt.NDArray[np.float32]


# --- the model (shared) ---------------------------------------------------------------------


class SileroVadModel:
    """One Silero VAD onnxruntime session and its worker, shared by every session."""

    def __init__(self, path: Path, *, worker: ModelWorker | None = None) -> None:
        options = ort.SessionOptions()
        # Windows are tiny (0.2 ms each): more threads only add hand-off cost and steal cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise AssetError(
                f"cannot load the Silero VAD model {path}: {exc}; delete it from the asset cache "
                f"to fetch it again, or point the VAD at a valid silero_vad.onnx"
            ) from exc
        names = {i.name for i in self._session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise AssetError(
                f"{path} is not a Silero VAD 5/6 model (inputs {sorted(names)}, expected input, state, sr); "
                f"use the silero_vad.onnx of the silero-vad 6.x package"
            )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.path = path
        self.worker = worker or ModelWorker("vad")

    def new_stream(self) -> VadStream:
        return VadStream(self)

    def infer(self, window: _Float, state: _Float) -> tuple[float, _Float]:
        """One window ([1, CONTEXT + WINDOW] floats) → (speech probability, next state)."""
        prob, new_state = self._session.run(None, {"input": window, "state": state, "sr": self._sr})
        return float(prob[0, 0]), np.asarray(new_state, dtype=np.float32)

    def close(self) -> None:
        self.worker.shutdown()


class VadStream:
    """One session's pass through the model: carries Silero's state, context and partial window."""

    def __init__(self, model: SileroVadModel) -> None:
        self._model = model
        self._state: _Float = np.zeros((2, 1, 128), dtype=np.float32)
        self._context: _Float = np.zeros((1, CONTEXT), dtype=np.float32)
        self._pending: _Float = np.zeros(0, dtype=np.float32)
        self.samples_done = 0  # samples covered by complete windows so far

    def windows_in(self, samples: int) -> int:
        """How many windows `samples` more samples would complete."""
        return (len(self._pending) + samples) // WINDOW

    def probabilities(self, pcm16: PCM16) -> list[float]:
        """Speech probability of each window completed by `pcm16`; a partial window waits."""
        samples = np.concatenate([self._pending, pcm16_to_float32(pcm16)])
        count = len(samples) // WINDOW
        probs = []
        for index in range(count):
            window = np.concatenate([self._context, samples[None, index * WINDOW : (index + 1) * WINDOW]], axis=1)
            prob, self._state = self._model.infer(window, self._state)
            self._context = window[:, -CONTEXT:]
            probs.append(prob)
            self.samples_done += WINDOW
        self._pending = samples[count * WINDOW :]
        return probs


def load_vad_model(store: AssetStore, model: str = VAD_ASSET) -> SileroVadModel:
    """The Silero VAD: an asset name, or an existing silero_vad.onnx (or a folder holding one)."""
    found = resolve_model(model, store)
    if isinstance(found, str):
        raise AssetError(
            f"VAD model {model!r} is neither a model asset nor an existing file; "
            f"use {VAD_ASSET!r} or a path to a silero_vad.onnx"
        )
    path = found / VAD_FILE if found.is_dir() else found
    if not path.is_file():
        raise AssetError(f"Silero VAD model not found at {path}; fetch it with `voxloop models fetch {VAD_ASSET}`")
    loaded = SileroVadModel(path)
    log.info("vad model loaded", extra={"event": "vad_loaded", "path": str(path)})
    return loaded


# --- the endpointer (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """Speech began at `sample` (the start of its first voiced window), in stream samples."""

    sample: int


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """An utterance is over. `audio` runs from `audio_start` (pre-roll included) to the decision."""

    audio: PCM16
    audio_start: int
    speech_start: int
    speech_end: int  # end of the last voiced window
    forced: bool = False  # cut by max_utterance_s or by the end of the input
    eager: bool = False  # ended by the shorter hangover: the words read as a finished sentence


@dataclass(frozen=True, slots=True)
class SpeechPause:
    """The speaker paused `speculate_ms` ago, inside an utterance: a likely end, not yet decided.
    `audio` runs from `audio_start` to now; `speech_end` is the end of the last voiced window."""

    audio: PCM16
    audio_start: int
    speech_end: int


VadEvent = SpeechStart | SpeechPause | SpeechEnd


class _Phase(enum.Enum):
    IDLE = "idle"
    ONSET = "onset"  # voiced, but not yet for min_speech_ms
    SPEECH = "speech"


class _Tape:
    """The stream's recent audio, addressed by absolute sample index; old audio can be dropped."""

    def __init__(self) -> None:
        self._chunks: deque[PCM16] = deque()
        self.start = 0  # index of the first sample kept
        self.end = 0  # index after the last sample appended

    def append(self, pcm: PCM16) -> None:
        if len(pcm):
            self._chunks.append(np.asarray(pcm, dtype=np.int16))
            self.end += len(pcm)

    def drop_before(self, sample: int) -> None:
        while self._chunks and self.start + len(self._chunks[0]) <= sample:
            self.start += len(self._chunks.popleft())
        if self._chunks and self.start < sample:
            self._chunks[0] = self._chunks[0][sample - self.start :]
            self.start = sample

    def read(self, begin: int, end: int) -> PCM16:
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        lo = max(begin - self.start, 0)
        hi = max(end - self.start, lo)
        return np.concatenate(list(self._chunks))[lo:hi]


class Endpointer:
    """Turns per-window speech probabilities into utterances. No model, no asyncio.

    Feed the audio with `append_audio` and each window's probability with `update(prob,
    window_end_sample)`, windows in order. A window at or above `start_threshold` opens a
    candidate; it stays voiced while windows stay at or above `end_threshold` (hysteresis).
    The candidate becomes speech (SpeechStart) once it holds `min_speech_ms` of voiced
    windows; shorter blips are dropped when `hangover_ms` of silence follows them. Speech ends
    (SpeechEnd) after `hangover_ms` of silence, or when it reaches `max_utterance_s`.
    """

    def __init__(self, settings: VadSettings, sample_rate: int = SAMPLE_RATE) -> None:
        self._sample_rate = sample_rate
        self.retune(settings)
        self._tape = _Tape()
        self._phase = _Phase.IDLE
        self._position = 0  # end of the last window seen
        self._onset = 0  # first sample of the candidate / utterance
        self._voiced = 0  # voiced samples in the candidate
        self._last_voiced_end = 0
        self._floor = 0  # end of the previous utterance: pre-roll never reaches back past it
        self._paused_at = -1  # the speech end a SpeechPause was already sent for
        self._finished_at = -1  # the speech end whose words read as a finished sentence

    def retune(self, settings: VadSettings) -> None:
        """New thresholds and durations, from the next window on; the audio and state are kept."""
        rate = self._sample_rate
        self._start_threshold = settings.start_threshold
        self._end_threshold = settings.end_threshold
        self._min_speech = _samples(settings.min_speech_ms / 1000, rate)
        self._hangover = _samples(settings.hangover_ms / 1000, rate)
        eager = settings.eager_hangover_ms or settings.hangover_ms
        self._eager_hangover = _samples(min(eager, settings.hangover_ms) / 1000, rate)
        self._speculate = _samples(settings.speculate_ms / 1000, rate) if settings.speculate_ms else 0
        self._preroll = _samples(settings.preroll_ms / 1000, rate)
        self._max_utterance = _samples(settings.max_utterance_s, rate)

    @property
    def in_speech(self) -> bool:
        return self._phase is _Phase.SPEECH

    @property
    def last_voiced_end(self) -> int:
        """End of the last voiced window (of the utterance in progress, or the last one)."""
        return self._last_voiced_end

    @property
    def audio_end(self) -> int:
        """Index after the last sample appended."""
        return self._tape.end

    def append_audio(self, pcm16: PCM16) -> None:
        self._tape.append(pcm16)

    def sentence_finished(self, speech_end: int) -> None:
        """The words up to `speech_end` read as a finished sentence: if the silence after them
        goes on, end the turn after `eager_hangover_ms` instead of the whole hangover."""
        self._finished_at = speech_end

    def update(self, prob: float, window_end: int) -> list[VadEvent]:
        """Apply the probability of the window that ends at sample `window_end`."""
        if not self._position < window_end <= self._tape.end:
            raise ValueError(
                f"window end {window_end} must follow {self._position} and lie within the "
                f"{self._tape.end} samples appended"
            )
        begin, self._position = self._position, window_end
        events: list[VadEvent] = []
        if self._phase is _Phase.IDLE:
            if prob >= self._start_threshold:
                self._phase, self._onset = _Phase.ONSET, begin
                self._voiced, self._last_voiced_end = window_end - begin, window_end
        elif prob >= self._end_threshold:
            self._voiced += window_end - begin
            self._last_voiced_end = window_end
        elif window_end - self._last_voiced_end >= self._hangover_now():
            if self._phase is _Phase.SPEECH:
                events.append(self._end(window_end, self._last_voiced_end, forced=False))
            self._phase = _Phase.IDLE
        elif self._pausing(window_end):
            self._paused_at = self._last_voiced_end
            audio_start = max(self._onset - self._preroll, self._tape.start)
            events.append(SpeechPause(self._tape.read(audio_start, window_end), audio_start, self._last_voiced_end))
        if self._phase is _Phase.ONSET and self._voiced >= self._min_speech:
            self._phase = _Phase.SPEECH
            events.append(SpeechStart(self._onset))
        if self._phase is _Phase.SPEECH and window_end - self._onset >= self._max_utterance:
            events.append(self._end(window_end, window_end, forced=True))
            self._phase = _Phase.IDLE
        self._trim()
        return events

    def _hangover_now(self) -> int:
        finished = self._finished_at == self._last_voiced_end and self._phase is _Phase.SPEECH
        return self._eager_hangover if finished else self._hangover

    def _pausing(self, window_end: int) -> bool:
        """Speech, silent for `speculate_ms` since its last voiced window, not yet announced."""
        return (
            self._speculate > 0
            and self._phase is _Phase.SPEECH
            and window_end - self._last_voiced_end >= self._speculate
            and self._paused_at != self._last_voiced_end
        )

    def finish(self) -> SpeechEnd | None:
        """The input ended: close an utterance in progress, with all the audio appended."""
        phase, self._phase = self._phase, _Phase.IDLE
        if phase is not _Phase.SPEECH:
            return None
        end = self._end(self._tape.end, self._last_voiced_end, forced=True)
        self._position = max(self._position, self._tape.end)
        return end

    def _end(self, decided_at: int, speech_end: int, *, forced: bool) -> SpeechEnd:
        audio_start = max(self._onset - self._preroll, self._tape.start)  # _trim keeps it past _floor
        event = SpeechEnd(
            audio=self._tape.read(audio_start, decided_at),
            audio_start=audio_start,
            speech_start=self._onset,
            speech_end=speech_end,
            forced=forced,
            eager=not forced and speech_end == self._finished_at,
        )
        self._floor = decided_at
        return event

    def _trim(self) -> None:
        """Keep what a future utterance may need: the pre-roll before the next onset, or more."""
        if self._phase is _Phase.IDLE:
            self._tape.drop_before(max(self._position - self._preroll, self._floor))
        else:
            self._tape.drop_before(max(self._onset - self._preroll, self._floor))


def _samples(seconds: float, sample_rate: int) -> int:
    return round(seconds * sample_rate)


# --- the stage (adapter) --------------------------------------------------------------------


class _Arrivals:
    """When each input sample arrived: the t_ns of its frame plus its offset in the frame."""

    def __init__(self, sample_rate: int, keep_samples: int) -> None:
        self._frames: deque[tuple[int, int, int]] = deque()  # (first sample, t_ns, length)
        self._ns_per_sample = 1e9 / sample_rate
        self.keep = keep_samples

    def add(self, first_sample: int, t_ns: int, length: int) -> None:
        self._frames.append((first_sample, t_ns, length))
        horizon = first_sample + length - self.keep
        while len(self._frames) > 1 and self._frames[0][0] + self._frames[0][2] < horizon:
            self._frames.popleft()

    def time_of(self, boundary: int) -> int:
        """Arrival time of the sample boundary `boundary` (just after sample `boundary - 1`)."""
        first, t_ns, _ = next((entry for entry in reversed(self._frames) if entry[0] < boundary), self._frames[0])
        return t_ns + round((boundary - first) * self._ns_per_sample)


def _arrival_history(settings: VadSettings) -> int:
    """How far back arrival times are needed: past the hangover to the last voiced sample."""
    return _samples((settings.hangover_ms / 1000) + 1.0, SAMPLE_RATE) + 2 * WINDOW


class VadStage(StageBase):
    """AudioInput → SpeechStarted / SpeechEnded. Input audio is consumed, not forwarded.

    Sample positions (`audio_offset_s`) count the audio this stage received: behind a wake
    gate, that is the gated stream, not the microphone's.
    """

    name = "vad"
    handles = (AudioInput, EndOfInput)

    def __init__(self, session: Session, settings: VadSettings, model: SileroVadModel) -> None:
        self.session = session
        self.settings = settings
        self._model = model
        self._stream = model.new_stream()
        self._endpointer = Endpointer(settings)
        session.speculative_reply = settings.speculative_reply
        self._arrivals = _Arrivals(SAMPLE_RATE, _arrival_history(settings))
        self._pause: tuple[int, int] | None = None  # (speech end sample, its arrival ns) of the last pause

    def retune(self, settings: VadSettings) -> None:
        """Per-session turn detection (a client's session.update), from the next window on."""
        self.settings = settings
        self.session.speculative_reply = settings.speculative_reply
        self._endpointer.retune(settings)
        self._arrivals.keep = max(self._arrivals.keep, _arrival_history(settings))

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if isinstance(frame, AudioInput):
            for event in await self._detect(frame):
                yield await self._emit(event)
        elif isinstance(frame, EndOfInput):
            end = self._endpointer.finish()
            if end is not None:
                yield await self._emit(end)

    async def _detect(self, frame: AudioInput) -> list[VadEvent]:
        if not len(frame.pcm):
            return []
        self._count_backlog(self.session.now_ns() - frame.t_ns)
        self._arrivals.add(self._endpointer.audio_end, frame.t_ns, len(frame.pcm))
        self._endpointer.append_audio(frame.pcm)
        if self._pause is not None and self._pause[1] == self.session.finished_sentence_ns:
            self._endpointer.sentence_finished(self._pause[0])  # the STT read the pause's words
        if self._stream.windows_in(len(frame.pcm)) <= INLINE_WINDOWS:
            probs = self._stream.probabilities(frame.pcm)
        else:
            probs = await self._model.worker.run(self._stream.probabilities, frame.pcm)
        first_end = self._stream.samples_done - (len(probs) - 1) * WINDOW
        events: list[VadEvent] = []
        for index, prob in enumerate(probs):
            events.extend(self._endpointer.update(prob, first_end + index * WINDOW))
        if self._pause is not None and self._endpointer.last_voiced_end > self._pause[0]:
            self._pause = None  # the pause was not the end
            await self.session.voice_resumed()
        return events

    def _count_backlog(self, backlog_ns: int) -> None:
        """How far behind real time the input runs, per turn: the worst wait and the late frames."""
        notes = self.session.trace.notes
        notes["input_backlog_ms_max"] = max(notes.get("input_backlog_ms_max", 0.0), round(backlog_ns / 1e6, 1))
        if backlog_ns > LATE_INPUT_NS:
            self.session.trace.count("late_input_frames")

    async def _emit(self, event: VadEvent) -> Frame:
        if isinstance(event, SpeechStart):
            await self.session.user_started_speaking()  # first: it may interrupt a reply in flight
            log.info("speech started", extra={"event": "speech_started", "turn": self.session.turn_id})
            return self.session.make(SpeechStarted, audio_offset_s=event.sample / SAMPLE_RATE)
        speech_end_ns = self._arrivals.time_of(event.speech_end)
        ended = {"audio": event.audio, "speech_end_ns": speech_end_ns, "speech_end_s": event.speech_end / SAMPLE_RATE}
        if isinstance(event, SpeechPause):  # the STT may start while the hangover runs
            self._pause = (event.speech_end, speech_end_ns)
            self.session.paused(speech_end_ns)
            self.session.mark("speech_pause", replace=True)
            return self.session.make(SpeechEnded, **ended, final=False)
        self._pause = None
        self.session.trace.notes["endpoint"] = "eager" if event.eager else "forced" if event.forced else "hangover"
        self.session.user_stopped_speaking(speech_end_ns, event.audio)
        log.info(
            "speech ended",
            extra={
                "event": "speech_ended",
                "turn": self.session.turn_id,
                "speech_s": round((event.speech_end - event.speech_start) / SAMPLE_RATE, 3),
                "forced": event.forced,
                "eager": event.eager,
            },
        )
        return self.session.make(SpeechEnded, **ended)
