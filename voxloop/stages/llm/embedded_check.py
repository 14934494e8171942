"""`python -m voxloop.stages.llm.embedded_check`: does the embedded LLM's build run on this CPU?

llama-cpp-python compiles llama.cpp for the machine it is installed on. A build whose CPU
features the machine only claims to have (AMX on some VMs: see scripts/llama_cpp_flags) loads
the model, then dies of SIGILL on its first prompt, taking the server with it. scripts/setup
runs this in a child process after installing and rebuilds llama-cpp-python when it fails.
"""

from __future__ import annotations

import llama_cpp

from voxloop.pipeline.assets import AssetStore
from voxloop.pipeline.config import LlmSettings
from voxloop.stages.llm.embedded import resolve_gguf

PROMPT = "The quick brown fox jumps over the lazy dog."  # a batch of tokens: llama.cpp's matrix kernels


def main() -> None:
    gguf = resolve_gguf(LlmSettings().model, AssetStore())
    llama = llama_cpp.Llama(model_path=str(gguf), n_ctx=64, n_threads=1, verbose=False)
    llama.eval(llama.tokenize(PROMPT.encode()))
    print(f"the embedded LLM runs ({gguf.name})")


if __name__ == "__main__":
    main()
