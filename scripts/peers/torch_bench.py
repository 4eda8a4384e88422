"""PyTorch + PEFT on the model of `tributary bench`: LoRA training and greedy generation.

    python torch_bench.py train    [--batch 8 --seq 256 --rank 16 --steps 3] [--autocast bf16]
    python torch_bench.py generate [--batch 1 --prompt-len 32 --new-tokens 128 --adapters 1]
    python torch_bench.py train --device cuda     # on a GPU (scripts/gpu/check.sh)

Loads the weights that `tributary model init --seed 0` writes for the same config (or
--model DIR) into transformers' LlamaForCausalLM (f32), and prints one JSON line with the
field names of `tributary bench train|generate` where they apply, plus `peer`, versions and
threads. What each run does matches `tributary bench` (model/src/bench/run.rs):

- train: PEFT LoRA r=RANK, alpha=2*RANK, no dropout, on q/k/v/o/gate/up/down; AdamW over the
  LoRA factors; causal-LM loss over all positions of B random rows of T tokens; one warm-up
  step, then STEPS timed steps; tokens_per_s = B*T*STEPS / time. `--autocast bf16` runs the
  forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)` (PyTorch's CPU mixed
  precision: matmuls in bf16 with f32 accumulation through oneDNN, AMX/AVX-512 BF16 where the
  CPU has them; weights, LoRA factors, gradients and AdamW stay f32), as a PEFT user would
  turn it on; the JSON line then has `precision: "bf16-autocast"` and the bf16 GEMM peak.
- generate: B random prompts of P tokens, greedy, KV cache, NEW tokens per row (no early
  stop); adapters K (rank RANK, random non-zero B, unmerged, active); K > 1 gives rows
  round-robin to K adapters in one mixed batch (PEFT's adapter_names); a 2-token warm-up run
  first; tokens_per_s = B*NEW / time of the timed run, prefill included.
"""

import argparse
import os
import sys
import time

import common


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", choices=["train", "generate"])
    p.add_argument("--config", default=common.DEFAULT_CONFIG, help="config.json-style file (model init)")
    p.add_argument("--model", help="a model directory to load instead of running model init")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--batch", type=int, default=None, help="rows (train 8, generate 1)")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--adapters", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:N]")
    p.add_argument("--out", help="also append the JSON line to this file")
    p.add_argument("--autocast", choices=["none", "bf16"], default="none",
                   help="train under torch.autocast('cpu', dtype=torch.bfloat16)")
    args = p.parse_args()
    if args.batch is None:
        args.batch = 8 if args.bench == "train" else 1
    common.positive("batch", args.batch)
    common.positive("seq", args.seq, 2)
    common.positive("rank", args.rank)
    common.positive("steps", args.steps)
    common.positive("prompt-len", args.prompt_len)
    common.positive("new-tokens", args.new_tokens)
    common.positive("adapters", args.adapters, 0)
    common.positive("threads", args.threads)
    return args


def sync(torch, device):
    """Waits for the GPU's queued work, so that wall-clock times cover it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak_gflops(torch, device, n=1024, reps=5):
    """Best of `reps` n³ f32 matmuls after one warm-up, as `tributary bench` measures it."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for i in range(reps + 1):
        sync(torch, device)
        t = time.perf_counter()
        torch.mm(a, b)
        sync(torch, device)
        s = time.perf_counter() - t
        if i > 0:
            best = min(best, s)
    return 2.0 * n**3 / best / 1e9


def bf16_gemm_peak_gflops(torch, n=1024, reps=5):
    """The same in bf16 (oneDNN's bf16 GEMM, f32 accumulation): what autocast's matmuls get."""
    a = torch.randn(n, n).to(torch.bfloat16)
    b = torch.randn(n, n).to(torch.bfloat16)
    best = float("inf")
    for i in range(reps + 1):
        t = time.perf_counter()
        torch.mm(a, b)
        s = time.perf_counter() - t
        if i > 0:
            best = min(best, s)
    return 2.0 * n**3 / best / 1e9


def load_model(torch, model_path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model


def lora_config(rank):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules=common.LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )


def header(torch, cfg, device):
    import peft
    import transformers

    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
        "peer": "pytorch+peft",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "attn_implementation": None,
        "params": common.param_count(cfg),
    }


