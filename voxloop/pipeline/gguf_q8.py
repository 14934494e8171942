"""Requantize a GGUF model's 4-bit tensors to Q8_0, in numpy (gguf-py), for the model assets.

The only SmolLM2 GGUF on PyPI is Q4_1, and llama.cpp reads a prompt in Q4_1 slowly on x86:
with one thread, 1.6x (AMD EPYC) to 2.7x (Intel Xeon) the time of Q8_0, at the same perplexity
(see README, "Measured"). A voice turn is mostly prompt (the user's words, the chat template)
and a few tokens of first clause, so the default model is this file's Q8_0 copy of the Q4_1.
Every Q4_1 value is d*q + m with q in 0..15; Q8_0 keeps 32 of them per block again, with one
scale and 255 levels, so the copy loses next to nothing. gguf-py's numpy code is deterministic,
so the output's sha256 is pinned in the manifest like any downloaded file's.
"""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf import GGMLQuantizationType, GGUFValueType, quants

Q8_0 = GGMLQuantizationType.Q8_0
# Tensor types made finer; the rest (F32 norms, the Q8_0 embedding) are copied as they are.
COARSE = frozenset({GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1})
WRITER_KEYS = ("general.architecture", "general.file_type")  # written by the writer itself / replaced


def requantize_to_q8_0(source: Path, target: Path) -> None:
    """Write `target`: `source` with every Q4_0/Q4_1 tensor requantized to Q8_0, metadata kept."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(target, arch=str(reader.fields["general.architecture"].contents()))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in WRITER_KEYS:
            continue
        kind = field.types[0]
        writer.add_key_value(key, field.contents(), kind, field.types[-1] if kind == GGUFValueType.ARRAY else None)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    try:
        for tensor in reader.tensors:
            if tensor.tensor_type in COARSE:
                finer = quants.quantize(quants.dequantize(tensor.data, tensor.tensor_type), Q8_0)
                writer.add_tensor(tensor.name, finer, raw_dtype=Q8_0)
            else:
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
