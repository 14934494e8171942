"""A tiny, randomly initialised XTTS v2 checkpoint built from the real coqui-tts classes.

The real weights (~1.8 GB) can't be fetched here, so the tests load this instead: the same
config.json / model.pth / vocab.json layout, the same Xtts, GPT (with the v2 perceiver
resampler), HiFi-GAN decoder and speaker encoder, but a 2-layer, 64-wide GPT and a 260-token
audio vocabulary. It speaks noise, through every real code path.

    python -m tests.integration.xtts_tiny [--device auto|cpu|cuda] [--reference WAV]   # timings here
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL_TOKENS = ["[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]"]
CHARACTERS = list(string.ascii_lowercase + string.digits + ".,!?'-:;\"")


def write_vocab(path: Path) -> None:
    """A character-level tokenizer in the format of XTTS's vocab.json (a Hugging Face BPE tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(path))


def build_tiny_checkpoint(directory: Path, *, max_audio_tokens: int = 16) -> Path:
    """Write config.json, model.pth and vocab.json of a random XTTS v2 into `directory`.
    At most `max_audio_tokens` - 3 GPT tokens per sentence (~46 ms of audio each)."""
    import torch
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig  # type: ignore[import-untyped]
    from TTS.tts.models.xtts import Xtts  # type: ignore[import-untyped]

    directory.mkdir(parents=True, exist_ok=True)
    write_vocab(directory / "vocab.json")
    args = XttsArgs(
        gpt_layers=2,
        gpt_n_model_channels=64,
        gpt_n_heads=2,
        gpt_max_audio_tokens=max_audio_tokens,
        gpt_num_audio_tokens=260,
        gpt_start_audio_token=258,
        gpt_stop_audio_token=259,
        gpt_use_perceiver_resampler=True,  # as in XTTS v2
        decoder_input_dim=64,
    )
    config = XttsConfig(model_args=args, audio=XttsAudioConfig(), languages=["en"], gpt_cond_len=6, max_ref_len=8)
    torch.manual_seed(0)
    model = Xtts(config)
    model.tokenizer.__init__(vocab_file=str(directory / "vocab.json"))
    model.init_models()  # sizes the text embedding from the vocabulary
    torch.save({"model": model.state_dict()}, directory / "model.pth")
    config.save_json(str(directory / "config.json"))
    return directory


def _measure(device: str, reference: Path) -> None:
    """Load → condition → stream with a real recording, printing each step's time."""
    import asyncio
    import tempfile
    import time

    from voxloop.stages.tts.voice import VoiceSpec
    from voxloop.stages.tts.xtts import XttsSettings, load_xtts

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        checkpoint = build_tiny_checkpoint(Path(tmp) / "ckpt", max_audio_tokens=64)
        t1 = time.perf_counter()
        provider = load_xtts(XttsSettings(checkpoint_dir=checkpoint, device=device), Path(tmp) / "cache")
        t2 = time.perf_counter()
        voice = VoiceSpec("tiny", "xtts", reference=reference, settings={"stream_chunk_size": 8})

        async def run() -> None:
            await provider.prepare(voice)
            t3 = time.perf_counter()
            print(f"device={provider.device} build={t1 - t0:.2f}s load={t2 - t1:.2f}s condition={t3 - t2:.2f}s")
            for attempt in range(3):
                start = time.perf_counter()
                marks = [time.perf_counter() - start async for _ in provider.stream("Hello there, how are you?", voice)]
                print(f"reply {attempt}: {len(marks)} chunks, first {marks[0] * 1000:.0f} ms, all {marks[-1]:.2f} s")
            await provider.aclose()

        asyncio.run(run())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    default_reference = Path(__file__).resolve().parents[3] / "shared" / "eval" / "audio" / "ljspeech_LJ001-0001.wav"
    parser.add_argument("--reference", type=Path, default=default_reference)
    options = parser.parse_args()
    _measure(options.device, options.reference)
