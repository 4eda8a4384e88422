"""llama.cpp (llama-cpp-python) greedy generation on the model of `tributary bench generate`.

    python llama_cpp_bench.py [--dtype f32|f16] [--adapters 0|1] [--prompt-len 32 --new-tokens 128]
                              [--gguf-dir DIR]   # files from to_gguf.py; else made on the spot

Batch 1: a prompt of P random token ids (no text, no BOS), greedy (temperature 0), KV cache,
NEW tokens with no early stop (an end-of-sequence token is not a stop here), the LoRA adapter
(rank 16, alpha 32, all seven projections, non-zero B) active or not. As `tributary bench`: a
2-token warm-up run, then one timed run from an empty cache, prefill included;
tokens_per_s = NEW / time; decode_tokens_per_s = (NEW-1) / (time - prefill_seconds), the
prefill ending when the first new token comes. One JSON line with the same field names where they apply.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import common


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=common.DEFAULT_CONFIG, help="config.json-style file (model init)")
    p.add_argument("--model", help="a `tributary model init` directory (else made on the spot)")
    p.add_argument("--gguf-dir", help="a directory with to_gguf.py's files (else converted on the spot)")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    p.add_argument("--adapters", type=int, default=1, help="0 or 1")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", help="also append the JSON line to this file")
    args = p.parse_args()
    common.positive("prompt-len", args.prompt_len)
    common.positive("new-tokens", args.new_tokens)
    common.positive("threads", args.threads)
    common.positive("rank", args.rank)
    if args.adapters not in (0, 1):
        sys.exit(f"error: --adapters must be 0 or 1 (llama.cpp runs batch 1 here), got {args.adapters}")
    return args


def gguf_files(args):
    """(model dir, gguf dir); converts into a temporary directory unless --gguf-dir holds the
    files already."""
    import to_gguf

    model = common.model_dir(args)
    if args.gguf_dir and os.path.exists(os.path.join(args.gguf_dir, f"model-{args.dtype}.gguf")):
        return model, args.gguf_dir
    if args.gguf_dir:
        out = args.gguf_dir
    else:
        args._gguf_tmp = tempfile.TemporaryDirectory(prefix="tributary-gguf-")
        out = args._gguf_tmp.name
    to_gguf.convert(model, out, rank=args.rank)
    return model, out


def greedy(llm, prompt, n):
    """n new token ids after `prompt`, greedy, from an empty cache, and the time the first
    one came (the prefill's end, time.perf_counter())."""
    llm.reset()
    out = []
    first_at = None
    for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if first_at is None:
            first_at = time.perf_counter()
        out.append(token)
        if len(out) == n:
            break
    return out, first_at


def main():
    args = parse_args()
    import llama_cpp
    from llama_cpp import Llama

    model, gdir = gguf_files(args)
    cfg = common.load_config(model)
    lora = os.path.join(gdir, f"lora-r{args.rank}.gguf") if args.adapters else None
    llm = Llama(
        model_path=os.path.join(gdir, f"model-{args.dtype}.gguf"),
        lora_path=lora,
        lora_scale=1.0,
        n_ctx=args.prompt_len + args.new_tokens + 16,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        seed=0,
        verbose=False,
    )
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, cfg["vocab_size"], size=args.prompt_len).tolist()
    greedy(llm, prompt, 2)  # warm-up
    t = time.perf_counter()
    out, first_at = greedy(llm, prompt, args.new_tokens)
    seconds = time.perf_counter() - t
    prefill_seconds = first_at - t
    if len(out) != args.new_tokens:
        sys.exit(f"error: generated {len(out)} tokens, expected {args.new_tokens}")
    r = args.rank if args.adapters else 0
    flops = common.generate_flops(cfg, 1, args.prompt_len, args.new_tokens, r)
    rec = {
        "peer": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "params": common.param_count(cfg),
        "bench": "generate",
        "batch": 1,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "adapters": args.adapters,
        "adapter_mode": "gguf lora adapter (alpha/r = 2)" if args.adapters else "none",
        "quantize": "none",
        "dtype": args.dtype,
        "seconds": seconds,
        "prefill_seconds": prefill_seconds,
        "tokens_per_s": args.new_tokens / seconds,
        "decode_tokens_per_s": (args.new_tokens - 1) / (seconds - prefill_seconds) if args.new_tokens > 1 else None,
        "gflop": flops / 1e9,
        "achieved_gflops": flops / seconds / 1e9,
        "first_row_tail": out[-8:],
    }
    rec.update(common.memory_fields())
    rec["load_avg_1m"] = common.load_avg_1m()
    common.emit(rec, args.out)


if __name__ == "__main__":
    main()
