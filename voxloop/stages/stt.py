"""Speech to text: faster-whisper (CTranslate2) on the utterances the VAD cut.

    SpeechEnded(audio) ─► WhisperEngine (ModelWorker) ─► HallucinationGuard ─► Transcript

Whisper invents text for noise, music and silence ("Thank you.", "you", "Music"). The guard
drops such results with Whisper's own no-speech rule plus a few cheap text rules, so a cough
or a door never starts a reply. Decoding is one greedy/beam pass at temperature 0: the
temperature fallback of offline Whisper re-decodes up to six times on exactly the inputs the
guard rejects, which costs latency and, by sampling, makes hallucinations more likely.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ctranslate2
import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel

from voxloop.pipeline.assets import resolve_model
from voxloop.pipeline.audio import pcm16_to_float32
from voxloop.pipeline.config import SttSettings
from voxloop.pipeline.errors import AssetError, ConfigError
from voxloop.pipeline.frames import PCM16, Frame, SpeechEnded, Transcript
from voxloop.pipeline.session import Session, State
from voxloop.pipeline.stage import StageBase
from voxloop.pipeline.text import CONTINUING_WORDS
from voxloop.pipeline.workers import ModelWorker, Pending, Priority, work_priority

if TYPE_CHECKING:
    from voxloop.pipeline.assets import AssetStore

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Whisper's rate, and the graph's inner rate
WHISPER_ASSETS = frozenset({"whisper-tiny.en", "whisper-base"})
# The names CTranslate2 accepts; where a device lacks one, CTranslate2 falls back by itself.
_FLOATS = ("float32", "float16", "bfloat16")
COMPUTE_TYPES = frozenset({"default", "auto", "int16", "int8", *_FLOATS, *(f"int8_{f}" for f in _FLOATS)})
# Tags Whisper learned from subtitles; with bracket tokens suppressed "[Music]" comes out as
# "Music". They describe the sound, they are never words the user said.
WHISPER_TAGS = ("music", "applause", "laughter", "silence", "blank audio", "inaudible", "no speech")
_FILLER = re.compile(r"(h*m+|u+[hm]+|e+r+m*|a+h+)")  # hmm, mmm, uh, um, erm, ah
_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|♪+")
_NOT_WORD = re.compile(r"[^\w\s']|_")


# --- the guard (pure) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One decoded window, with the scores the guard judges it by."""

    text: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float = 1.0
    capped: bool = False  # decoding stopped at the token cap for its audio: a loop, not speech


@dataclass(frozen=True, slots=True)
class Verdict:
    text: str
    rejected_reason: str | None


def normalise(text: str) -> str:
    """Lower case, punctuation and symbols dropped, single spaces: how phrases are compared."""
    return " ".join(_NOT_WORD.sub(" ", text.lower()).replace("'", "").split())


