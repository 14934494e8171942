"""Wake word: audio reaches the VAD only after a wake word, until the user goes quiet.

    AudioInput ─► WakeDetector (openWakeWord, 80 ms chunks, ModelWorker) ─► WakeGate ─► AudioInput
                                                                        └► WakeWordDetected

`WakeModels` resolves the configured words to model files once; each session gets its own
`WakeDetector` (an openWakeWord model holds per-stream feature buffers). `WakeGate` is the
pure policy: asleep, nothing passes (privacy: no audio reaches the VAD or STT); a detection
wakes it and audio from the detection point on passes; `awake_s` seconds of audio without a
turn in progress put it back to sleep.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from openwakeword.model import Model as OwwModel

from voxloop.pipeline.assets import resolve_model
from voxloop.pipeline.config import KioskSettings, WakeSettings, WakeWord
from voxloop.pipeline.errors import AssetError, ConfigError
from voxloop.pipeline.frames import PCM16, AudioInput, Frame, WakeWordDetected
from voxloop.pipeline.kiosk import KioskController
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.workers import ModelWorker

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK = 1280  # openWakeWord scores 80 ms chunks; smaller pieces only add delay
REFRACTORY_S = 1.5  # a word's score stays high for ~1 s after it is said: one utterance, one detection
# openWakeWord fires before the word is over: on the eval clips the voice went on for 0-320 ms
# after the detection. That rest of the wake word is kept out of the turn.
WAKE_TAIL_S = 0.3
FEATURES_ASSET = "openwakeword-features"
MELSPEC_FILE = "melspectrogram.onnx"
EMBEDDING_FILE = "embedding_model.onnx"


@dataclass(frozen=True, slots=True)
class Detection:
    word: str
    score: float
    end_sample: int  # end of the 80 ms chunk that crossed the threshold, in stream samples


@dataclass(frozen=True, slots=True)
class WakeWordModel:
    """A configured wake word resolved to its model file."""

    name: str
    path: Path
    threshold: float


# --- models (shared) and detectors (per session) --------------------------------------------


class WakeModels:
    """The configured words' model files and the worker that runs every session's detector."""

    def __init__(
        self,
        words: Sequence[WakeWordModel],
        *,
        melspec: Path,
        embedding: Path,
        worker: ModelWorker | None = None,
        refractory_s: float = REFRACTORY_S,
    ) -> None:
        if not words:
            raise ConfigError("wake.words is empty: name at least one wake word, e.g. hey_jarvis")
        self.words = list(words)
        self._by_key = _keyed(self.words)
        self._melspec, self._embedding = melspec, embedding
        self._refractory = round(refractory_s * SAMPLE_RATE)
        self.worker = worker or ModelWorker("wake")
        self._spare: WakeDetector | None = self._new()  # loads once now, so bad files fail at startup

    def new_detector(self) -> WakeDetector:
        """A detector for one session (loads its openWakeWord model: call it from the worker)."""
        spare, self._spare = self._spare, None
        return spare or self._new()

    def _new(self) -> WakeDetector:
        return WakeDetector(self.load_model(), self._by_key, self._refractory)

    def load_model(self) -> Any:
        """A fresh openWakeWord model of the configured words (it holds one stream's buffers)."""
        paths = [str(word.path) for word in self.words]
        try:
            return OwwModel(
                wakeword_models=paths,
                inference_framework="onnx",
                melspec_model_path=str(self._melspec),
                embedding_model_path=str(self._embedding),
            )
        except Exception as exc:
            raise AssetError(
                f"cannot load the wake word models {paths} with {self._melspec.name} and "
                f"{self._embedding.name}: {exc}; check the files are openWakeWord .onnx models, or "
                f"fetch them again with `voxloop models fetch --force`"
            ) from exc

    def close(self) -> None:
        self.worker.shutdown()


def _keyed(words: Sequence[WakeWordModel]) -> dict[str, WakeWordModel]:
    """openWakeWord names each model's score by its file name without the suffix."""
    keyed: dict[str, WakeWordModel] = {}
    for word in words:
        key = word.path.stem
        if key in keyed:
            raise ConfigError(
                f"wake.words: {keyed[key].name!r} and {word.name!r} both load a model named {key!r}; "
                f"openWakeWord tells models apart by file name, so rename one of the files"
            )
        keyed[key] = word
    return keyed


@dataclass(slots=True)
class _Trigger:
    armed: bool = True
    last_fired: int | None = None


class WakeDetector:
    """One session's stream through openWakeWord: buffers 80 ms chunks, applies thresholds."""

    def __init__(self, model: Any, words: Mapping[str, WakeWordModel], refractory_samples: int) -> None:
        self._model = model
        self._words = words
        self._refractory = refractory_samples
        self._triggers = {key: _Trigger() for key in words}
        self._pending = np.zeros(0, dtype=np.int16)
        self.position = 0  # samples scored so far

    def feed(self, pcm16: PCM16) -> list[Detection]:
        """Score every complete 80 ms chunk; a word fires when it crosses its own threshold."""
        samples = np.concatenate([self._pending, np.asarray(pcm16, dtype=np.int16)])
        count = len(samples) // CHUNK
        detections: list[Detection] = []
        for index in range(count):
            scores = self._model.predict(samples[index * CHUNK : (index + 1) * CHUNK])
            self.position += CHUNK
            for key, score in scores.items():
                detection = self._judge(key, float(score))
                if detection is not None:
                    detections.append(detection)
        self._pending = samples[count * CHUNK :]
        return detections

    def _judge(self, key: str, score: float) -> Detection | None:
        word, trigger = self._words[key], self._triggers[key]
        if score < word.threshold:
            trigger.armed = True
            return None
        recent = trigger.last_fired is not None and self.position - trigger.last_fired < self._refractory
        if not trigger.armed or recent:
            return None
        trigger.armed, trigger.last_fired = False, self.position
        return Detection(word.name, score, self.position)


def load_wake_models(settings: WakeSettings, store: AssetStore) -> WakeModels:
    """Resolve the configured words (asset names like hey_jarvis, or .onnx paths) and load them."""
    words = [_resolve_word(word, store) for word in settings.words]
    features = store.path(FEATURES_ASSET)
    models = WakeModels(words, melspec=features / MELSPEC_FILE, embedding=features / EMBEDDING_FILE)
    log.info("wake models loaded", extra={"event": "wake_loaded", "words": [w.name for w in words]})
    return models


def _resolve_word(word: WakeWord, store: AssetStore) -> WakeWordModel:
    asset = f"wake-{word.name}"
    if asset in store.manifest:
        return WakeWordModel(word.name, _onnx_in(store.path(asset), word.name), word.threshold)
    found = resolve_model(word.name, store)
    if isinstance(found, str):
        known = ", ".join(sorted(n.removeprefix("wake-") for n in store.manifest if n.startswith("wake-")))
        raise ConfigError(
            f"wake.words: no model for the wake word {word.name!r}; use one of {known} "
            f"or a path to an openWakeWord .onnx model"
        )
    path = _onnx_in(found, "") if found.is_dir() else found
    if path.suffix != ".onnx":
        raise ConfigError(f"wake.words: {path} is not an .onnx model; voxloop runs openWakeWord on onnxruntime")
    return WakeWordModel(path.stem, path, word.threshold)


def _onnx_in(folder: Path, name: str) -> Path:
    found = sorted(folder.glob(f"{name}*.onnx")) or sorted(folder.glob("*.onnx"))
    if len(found) != 1:
        raise AssetError(f"expected one wake word model {name}*.onnx in {folder}, found {len(found)}")
    return found[0]


# --- the gate (pure) ------------------------------------------------------------------------


class WakeGate:
    """Which audio may pass, by absolute sample index. No model, no asyncio.

    Asleep, nothing passes. `wake(at)` opens the gate `tail_s` after sample `at`: the wake
    word, heard before the detection and for a moment after it, stays out of the turn. The
    gate closes once `awake_s` seconds of audio go by with no activity (a turn in progress);
    `admit` reports activity. With `awake_s=None` only `sleep()` closes it (kiosk mode).
    """

    def __init__(self, awake_s: float | None, *, tail_s: float = WAKE_TAIL_S, sample_rate: int = SAMPLE_RATE) -> None:
        self._awake_samples = None if awake_s is None else round(awake_s * sample_rate)
        self._tail_samples = round(tail_s * sample_rate)
        self.awake = False
        self._opened_at = 0  # first sample that may pass
        self._last_active = 0  # end of the latest audio heard with a turn in progress

    def wake(self, at_sample: int) -> bool:
        """A wake word ended at `at_sample`. Returns True if this woke the gate."""
        if self.awake:
            self._last_active = max(self._last_active, at_sample)  # heard again: stay awake longer
            return False
        self.awake = True
        self._opened_at = self._last_active = at_sample + self._tail_samples
        return True

    def sleep(self) -> None:
        """Close the gate now (kiosk mode decides when, on the session clock)."""
        self.awake = False

    def admit(self, start: int, end: int, *, active: bool) -> tuple[int, int]:
        """The part [lo, hi) of the audio [start, end) that passes (lo == hi: none).

        `active` says a turn is in progress during this audio, which keeps the gate open.
        """
        if not self.awake:
            return end, end
        if active:
            self._last_active = max(self._last_active, end)
        lo = min(max(start, self._opened_at), end)
        if self._awake_samples is None:  # closed by sleep() alone
            return lo, end
        closes_at = self._last_active + self._awake_samples
        if closes_at <= end:
            self.awake = False
            return lo, max(lo, closes_at)
        return lo, end


# --- the stage (adapter) --------------------------------------------------------------------


class WakeStage(StageBase):
    """Passes AudioInput only while awake; announces each wake word with WakeWordDetected.

    With `kiosk` settings a KioskController decides when the session sleeps again (follow-up
    window, goodbye) on the session clock, and clears the history after an idle spell.
    """

    name = "wake"
    handles = (AudioInput,)

    def __init__(
        self, session: Session, settings: WakeSettings, models: WakeModels, kiosk: KioskSettings | None = None
    ) -> None:
        self.session = session
        self.settings = settings
        self._models = models
        self._gate = WakeGate(None if kiosk else settings.awake_s)
        self.kiosk = (
            KioskController(session, kiosk, awake_s=settings.awake_s, on_sleep=self._fall_asleep) if kiosk else None
        )
        self._detector: WakeDetector | None = None
        self._position = 0  # samples received

    async def start(self) -> None:
        self.session.state = State.ASLEEP
        if self._detector is None:
            self._detector = await self._models.worker.run(self._models.new_detector)
        if self.kiosk is not None:
            await self.kiosk.start()

    async def close(self) -> None:
        if self.kiosk is not None:
            await self.kiosk.close()
        self._detector = None

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        assert isinstance(frame, AudioInput)
        if self._detector is None:
            await self.start()
        assert self._detector is not None
        start = self._position
        self._position += len(frame.pcm)
        for detection in await self._models.worker.run(self._detector.feed, frame.pcm):
            yield self._woken(detection)
        if self.kiosk is not None:
            self.kiosk.tick()
        was_awake = self._gate.awake
        lo, hi = self._gate.admit(start, self._position, active=was_awake and self._in_turn())
        if hi > lo:
            yield self._slice(frame, lo - start, hi - start)
        if was_awake and not self._gate.awake:
            self._fall_asleep()

    def _fall_asleep(self) -> None:
        self._gate.sleep()
        self.session.state = State.ASLEEP
        log.info("wake gate asleep", extra={"event": "wake_asleep", "turn": self.session.turn_id})

    def _woken(self, detection: Detection) -> Frame:
        woke = self._gate.wake(detection.end_sample)
        if self.kiosk is not None:
            self.kiosk.woke()
        if woke:
            self.session.state = State.LISTENING
        log.info(
            "wake word",
            extra={
                "event": "wake_word",
                "word": detection.word,
                "score": round(detection.score, 3),
                "woke": woke,
            },
        )
        return self.session.make(
            WakeWordDetected,
            word=detection.word,
            score=detection.score,
            audio_end_s=detection.end_sample / SAMPLE_RATE,
            woke=woke,
        )

    def _in_turn(self) -> bool:
        """Is a turn in progress: the assistant replying, or the user mid-utterance?"""
        return self.session.user_speaking or self.session.state in (State.THINKING, State.SPEAKING)

    @staticmethod
    def _slice(frame: AudioInput, lo: int, hi: int) -> AudioInput:
        if (lo, hi) == (0, len(frame.pcm)):
            return frame
        shift_ns = round(lo * 1e9 / SAMPLE_RATE)  # t_ns + offset: when its first sample arrived
        return dataclasses.replace(frame, pcm=frame.pcm[lo:hi], t_ns=frame.t_ns + shift_ns)
