"""Writes the `tributary model init` weights as GGUF files for llama.cpp, with the `gguf`
package's writer, plus a random LoRA adapter as a GGUF LoRA adapter.

    python to_gguf.py MODEL_DIR OUT_DIR [--rank 16] [--seed 100]

writes OUT_DIR/model-f32.gguf, OUT_DIR/model-f16.gguf (2-D weights in f16, norms in f32) and
OUT_DIR/lora-r16.gguf (rank r, alpha 2r, on q/k/v/o/gate/up/down of every layer; A and B
random and non-zero, B ~ N(0, 0.02) as in `tributary bench`, so the adapter does work).

Layout notes:
- llama.cpp's "llama" architecture applies RoPE to adjacent pairs (2i, 2i+1) of each head,
  Hugging Face's Llama to (i, i + head_dim/2). The rows of q_proj and k_proj (and of their
  LoRA B, whose rows are the projection's outputs) are reordered per head so that both compute
  the same function.
- GGUF lists a tensor's dimensions fastest first, so a numpy array of shape (out, in) is the
  ggml tensor ne = [in, out], which is what llama.cpp expects for a weight. LoRA A (r, in)
  and B (out, r) are stored as PEFT shapes them (llama.cpp checks a.ne[0] == in,
  b.ne[1] == out, a.ne[1] == b.ne[0]).
- llama.cpp needs a vocabulary: a minimal SentencePiece-style one of vocab_size tokens
  (<unk>, <s>, </s>, the 256 byte tokens, then placeholder pieces). The benchmarks feed
  token ids, never text.
"""

import argparse
import os

import gguf
import numpy as np
from safetensors.numpy import load_file

import common

# Hugging Face module name -> llama.cpp tensor name inside blk.N.
PROJ_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORM_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def rope_rows_to_interleaved(w, n_head):
    """Reorders the rows of a q/k projection (or its LoRA B) from Hugging Face's half-split
    RoPE pairs to llama.cpp's adjacent pairs: new row 2i (2i+1) of a head is old row i
    (i + head_dim/2)."""
    out = w.shape[0]
    head_dim = out // n_head
    return (
        w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
        .copy()
    )


def heads_for(cfg, hf_module):
    if hf_module == "self_attn.q_proj":
        return cfg["num_attention_heads"]
    if hf_module == "self_attn.k_proj":
        return cfg["num_key_value_heads"]
    return None


def add_vocab(writer, vocab_size):
    if vocab_size < 259:
        raise SystemExit(f"error: vocab_size {vocab_size} must be at least 259 for the minimal vocabulary")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    for i in range(len(tokens), vocab_size):
        tokens.append(f"\u2581t{i}")
        types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab_size)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)


def add_hparams(writer, cfg, name):
    writer.add_name(name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rope_theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_vocab_size(cfg["vocab_size"])


def gguf_tensors(cfg, weights):
    """(llama.cpp name, numpy array) of the whole model, q/k rows reordered."""
    yield "token_embd.weight", weights["model.embed_tokens.weight"]
    for layer in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{layer}."
        for hf, ll in NORM_NAMES.items():
            yield f"blk.{layer}.{ll}.weight", weights[prefix + hf + ".weight"]
        for hf, ll in PROJ_NAMES.items():
            w = weights[prefix + hf + ".weight"]
            heads = heads_for(cfg, hf)
            if heads:
                w = rope_rows_to_interleaved(w, heads)
            yield f"blk.{layer}.{ll}.weight", w
    yield "output_norm.weight", weights["model.norm.weight"]
    head = weights.get("lm_head.weight")
    yield "output.weight", head if head is not None else weights["model.embed_tokens.weight"]


def write_model(cfg, weights, path, f16):
    writer = gguf.GGUFWriter(path, arch="llama")
    add_hparams(writer, cfg, "tributary-bench-f16" if f16 else "tributary-bench-f32")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    add_vocab(writer, cfg["vocab_size"])
    for name, w in gguf_tensors(cfg, weights):
        w = np.ascontiguousarray(w, dtype=np.float32)
        if f16 and w.ndim == 2:
            w = w.astype(np.float16)
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def random_lora(cfg, rank, seed):
    """{(layer, Hugging Face module): (A (r, in), B (out, r))} of a rank-`rank` adapter on all
    seven projections of every layer, in PEFT's layout (rows of B not reordered)."""
    rng = np.random.default_rng(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    dims = {
        "self_attn.q_proj": (h, q),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (q, h),
        "mlp.gate_proj": (h, inter),
        "mlp.up_proj": (h, inter),
        "mlp.down_proj": (inter, h),
    }
    factors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for hf in PROJ_NAMES:
            d_in, d_out = dims[hf]
            bound = 1.0 / np.sqrt(d_in)  # PEFT's kaiming-uniform bound for A
            a = rng.uniform(-bound, bound, size=(rank, d_in)).astype(np.float32)
            b = (rng.standard_normal((d_out, rank)) * 0.02).astype(np.float32)
            factors[(layer, hf)] = (a, b)
    return factors


def write_lora(cfg, path, rank, seed):
    """random_lora(cfg, rank, seed) as a GGUF LoRA adapter with alpha 2*rank."""
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(2 * rank))
    for (layer, hf), (a, b) in random_lora(cfg, rank, seed).items():
        heads = heads_for(cfg, hf)
        if heads:
            b = rope_rows_to_interleaved(b, heads)
        ll = PROJ_NAMES[hf]
        writer.add_tensor(f"blk.{layer}.{ll}.weight.lora_a", a)
        writer.add_tensor(f"blk.{layer}.{ll}.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def convert(model_dir, out_dir, rank=16, seed=100):
    """Writes the three files; returns their paths (f32, f16, lora)."""
    cfg = common.load_config(model_dir)
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    os.makedirs(out_dir, exist_ok=True)
    paths = (
        os.path.join(out_dir, "model-f32.gguf"),
        os.path.join(out_dir, "model-f16.gguf"),
        os.path.join(out_dir, f"lora-r{rank}.gguf"),
    )
    write_model(cfg, weights, paths[0], f16=False)
    write_model(cfg, weights, paths[1], f16=True)
    write_lora(cfg, paths[2], rank, seed)
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a `tributary model init` directory (config.json, model.safetensors)")
    p.add_argument("out_dir")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seed", type=int, default=100)
    args = p.parse_args()
    common.positive("rank", args.rank)
    for path in convert(args.model_dir, args.out_dir, args.rank, args.seed):
        print(path)


if __name__ == "__main__":
    main()