class HallucinationGuard:
    """Rules that tell a real transcript from Whisper's inventions. Pure: no model, no I/O.

    Reasons a result is rejected: `too_short` (audio under `min_audio_s`); `no_speech`,
    `low_confidence` and `repetitive` (every segment dropped by a score rule); `no_words` (only
    punctuation, symbols or [annotations]); `phantom` (only known phantom phrases); `filler`
    (only hmm/uh/um).
    """

    def __init__(
        self,
        *,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        phantom_phrases: Iterable[str] = (),
        min_audio_s: float = 0.2,
        compression_ratio_threshold: float = 2.4,
        low_confidence_logprob: float = -2.0,
    ) -> None:
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        # Far below Whisper's own threshold the text is noise whatever no_speech_prob says:
        # music makes Whisper guess single words ("The", "So") at avg_logprob -2.4..-3.5, while
        # speech on the eval set never went under -1.1.
        self.low_confidence_logprob = low_confidence_logprob
        self.min_audio_s = min_audio_s
        self.compression_ratio_threshold = compression_ratio_threshold
        phrases = {normalise(p) for p in (*phantom_phrases, *WHISPER_TAGS)} - {""}
        # Longest first, so "thank you for watching" wins over "thank you".
        alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
        self._phantom = re.compile(rf"\b(?:{alternatives})\b") if alternatives else None

    @classmethod
    def from_settings(cls, settings: SttSettings) -> HallucinationGuard:
        return cls(
            no_speech_threshold=settings.no_speech_threshold,
            logprob_threshold=settings.logprob_threshold,
            phantom_phrases=settings.phantom_phrases,
            low_confidence_logprob=min(-2.0, 2 * settings.logprob_threshold),
        )

    def too_short(self, duration_s: float) -> bool:
        return duration_s < self.min_audio_s

    def segment_rejection(self, segment: Segment) -> str | None:
        # Whisper's rule: likely silence AND not confidently decoded; either alone is not enough.
        if segment.no_speech_prob > self.no_speech_threshold and segment.avg_logprob < self.logprob_threshold:
            return "no_speech"
        if segment.avg_logprob < self.low_confidence_logprob:
            return "low_confidence"
        if segment.compression_ratio > self.compression_ratio_threshold or segment.capped:
            return "repetitive"  # a decoding loop ("the the the ...")
        return None

    def judge(self, segments: Sequence[Segment]) -> Verdict:
        reasons = [self.segment_rejection(s) for s in segments]
        kept = [s.text.strip() for s, reason in zip(segments, reasons, strict=True) if reason is None]
        if not kept:
            return Verdict("", next((r for r in reasons if r), "empty"))
        raw = " ".join(kept)
        text = " ".join(_ANNOTATION.sub(" ", raw).split())
        if not normalise(text):
            return Verdict("", "no_words" if raw.strip() else "empty")
        return Verdict(text, self.text_rejection(text))

    def text_rejection(self, text: str) -> str | None:
        """Why a decoded, annotation-free text is not something the user said, or None."""
        words = normalise(text)
        if not words:
            return "no_words" if text.strip() else "empty"
        if self._phantom is not None and not self._phantom.sub(" ", words).strip():
            return "phantom"
        if all(_FILLER.fullmatch(word) for word in words.split()):
            return "filler"
        return None


def reads_finished(text: str) -> bool:
    """Whether a transcript reads as a finished sentence: Whisper closed it with . ! or ?
    (not a trailing "..."), and its last word is not one a sentence goes on after."""
    text = text.rstrip()
    if not text.endswith((".", "!", "?")) or text.endswith(("..", "…")):
        return False
    words = normalise(text).split()
    return bool(words) and words[-1] not in CONTINUING_WORDS


# --- the engine (shared, blocking) ----------------------------------------------------------

FULL_WINDOW_S = 30.0  # Whisper's input window
# Above this no-speech probability a short-window transcript is checked with the full window:
# the short window made Whisper hear words in a bird's song (no_speech 0.59) that the full one
# rejects; speech on the eval set stays below it but for a few clipped wake words.
DOUBT_NO_SPEECH = 0.5
# A short-window transcript this sparse for its audio is checked with the full window too: the
# short window can make Whisper stop early (6.7 s of a spoken reply came back as "I'm sorry for
# any.", which the full window transcribes whole). The eval set's utterances carry >= 1 word/s.
SPARSE_WORDS_PER_S, SPARSE_MIN_S = 0.8, 3.0
TOKENS_PER_S, MIN_TOKENS = 12, 16  # the token cap (see token_cap): twice a fast speaker's rate
MAX_TOKENS = 200  # twice this and the prompt must stay within Whisper's 448 (see _segments)


def token_cap(audio_s: float) -> int | None:
    """The most tokens Whisper may decode for `audio_s` of speech. Fast speech is ~6 tokens/s;
    a decoding loop in a short window runs to hundreds (1.3 s for 1.6 s of audio on 2 cores)
    before the compression-ratio rule can catch it. None for a full window or more (uploads)."""
    if audio_s >= FULL_WINDOW_S:
        return None
    return min(MAX_TOKENS, MIN_TOKENS + math.ceil(TOKENS_PER_S * audio_s))


def window_s(audio_s: float, settings: SttSettings) -> float:
    """The encoder window for `audio_s` of audio: the audio plus a margin of silence, at least
    `window_min_s`, at most Whisper's 30 s (0: always 30 s)."""
    if not settings.window_min_s:
        return FULL_WINDOW_S
    return min(FULL_WINDOW_S, max(audio_s + settings.window_margin_s, settings.window_min_s))


