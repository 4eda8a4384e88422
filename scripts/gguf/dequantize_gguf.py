"""Writes a GGUF file with every tensor of IN dequantized to F32 (by `gguf.quants.dequantize`)
and the same metadata: the weights Tributary computes with after loading IN, for running
llama.cpp without its quantized matmuls (which multiply Q4_1 weights by 8-bit-quantized
activations).

    python scripts/gguf/dequantize_gguf.py IN.gguf OUT.gguf [--f16]

With --f16 the 2-D weights are stored as F16 and the 1-D ones (norms) as F32, as llama.cpp's
converter does with `--outtype f16`: the F16 file of issue 13's decode comparison.
"""

import sys

import gguf
import numpy as np
from gguf.quants import dequantize


def main():
    src, dst = sys.argv[1], sys.argv[2]
    f16 = "--f16" in sys.argv[3:]
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch=arch)
    skip = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture",
            "general.file_type"}
    for key, field in r.fields.items():
        if key in skip:
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, value, vtype)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        if f16 and len(t.shape) == 2:
            values = values.astype(np.float16)
        w.add_tensor(t.name, np.ascontiguousarray(values.reshape([int(d) for d in reversed(t.shape)])))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
