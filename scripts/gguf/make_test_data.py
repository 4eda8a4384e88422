"""Writes the committed GGUF test data of `model/tests/gguf_*.rs` with the reference
implementation: the `gguf` Python package (llama.cpp's own gguf-py).

    ~/.cache/tributary/gguf-venv/bin/python scripts/gguf/make_test_data.py [OUT_DIR]

(`scripts/gguf/setup.sh` makes that venv.) OUT_DIR defaults to model/tests/data/gguf and
receives:

- dequant.gguf: for each ggml type Tributary reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
  Q5_K, Q6_K) a tensor `<type>` of 4 x 512 values in that type (random block bytes, with
  finite random f16 scales; floats for the float types) and `<type>.expected`, the F32
  values `gguf.quants.dequantize` gives for it. Plus metadata of every value type, and
  `general.alignment` = 64, so the reader's parsing is checked too.
- unsupported.gguf: one Q5_0 tensor (a type Tributary does not read), for the error test.
- tiny-llama.gguf, tiny-qwen2.gguf: the fixtures in ../shared/fixtures converted as
  llama.cpp's convert_hf_to_gguf.py converts them (same metadata keys, tensor names, the
  per-head Q/K row permutation for `llama`, none for `qwen2`, byte-level BPE vocabulary
  with merges and pre-tokenizer `gpt-2`, token types CONTROL for special added tokens,
  the chat template), in F32 so the fixture's reference logits still hold to 1e-4.
- tiny-llama-q8_0.gguf: the same model with its 2-D weights in Q8_0 (quantized by
  `gguf.quants.quantize`), and `tiny-llama-q8_0.expected.safetensors` holding the values
  the reference dequantizes them to, under Hugging Face names (Q/K un-permuted).
"""

import json
import os
import sys

import gguf
import numpy as np
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file, save_file

Q = gguf.GGMLQuantizationType
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.environ.get("TRIBUTARY_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))

# Byte offsets of the f16 scale fields in one block, per type.
F16_FIELDS = {
    Q.Q8_0: [0],
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


def random_quant(rng, qtype, rows, cols):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = (rng.random(n_blocks) * 0.02 + 0.001).astype(np.float16)
        if off == 2 and qtype in (Q.Q4_1,):
            scales = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * size)


def write_dequant(out):
    rng = np.random.default_rng(13)
    w = gguf.GGUFWriter(os.path.join(out, "dequant.gguf"), arch="test")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**40 + 7)
    w.add_int64("test.i64", -(2**40) - 7)
    w.add_float32("test.f32", 1.5)
    w.add_float64("test.f64", -2.25)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo 🦀")
    w.add_array("test.array", ["a", "bc", ""])
    w.add_array("test.ints", [1, 2, 3])
    rows, cols = 4, 512
    for qtype in [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        name = qtype.name
        if qtype in (Q.F32, Q.F16, Q.BF16):
            values = rng.standard_normal((rows, cols)).astype(np.float32)
            raw = quantize(values, qtype)
        else:
            raw = random_quant(rng, qtype, rows, cols)
        expected = dequantize(raw, qtype).astype(np.float32)
        assert expected.shape == (rows, cols), (name, expected.shape)
        assert np.isfinite(expected).all(), name
        if qtype == Q.F32:
            w.add_tensor(name, raw)
        else:
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        w.add_tensor(name + ".expected", expected)
    finish(w)


def write_unsupported(out):
    w = gguf.GGUFWriter(os.path.join(out, "unsupported.gguf"), arch="test")
    values = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    raw = quantize(values, Q.Q5_0)
    w.add_tensor("blk.0.attn_q.weight", raw, raw_shape=raw.shape, raw_dtype=Q.Q5_0)
    finish(w)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    layer, rest = parts[2], ".".join(parts[3:])
    for k, v in NAMES.items():
        if rest == k or rest.startswith(k + "."):
            return f"blk.{layer}.{v}{rest[len(k):]}"
    raise KeyError(hf)


def add_vocab(w, d, cfg):
    """convert_hf_to_gguf.py's _set_vocab_gpt2 and SpecialVocab, for a byte-level BPE."""
    tok = json.load(open(os.path.join(d, "tokenizer.json")))
    tcfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
    vocab = dict(tok["model"]["vocab"])
    added = {a["content"]: a for a in tok["added_tokens"]}
    for a in tok["added_tokens"]:
        vocab[a["content"]] = a["id"]
    n = cfg["vocab_size"]
    rev = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        t = rev.get(i, f"[PAD{i}]")
        tokens.append(t)
        if t in added:
            types.append(gguf.TokenType.CONTROL if added[t]["special"] else gguf.TokenType.USER_DEFINED)
        elif t.startswith("[PAD"):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for field, add in [("eos_token", w.add_eos_token_id), ("pad_token", w.add_pad_token_id),
                       ("bos_token", w.add_bos_token_id), ("unk_token", w.add_unk_token_id)]:
        t = tcfg.get(field)
        if isinstance(t, dict):
            t = t.get("content")
        if t is not None:
            add(vocab[t])
    w.add_add_bos_token(False)
    tmpl = tcfg.get("chat_template")
    path = os.path.join(d, "chat_template.jinja")
    if os.path.exists(path):
        tmpl = open(path).read()
    if tmpl:
        w.add_chat_template(tmpl)


def convert(name, out_path, qtype, expected_path=None):
    d = os.path.join(FIXTURES, name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    arch = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}[cfg["architectures"][0]]
    weights = load_file(os.path.join(d, "model.safetensors"))
    w = gguf.GGUFWriter(out_path, arch=arch)
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    w.add_rope_freq_base(float(theta))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if qtype == Q.F32 else gguf.LlamaFileType.MOSTLY_Q8_0)
    add_vocab(w, d, cfg)
    expected = {}
    for hf in sorted(weights):
        t = weights[hf].astype(np.float32)
        if arch == "llama" and ".q_proj." in hf:
            t = permute(t, cfg["num_attention_heads"])
        if arch == "llama" and ".k_proj." in hf:
            t = permute(t, cfg["num_key_value_heads"])
        # As llama.cpp's converter, rows that are not whole blocks stay in F32.
        if qtype != Q.F32 and t.ndim == 2 and t.shape[1] % 32 == 0:
            raw = quantize(t, qtype)
            w.add_tensor(gguf_name(hf), raw, raw_shape=raw.shape, raw_dtype=qtype)
            back = dequantize(raw, qtype).astype(np.float32)
        else:
            w.add_tensor(gguf_name(hf), np.ascontiguousarray(t))
            back = t
        if arch == "llama" and ".q_proj." in hf:
            back = unpermute(back, cfg["num_attention_heads"])
        if arch == "llama" and ".k_proj." in hf:
            back = unpermute(back, cfg["num_key_value_heads"])
        expected[hf] = np.ascontiguousarray(back)
    finish(w)
    if expected_path:
        save_file(expected, expected_path)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "model", "tests", "data", "gguf")
    os.makedirs(out, exist_ok=True)
    write_dequant(out)
    write_unsupported(out)
    convert("tiny-llama", os.path.join(out, "tiny-llama.gguf"), Q.F32)
    convert("tiny-qwen2", os.path.join(out, "tiny-qwen2.gguf"), Q.F32)
    convert("tiny-llama", os.path.join(out, "tiny-llama-q8_0.gguf"), Q.Q8_0,
            os.path.join(out, "tiny-llama-q8_0.expected.safetensors"))
    for f in sorted(os.listdir(out)):
        print(f"{os.path.getsize(os.path.join(out, f)):>9}  {f}")


if __name__ == "__main__":
    main()