class WindowedWhisper(WhisperModel):  # type: ignore[misc]  # faster-whisper is untyped
    """faster-whisper pads every input to Whisper's 30 s window, so a 2 s utterance costs the
    encoder as much as 30 s (~300 of ~370 ms for tiny.en on 2 cores). CTranslate2 encodes a
    shorter window; Whisper still decodes well if a few seconds of padding follow the speech.
    On the 46 gold utterances of the eval set, max(audio + 3 s, 10 s) gave WER 7.8% at a median
    of ~200 ms against 8.3% at ~490 ms for the full window; floors under 10 s made the decoder
    loop. The window is set per call (per thread: the worker may run several)."""

    _window = threading.local()

    def set_window(self, seconds: float) -> None:
        self._window.frames = round(seconds * 100)  # Whisper's mel frames are 10 ms

    def encode(self, features: Any) -> Any:
        frames = getattr(self._window, "frames", None)
        if frames:
            features = features[..., :frames]
        return super().encode(features)


@dataclass(frozen=True, slots=True)
class SttResult:
    """A transcription. Scores are NaN when nothing was decoded (audio too short)."""

    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    rejected_reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.rejected_reason is None and bool(self.text)


class WhisperEngine:
    """One loaded Whisper model, shared by every session; blocking work runs in `worker`."""

    def __init__(self, model: WhisperModel, settings: SttSettings, *, name: str = "whisper") -> None:
        self.model = model
        self.settings = settings
        self.guard = HallucinationGuard.from_settings(settings)
        # Each thread transcribes on a model replica of its own (settings.workers): one session's
        # final transcript never waits for another session's guess to finish.
        self.worker = ModelWorker(f"stt-{name}", max_workers=settings.workers)

    def transcribe(self, pcm16: PCM16) -> SttResult:
        """Transcribe one utterance of 16 kHz mono int16 audio (blocking)."""
        language = self.settings.language or ""
        if self.guard.too_short(len(pcm16) / SAMPLE_RATE):
            return SttResult("", language, math.nan, math.nan, "too_short")
        audio = pcm16_to_float32(pcm16)
        window = window_s(len(pcm16) / SAMPLE_RATE, self.settings)
        result = self._transcribe(audio, window)
        if window < FULL_WINDOW_S and self._doubtful(result, len(pcm16) / SAMPLE_RATE):
            result = self._transcribe(audio, FULL_WINDOW_S)
        return result

    def warm_up(self) -> None:
        """One transcription of faint noise in the window a short utterance gets: the first call
        pays for CTranslate2's buffers (~100 ms here, more on a busy machine), not a user's turn."""
        noise = np.random.default_rng(0).normal(0, 30, SAMPLE_RATE).astype(np.int16)
        self.transcribe(noise)

    def _doubtful(self, result: SttResult, audio_s: float) -> bool:
        """A short-window result to check against the full window: a decoding loop or an early
        stop (the short window's known failures), or words Whisper itself thinks are more likely silence."""
        if result.rejected_reason == "repetitive":
            return True
        sparse = audio_s >= SPARSE_MIN_S and len(result.text.split()) < SPARSE_WORDS_PER_S * audio_s
        return result.accepted and (sparse or result.no_speech_prob > DOUBT_NO_SPEECH)

    def _transcribe(self, audio: npt.NDArray[np.float32], window: float) -> SttResult:
        segments = list(self._segments(audio, window))
        return self._result(segments, segments[0][1] if segments else (self.settings.language or ""))

    def _segments(self, audio: npt.NDArray[np.float32], window: float) -> Iterator[tuple[Segment, str]]:
        """Whisper's segments with the detected language, decoded lazily, window by window."""
        self._set_window(window)
        cap = token_cap(len(audio) / SAMPLE_RATE)
        raw, info = self.model.transcribe(
            audio,
            # faster-whisper 1.x stops at about half of max_new_tokens (measured: 36 → 19, 200 → 101)
            max_new_tokens=None if cap is None else 2 * cap,
            language=self.settings.language,
            beam_size=self.settings.beam_size,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # our VAD already cut the utterance
            # The guard applies these rules itself, so it can say why it rejected a result.
            no_speech_threshold=None,
            log_prob_threshold=None,
            compression_ratio_threshold=None,
        )
        decoded = iter(raw)
        while True:
            self._set_window(window)  # again: other calls may have used the model since the last segment
            s = next(decoded, None)
            if s is None:
                return
            capped = cap is not None and len(s.tokens) >= cap
            yield Segment(s.text, s.no_speech_prob, s.avg_logprob, s.compression_ratio, capped), info.language

    def _set_window(self, window: float) -> None:
        if isinstance(self.model, WindowedWhisper):
            self.model.set_window(window)

    def _result(self, found: Sequence[tuple[Segment, str]], language: str) -> SttResult:
        segments = [segment for segment, _ in found]
        verdict = self.guard.judge(segments)
        return SttResult(
            text=verdict.text,
            language=language,
            no_speech_prob=max((s.no_speech_prob for s in segments), default=math.nan),
            avg_logprob=_mean([s.avg_logprob for s in segments]),
            rejected_reason=verdict.rejected_reason,
        )

    def start(self, pcm16: PCM16) -> Pending[SttResult]:
        """Queue the transcription of at most one window (30 s) at the current priority."""
        assert fits_one_window(pcm16), "longer audio goes through atranscribe"
        return self.worker.start(self.transcribe, pcm16)

    async def atranscribe(self, pcm16: PCM16) -> SttResult:
        if fits_one_window(pcm16):
            return await self.start(pcm16)
        # A long recording (an upload) is read window by window, each window one item of a
        # stream, so that live sessions get the model between two windows (pipeline/workers.py).
        audio = pcm16_to_float32(pcm16)
        windows = functools.partial(self._segments, audio, FULL_WINDOW_S)
        found = [item async for item in self.worker.stream(windows, interleave=True)]
        return self._result(found, found[0][1] if found else (self.settings.language or ""))

    def close(self) -> None:
        self.worker.shutdown()


