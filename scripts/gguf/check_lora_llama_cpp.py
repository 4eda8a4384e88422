"""llama.cpp runs a GGUF LoRA adapter written by `tributary model export-lora` and gives the
reference implementation's logits: the tiny-llama fixture's PEFT adapter, exported, on the
fixture converted to GGUF (model/tests/data/gguf/tiny-llama.gguf), against
`lora_logits` of the fixture's reference.safetensors (PyTorch + PEFT).

    tributary model export-lora --model model/tests/data/gguf/tiny-llama.gguf \
        --adapter ../shared/fixtures/tiny-llama/adapter --out /tmp/tiny-lora.gguf
    ~/.cache/tributary/gguf-venv/bin/python scripts/gguf/check_lora_llama_cpp.py /tmp/tiny-lora.gguf
"""

import os
import sys

import llama_cpp.llama_cpp as llama_cpp_c
import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file

_default = llama_cpp_c.llama_model_default_params


def _params():  # see llama_cpp_reference.py: extra buffer types crash on this machine
    p = _default()
    p.use_extra_bufts = False
    return p


llama_cpp_c.llama_model_default_params = _params
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("TRIBUTARY_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))


def logits(lora):
    llm = Llama(model_path=os.path.join(ROOT, "model/tests/data/gguf/tiny-llama.gguf"), n_ctx=64,
                logits_all=True, verbose=False, lora_path=lora, type_k=0, type_v=0)
    ref = load_file(os.path.join(FIXTURES, "tiny-llama/reference.safetensors"))
    out = []
    for row in ref["input_ids"]:
        llm.reset()
        llm.eval([int(t) for t in row])
        out.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    return np.stack(out), ref


def main():
    got, ref = logits(sys.argv[1])
    base, _ = logits(None)
    d_lora = float(np.abs(got - ref["lora_logits"]).max())
    d_base = float(np.abs(base - ref["base_logits"]).max())
    d_off = float(np.abs(got - ref["base_logits"]).max())
    print(f"llama.cpp with the exported adapter vs PEFT lora_logits: max |diff| {d_lora:.2e}")
    print(f"llama.cpp without it vs base_logits: max |diff| {d_base:.2e}; adapter's effect {d_off:.2e}")
    return 0 if d_lora < 1e-3 < d_off else 1


if __name__ == "__main__":
    sys.exit(main())
