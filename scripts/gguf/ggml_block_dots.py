"""Writes ggml's own block products on real SmolLM2 rows as test data for
`model/tests/gguf_blocks.rs` (`ggml_block_dots.json`): for a few rows of a Q4_1 projection
(`blk.0.ffn_gate.weight`) and of the Q8_0 embedding/head (`token_embd.weight`), and a few
activation rows, the file's raw block bytes, the activations, and what ggml's CPU backend
computes: its activation quantizer (`quantize_row_q8_1` / `quantize_row_q8_0`, taken from
`ggml_get_type_traits_cpu`) followed by its dot product (`ggml_vec_dot_q4_1_q8_1`,
`ggml_vec_dot_q8_0_q8_0`), called through ctypes in the libggml-cpu that llama-cpp-python
built (`scripts/gguf/setup.sh --llama`):

    PY=~/.cache/tributary/gguf-venv/bin/python
    $PY scripts/gguf/ggml_block_dots.py "$(scripts/fetch-smollm2.sh)" [OUT_JSON]

Rerun by hand when llama.cpp changes; CI reads the committed file.
"""

import ctypes
import json
import os
import sys

import llama_cpp.llama_cpp as llama_cpp_c
import numpy as np
from gguf import GGUFReader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Traits(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]


FROM_FLOAT = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64)
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                           ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
# ggml type id -> (bytes per block of the type, bytes per block of its activation type)
BLOCK_BYTES = {3: 20, 8: 34}
ACT_BLOCK_BYTES = {8: 34, 9: 36}


def main():
    model = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        ROOT, "model", "tests", "data", "smollm2", "ggml_block_dots.json")
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp_c.__file__), "lib", "libggml-cpu.so"))
    lib.ggml_cpu_init()  # fills the f16 tables the dot products read
    lib.ggml_get_type_traits_cpu.restype = ctypes.POINTER(Traits)
    reader = GGUFReader(model)
    tensors = {t.name: t for t in reader.tensors}
    rng = np.random.default_rng(2026)
    cases = []
    for name, rows in [("blk.0.ffn_gate.weight", 24), ("blk.3.attn_q.weight", 8), ("token_embd.weight", 24)]:
        t = tensors[name]
        ty = int(t.tensor_type)
        cols = int(t.shape[0])
        raw = np.array(t.data).view(np.uint8).reshape(-1)
        row_bytes = cols // 32 * BLOCK_BYTES[ty]
        traits = lib.ggml_get_type_traits_cpu(ty).contents
        act = lib.ggml_get_type_traits_cpu(traits.vec_dot_type).contents
        quantize, dot = FROM_FLOAT(act.from_float), VEC_DOT(traits.vec_dot)
        # Activations of the scale a layer sees, with a few large values and exact zeros.
        x = (rng.standard_normal((3, cols)) * [[0.05], [1.0], [20.0]]).astype(np.float32)
        x[:, ::37] = 0.0
        x[1, 5] = 60.0
        y = []
        for xr in x:
            xr = np.ascontiguousarray(xr)
            qa = ctypes.create_string_buffer(cols // 32 * ACT_BLOCK_BYTES[traits.vec_dot_type])
            quantize(xr.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), ctypes.cast(qa, ctypes.c_void_p), cols)
            s = ctypes.c_float(0)
            ys = []
            for o in range(rows):
                row = raw[o * row_bytes:(o + 1) * row_bytes].copy()
                dot(cols, ctypes.byref(s), 0, row.ctypes.data, 0, ctypes.cast(qa, ctypes.c_void_p), 0, 1)
                ys.append(s.value)
            y.append(ys)
        cases.append({"tensor": name, "ggml_type": ty, "rows": rows, "cols": cols,
                      "raw_hex": raw[:rows * row_bytes].tobytes().hex(),
                      "x": x.tolist(), "y": y})
        print(f"{name}: type {ty}, {rows} rows x {cols}, 3 activation rows", file=sys.stderr)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"model": os.path.basename(model), "cases": cases}, f, separators=(",", ":"))
    print(f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