def fits_one_window(pcm16: PCM16) -> bool:
    """Is this audio one Whisper window (30 s) or less: one model call?"""
    return len(pcm16) / SAMPLE_RATE <= FULL_WINDOW_S


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def load_whisper(settings: SttSettings, store: AssetStore) -> WhisperEngine:
    """Load the Whisper model `settings` names (blocking; call once at startup)."""
    device = resolve_device(settings.device)
    if settings.compute_type not in COMPUTE_TYPES:
        raise ConfigError(
            f"stt.compute_type = {settings.compute_type!r} is not a CTranslate2 compute type; "
            f"use one of {', '.join(sorted(COMPUTE_TYPES))} (int8 is the fast CPU choice)"
        )
    found = resolve_model(settings.model, store)
    if isinstance(found, Path) and not found.is_dir():
        raise ConfigError(f"stt.model = {settings.model!r} is a file; name the directory that holds model.bin")
    source = str(found)
    try:
        model = WindowedWhisper(
            source,
            device=device,
            compute_type=settings.compute_type,
            cpu_threads=settings.threads,
            num_workers=settings.workers,
        )
    except Exception as exc:
        raise AssetError(
            f"cannot load the Whisper model stt.model = {settings.model!r} (from {source}): {exc}. "
            f"Use an asset name ({', '.join(sorted(WHISPER_ASSETS))}), a directory holding a "
            "CTranslate2 Whisper model (model.bin, config.json, tokenizer.json), or a hub name "
            "that can be downloaded from here."
        ) from exc
    if settings.language is not None and settings.language not in model.supported_languages:
        only = " (the model is English-only)" if model.supported_languages == ["en"] else ""
        raise ConfigError(
            f"stt.language = {settings.language!r} is not supported by {settings.model}{only}; "
            "use a language code the model knows, a multilingual model such as whisper-base, "
            "or language: null to detect it"
        )
    engine = WhisperEngine(model, settings, name=Path(source).name or settings.model)
    engine.warm_up()
    log.info("whisper loaded", extra={"event": "stt_model_loaded", "model": settings.model, "device": device})
    return engine


def resolve_device(device: str) -> str:
    gpus = ctranslate2.get_cuda_device_count()
    if device == "auto":
        return "cuda" if gpus > 0 else "cpu"
    if device == "cuda" and gpus == 0:
        raise ConfigError("stt.device = 'cuda' but CTranslate2 sees no CUDA GPU; use 'cpu' or 'auto'")
    return device