def run_train(torch, args, model, cfg, rec):
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(args.rank))
    rec["attn_implementation"] = model.config._attn_implementation
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=g).to(args.dev)

    autocast = args.autocast == "bf16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    first_loss = step()  # warm-up
    sync(torch, args.dev)
    t = time.perf_counter()
    last_loss = first_loss
    for _ in range(args.steps):
        last_loss = step()
    sync(torch, args.dev)
    seconds = time.perf_counter() - t
    flops = common.train_step_flops(cfg, args.batch, args.seq, args.rank)
    achieved = flops * args.steps / seconds / 1e9
    rec.update(
        bench="train",
        batch=args.batch,
        seq=args.seq,
        rank=args.rank,
        steps=args.steps,
        quantize="none",
        precision="bf16-autocast" if autocast else "f32",
        seconds=seconds,
        tokens_per_s=args.batch * args.seq * args.steps / seconds,
        gflop_per_step=flops / 1e9,
        achieved_gflops=achieved,
        first_loss=first_loss,
        last_loss=last_loss,
    )
    return achieved


def add_adapters(torch, model, args):
    """K adapters named a0..a{K-1}, each with random non-zero B (as `tributary bench`)."""
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(args.rank), adapter_name="a0")
    for k in range(1, args.adapters):
        model.add_adapter(f"a{k}", lora_config(args.rank))
    g = torch.Generator().manual_seed(100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def run_generate(torch, args, model, cfg, rec):
    if args.adapters > 0:
        model = add_adapters(torch, model, args)
    model.eval()
    rec["attn_implementation"] = model.config._attn_implementation
    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, cfg["vocab_size"], (args.batch, args.prompt_len), generator=g)
    prompts = prompts.to(args.dev)
    mask = torch.ones_like(prompts)
    extra = {}
    if args.adapters > 1:
        extra["adapter_names"] = [f"a{i % args.adapters}" for i in range(args.batch)]

    class PrefillClock:
        """A generate() streamer that notes when the first new tokens arrive (the prefill's
        end): generate() hands it the prompt first, then each step's tokens."""

        def __init__(self):
            self.calls = 0
            self.first_token_at = None

        def put(self, _value):
            self.calls += 1
            if self.calls == 2:
                self.first_token_at = time.perf_counter()

        def end(self):
            pass

    clock = PrefillClock()

    def generate(n, streamer=None):
        return model.generate(
            input_ids=prompts,
            attention_mask=mask,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            streamer=streamer,
            **extra,
        )

    with torch.inference_mode():
        generate(2)  # warm-up
        sync(torch, args.dev)
        t = time.perf_counter()
        out = generate(args.new_tokens, clock)
        sync(torch, args.dev)
        seconds = time.perf_counter() - t
    prefill_seconds = clock.first_token_at - t
    new = out.shape[1] - args.prompt_len
    if new != args.new_tokens:
        sys.exit(f"error: generated {new} tokens per row, expected {args.new_tokens}")
    r = args.rank if args.adapters > 0 else 0
    flops = common.generate_flops(cfg, args.batch, args.prompt_len, args.new_tokens, r)
    achieved = flops / seconds / 1e9
    rec.update(
        bench="generate",
        batch=args.batch,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        adapters=args.adapters,
        adapter_mode="peft mixed batch (adapter_names)" if args.adapters > 1 else
        ("single adapter, unmerged" if args.adapters == 1 else "none"),
        quantize="none",
        dtype="f32",
        seconds=seconds,
        prefill_seconds=prefill_seconds,
        tokens_per_s=args.batch * args.new_tokens / seconds,
        decode_tokens_per_s=args.batch * (args.new_tokens - 1) / (seconds - prefill_seconds)
        if args.new_tokens > 1
        else None,
        gflop=flops / 1e9,
        achieved_gflops=achieved,
        first_row_tail=out[0, -8:].tolist(),
    )
    return achieved


def main():
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.dev = torch.device(args.device)
    path = common.model_dir(args)
    cfg = common.load_config(path)
    rec = header(torch, cfg, args.dev)
    peak = gemm_peak_gflops(torch, args.dev)
    model = load_model(torch, path).to(args.dev)
    if args.bench == "train":
        achieved = run_train(torch, args, model, cfg, rec)
    else:
        achieved = run_generate(torch, args, model, cfg, rec)
    rec.update(gemm_peak_gflops=peak, mfu=achieved / peak)
    if args.bench == "train" and args.autocast == "bf16":
        bf16_peak = bf16_gemm_peak_gflops(torch)
        rec.update(bf16_gemm_peak_gflops=bf16_peak, mfu=achieved / bf16_peak)
    rec.update(common.memory_fields())
    rec["load_avg_1m"] = common.load_avg_1m()
    common.emit(rec, args.out)


if __name__ == "__main__":
    main()
