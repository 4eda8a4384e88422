#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the `gguf` and `tokenizer_json` fuzz targets
(fuzz/corpus/<target>/seed-*): small valid files, and the malformed variants the parsers
must refuse (truncated header, huge counts, bad offsets, bad UTF-8, overflowing dims).

    python3 fuzz/make_model_seeds.py      # from the repository root

The fuzzer grows the corpus from these; `tests/fuzz_corpus.rs` replays all of it.
"""
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def val(ty, v):
    if ty == STR:
        return s(v)
    if ty == ARR:
        item_ty, items = v
        return struct.pack("<IQ", item_ty, len(items)) + b"".join(val(item_ty, i) for i in items)
    fmt = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f",
           BOOL: "?", U64: "Q", I64: "q", F64: "d"}[ty]
    return struct.pack("<" + fmt, v)


def f16(x):
    return struct.pack("<e", x)


def gguf(kvs, tensors, align=32, version=3):
    """kvs: [(key, ty, value)]; tensors: [(name, dims fastest first, ggml type, bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, ty, v in kvs:
        out += s(k) + struct.pack("<I", ty) + val(ty, v)
    off = 0
    offs = []
    for name, dims, ty, data in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, off)
        offs.append(off)
        off = (off + len(data) + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    for _, _, _, data in tensors:
        out += data + b"\0" * ((-len(data)) % align)
    return out


def f32s(n, scale=0.01):
    return b"".join(struct.pack("<f", ((i * 7) % 13 - 6) * scale) for i in range(n))


def llama(tokenizer_kvs, arch="llama"):
    h, ff, kv, vocab = 8, 16, 4, 8
    kvs = [
        ("general.architecture", STR, arch),
        (f"{arch}.embedding_length", U32, h),
        (f"{arch}.feed_forward_length", U32, ff),
        (f"{arch}.block_count", U32, 1),
        (f"{arch}.attention.head_count", U32, 2),
        (f"{arch}.attention.head_count_kv", U32, 1),
        (f"{arch}.context_length", U32, 32),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5),
        (f"{arch}.rope.freq_base", F32, 10000.0),
    ] + tokenizer_kvs
    t = lambda name, dims: (name, dims, 0, f32s(dims[0] * (dims[1] if len(dims) > 1 else 1)))
    tensors = [
        t("token_embd.weight", [h, vocab]),
        t("blk.0.attn_norm.weight", [h]),
        t("blk.0.attn_q.weight", [h, h]),
        t("blk.0.attn_k.weight", [h, kv]),
        t("blk.0.attn_v.weight", [h, kv]),
        t("blk.0.attn_output.weight", [h, h]),
        t("blk.0.ffn_norm.weight", [h]),
        t("blk.0.ffn_gate.weight", [h, ff]),
        t("blk.0.ffn_up.weight", [h, ff]),
        ("blk.0.ffn_down.weight", [ff, h], 1, b"".join(f16(0.01 * (i % 5)) for i in range(ff * h))),
        t("output_norm.weight", [h]),
    ]
    if arch == "qwen2":
        tensors += [t("blk.0.attn_q.bias", [h]), t("blk.0.attn_k.bias", [kv]), t("blk.0.attn_v.bias", [kv])]
    return gguf(kvs, tensors)


GPT2_TOK = [
    ("tokenizer.ggml.model", STR, "gpt2"),
    ("tokenizer.ggml.pre", STR, "smollm"),
    ("tokenizer.ggml.tokens", ARR, (STR, ["a", "b", "ab", "<s>", "</s>", "\u0120", "c", "\u0120a"])),
    ("tokenizer.ggml.token_type", ARR, (I32, [1, 1, 1, 3, 3, 1, 1, 1])),
    ("tokenizer.ggml.merges", ARR, (STR, ["a b", "\u0120 a"])),
    ("tokenizer.ggml.bos_token_id", U32, 3),
    ("tokenizer.ggml.eos_token_id", U32, 4),
    ("tokenizer.ggml.add_bos_token", BOOL, True),
    ("tokenizer.chat_template", STR,
     "{% for m in messages %}<s>{{ m.role }}\n{{ m.content }}</s>{% endfor %}"),
]
SPM_TOK = [
    ("tokenizer.ggml.model", STR, "llama"),
    ("tokenizer.ggml.tokens", ARR, (STR, ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab", "<0x41>"])),
    ("tokenizer.ggml.scores", ARR, (F32, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -1.5, -2.5, 0.0])),
    ("tokenizer.ggml.token_type", ARR, (I32, [2, 3, 3, 1, 1, 1, 1, 1, 6])),
    ("tokenizer.ggml.bos_token_id", U32, 1),
    ("tokenizer.ggml.eos_token_id", U32, 2),
    ("tokenizer.ggml.unknown_token_id", U32, 0),
]


def quant_tensors():
    """One tensor of each quantized type, a block or two each."""
    q8 = (f16(0.5) + bytes(range(32))) * 2
    q4_0 = f16(0.25) + bytes(range(16))
    q4_1 = f16(0.25) + f16(-1.0) + bytes(range(16))
    q4k = f16(0.1) + f16(0.01) + bytes(range(12)) + bytes(i % 256 for i in range(128))
    q5k = f16(0.1) + f16(0.01) + bytes(range(12)) + bytes(32) + bytes(i % 256 for i in range(128))
    q6k = bytes(i % 256 for i in range(128)) + bytes(64) + bytes(range(16)) + f16(0.1)
    return gguf([("general.architecture", STR, "test"), ("general.alignment", U32, 64)], [
        ("q8_0", [64], 8, q8), ("q4_0", [32], 2, q4_0), ("q4_1", [32], 3, q4_1),
        ("q4_k", [256], 12, q4k), ("q5_k", [256], 13, q5k), ("q6_k", [256], 14, q6k),
        ("bf16", [2, 2], 30, b"\x80\x3f" * 4), ("q5_0", [32], 6, bytes(22)),
    ], align=64)


def header(n_tensors, n_kv):
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def write_gguf():
    d = CORPUS / "gguf"
    good = llama(GPT2_TOK)
    seeds = {
        "llama-gpt2": good,
        "llama-spm": llama(SPM_TOK),
        "qwen2": llama(GPT2_TOK[:1] + [("tokenizer.ggml.pre", STR, "qwen2")] + GPT2_TOK[2:], "qwen2"),
        "quant": quant_tensors(),
        "truncated-header": good[:30],
        "truncated-data": good[:-40],
        "huge-tensor-count": header(1 << 62, 0),
        "huge-kv-count": header(0, (1 << 64) - 1),
        "huge-array": header(0, 1) + s("k") + struct.pack("<IIQ", ARR, U8, 1 << 60),
        "huge-string": header(0, 1) + s("k") + struct.pack("<IQ", STR, (1 << 64) - 1),
        "bad-utf8-key": header(0, 1) + s(b"\xff\xfe") + struct.pack("<I", U8) + b"\x01",
        "bad-bool": header(0, 1) + s("k") + struct.pack("<I", BOOL) + b"\x07",
        "deep-array": header(0, 1) + s("k") + struct.pack("<IIQ", ARR, ARR, 1)
        + struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U8, 1) + b"\x01",
        "overflow-dims": gguf([], [("t", [1 << 32, 1 << 32, 1 << 2], 0, b"")]),
        "bad-offset": gguf([], [("t", [4], 0, f32s(4))])[:-32] + b"",
        "offset-past-end": header(1, 0) + s("t") + struct.pack("<IQIQ", 1, 4, 0, (1 << 64) - 32),
        "huge-alignment": gguf([("general.alignment", U64, 1 << 63)], []),
        "zero-heads": llama(GPT2_TOK).replace(b"head_count\x04\x00\x00\x00\x02", b"head_count\x04\x00\x00\x00\x00"),
        "bad-token-id": llama(GPT2_TOK[:5] + [("tokenizer.ggml.bos_token_id", U32, 1 << 31)] + GPT2_TOK[6:]),
        "short-scores": llama(SPM_TOK[:2] + [("tokenizer.ggml.scores", ARR, (F32, [0.0]))] + SPM_TOK[3:]),
    }
    for name, data in seeds.items():
        (d / f"seed-{name}.gguf").write_bytes(data)


def write_tokenizer_json():
    d = CORPUS / "tokenizer_json"
    demo = (ROOT / "assets/demo/tokenizer.json").read_bytes()
    cfg = (ROOT / "assets/demo/tokenizer_config.json").read_bytes()
    mini = json.dumps({
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": 0, "content": "<e>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"<e>": 0, "a": 1, "b": 2, "[UNK]": 3},
                  "unk_token": "[UNK]"},
    }).encode()
    bpe = json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None, "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                  "byte_fallback": True, "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
    }).encode()
    two = lambda c, j: struct.pack("<H", len(c)) + c + j
    seeds = {
        "demo": two(cfg, demo),
        "mini": two(b'{"eos_token": {"content": "<e>"}, "chat_template": "{{ eos_token }}"}', mini),
        "bpe": two(b"", bpe),
        "truncated": two(b"", demo[: len(demo) // 2]),
        "bad-utf8": two(b"", mini.replace(b'"a"', b'"\xff"')),
        "bad-config": two(b'{"eos_token": 3, "chat_template": [1]}', mini),
        "bad-merge": two(b"", bpe.replace(b'[["a", "b"]]', b'[["x", "y"]]')),
        "bad-id": two(b"", mini.replace(b'"id": 0', b'"id": 4294967295')),
    }
    for name, data in seeds.items():
        (d / f"seed-{name}.bin").write_bytes(data)


if __name__ == "__main__":
    write_gguf()
    write_tokenizer_json()
