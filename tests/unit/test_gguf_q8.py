"""The Q8_0 requantizer behind the default LLM asset, on a small GGUF written here."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from voxloop.pipeline.assets import CONVERTERS, SourceError
from voxloop.pipeline.gguf_q8 import requantize_to_q8_0

TOKENS = ["<s>", "hello", "world"]


def weights(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.05, (rows, 64)).astype(np.float32)


@pytest.fixture
def q4_1_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.Q4_1.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_block_count(1)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    writer.add_token_list(TOKENS)
    writer.add_tensor("blk.0.attn_q.weight", quants.quantize(weights(4, 1), Q.Q4_1), raw_dtype=Q.Q4_1)
    writer.add_tensor("blk.0.attn_k.weight", quants.quantize(weights(2, 2), Q.Q4_0), raw_dtype=Q.Q4_0)
    writer.add_tensor("blk.0.attn_norm.weight", np.linspace(0.5, 1.5, 64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_4_bit_tensors_become_q8_0_with_their_values_and_the_metadata_kept(q4_1_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "tiny.Q8_0.gguf"
    requantize_to_q8_0(q4_1_model, target)
    before, after = gguf.GGUFReader(q4_1_model), gguf.GGUFReader(target)
    assert after.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert after.fields["tokenizer.ggml.tokens"].contents() == TOKENS
    assert after.fields["llama.block_count"].contents() == 1
    types = {t.name: t.tensor_type for t in after.tensors}
    assert types == {"blk.0.attn_q.weight": Q.Q8_0, "blk.0.attn_k.weight": Q.Q8_0, "blk.0.attn_norm.weight": Q.F32}
    for old, new in zip(before.tensors, after.tensors, strict=True):
        was = quants.dequantize(old.data, old.tensor_type)
        now = quants.dequantize(new.data, new.tensor_type)
        # within a Q8_0 step (1/127 of the block's largest; its scale is fp16): ~1/16 of a 4-bit one
        assert np.abs(now - was).max() <= np.abs(was).max() / 127, old.name


def test_the_output_is_the_same_bytes_every_time(q4_1_model: Path, tmp_path: Path) -> None:
    requantize_to_q8_0(q4_1_model, tmp_path / "a.gguf")
    requantize_to_q8_0(q4_1_model, tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_a_file_that_is_not_gguf_is_a_source_failure(tmp_path: Path) -> None:
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(SourceError, match=r"model\.gguf could not be requantized"):
        CONVERTERS["gguf-q8_0"](junk, tmp_path / "out.gguf")