# --- the stage ------------------------------------------------------------------------------


class SttStage(StageBase):
    """SpeechEnded → Transcript (final), or nothing when the guard rejects what Whisper heard."""

    name = "stt"
    handles: tuple[type[Frame], ...] = (SpeechEnded,)

    def __init__(self, session: Session, settings: SttSettings, engine: WhisperEngine) -> None:
        self.session = session
        self.settings = settings
        self.engine = engine
        self._speculation: tuple[int, int, SttResult] | None = None  # (turn, speech_end_ns, result)
        self._guessing: Pending[SttResult] | None = None  # a pause's transcription, queued or running
        session.on_state(self._on_state)

    async def _speculate(self, pause: SpeechEnded) -> Transcript | None:
        """Transcribe during the hangover; the final end reuses it if no speech came since.

        A finished-sounding sentence tells the VAD it may end the turn early (the eager
        hangover); accepted words go out as a partial transcript."""
        self._speculation = None
        if self.session.has_cut_off_words:
            return None  # with the earlier words, a guess reads as finished too soon (an eager end mid-thought)
        result = await self._guess(pause.audio)
        self._speculation = (pause.turn_id, pause.speech_end_ns, result)
        self.session.mark("stt_speculative", replace=True)
        if not result.accepted:
            return None
        if reads_finished(result.text):
            self.session.finished_sentence_ns = pause.speech_end_ns
        self.session.begin_speculation(pause.speech_end_ns)  # the LLM answers it now, held until the end
        return self.session.make(Transcript, text=result.text, final=False, language=result.language)

    async def _guess(self, audio: PCM16) -> SttResult:
        """A guess waits behind any final transcript another session is waiting for; but once this
        turn has ended it is this session's final transcript, and goes ahead as live work."""
        with work_priority(Priority.AHEAD if self.session.user_speaking else Priority.LIVE):
            if not fits_one_window(audio):
                return await self.engine.atranscribe(audio)  # window by window; not promoted
            self._guessing = guessing = self.engine.start(audio)
        try:
            return await guessing
        finally:
            self._guessing = None

    def _on_state(self, state: State) -> None:
        if state is State.THINKING and self._guessing is not None:
            self._guessing.promote()  # the VAD ended the turn while the guess still waits

    def _speculation_for(self, end: SpeechEnded) -> SttResult | None:
        speculation, self._speculation = self._speculation, None
        if speculation is None:
            return None
        hit = speculation[:2] == (end.turn_id, end.speech_end_ns)
        self.session.trace.notes["stt_speculative"] = "hit" if hit else "miss"
        return speculation[2] if hit else None

    async def process(self, frame: Frame) -> AsyncIterator[Frame]:
        if not isinstance(frame, SpeechEnded):
            return
        if not frame.final:
            partial = await self._speculate(frame)
            if partial is not None:
                yield partial
            return
        speculated = self._speculation_for(frame)
        if speculated is None:
            await self.session.drop_speculation()  # it answered words the user then added to
        held = self.session.speculation is not None  # a reply to these very words waits at the output
        if not held:
            yield frame  # the transport reports the end of speech now, not after transcription
        started = time.perf_counter()
        result = speculated or await self.engine.atranscribe(self.session.with_cut_off_words(frame.audio))
        self.session.mark("stt_final")
        facts = {
            "audio_s": round(len(frame.audio) / SAMPLE_RATE, 3),
            "stt_ms": round((time.perf_counter() - started) * 1000, 1),
            "no_speech_prob": round(result.no_speech_prob, 3),
            "avg_logprob": round(result.avg_logprob, 3),
            "turn_id": frame.turn_id,
        }
        if not result.accepted:
            # The user's turn produced no words: the session stays LISTENING.
            extra = {"event": "stt_rejected", "reason": result.rejected_reason, **facts}
            log.info("transcript rejected", extra=extra)
            self.session.utterance_dropped()
            return
        log.info("transcript final", extra={"event": "stt_final", "chars": len(result.text), **facts})
        self.session.user_said(result.text)
        transcript = self.session.make(Transcript, text=result.text, final=True, language=result.language)
        if held and await self.session.confirm_speculation(frame, transcript):
            return  # the output sends both, then the reply it holds
        if held:
            yield frame
        yield transcript
