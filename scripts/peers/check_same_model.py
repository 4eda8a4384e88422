"""Checks that the peers run the same model: greedy tokens of transformers' LlamaForCausalLM
(the `tributary model init` weights) and of llama.cpp on to_gguf.py's f32 file, same prompt.

    python check_same_model.py [--model DIR] [--new-tokens 16]

With --adapters 1 both run to_gguf.py's random LoRA adapter (PEFT on the transformers side,
the GGUF adapter on llama.cpp's), which checks the adapter's layout and scale too.

Also compares the last-position logits of the prompt (max abs difference), which shows
whether to_gguf.py's q/k row reordering for llama.cpp's RoPE is right (without it the logits
differ by O(1)). Exits 1 when the greedy tokens differ.
"""

import argparse
import os
import sys
import tempfile

import numpy as np

import common


def with_adapter(torch, hf, cfg, rank):
    """PEFT LoRA (r, alpha 2r, all seven projections) holding to_gguf.random_lora's factors."""
    from peft import LoraConfig, get_peft_model

    import to_gguf

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=common.LORA_TARGETS)
    peft_model = get_peft_model(hf, config)
    modules = dict(peft_model.named_modules())
    with torch.no_grad():
        for (layer, module), (a, b) in to_gguf.random_lora(cfg, rank, 100).items():
            m = modules[f"base_model.model.model.layers.{layer}.{module}"]
            m.lora_A["default"].weight.copy_(torch.from_numpy(a))
            m.lora_B["default"].weight.copy_(torch.from_numpy(b))
    return peft_model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=common.DEFAULT_CONFIG)
    p.add_argument("--model", help="a `tributary model init` directory (else made on the spot)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--adapters", type=int, choices=[0, 1], default=0)
    p.add_argument("--rank", type=int, default=16)
    args = p.parse_args()
    common.positive("prompt-len", args.prompt_len)
    common.positive("new-tokens", args.new_tokens)

    import torch
    from llama_cpp import Llama
    from transformers import LlamaForCausalLM

    import to_gguf

    model = common.model_dir(args)
    cfg = common.load_config(model)
    prompt = np.random.default_rng(2).integers(0, cfg["vocab_size"], size=args.prompt_len).tolist()

    hf = LlamaForCausalLM.from_pretrained(model, dtype=torch.float32)
    if args.adapters:
        hf = with_adapter(torch, hf, cfg, args.rank)
    hf.eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        hf_logits = hf(input_ids=ids).logits[0, -1].numpy()
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    hf_tokens = out[0, args.prompt_len :].tolist()

    with tempfile.TemporaryDirectory(prefix="tributary-gguf-") as gdir:
        to_gguf.convert(model, gdir, rank=args.rank)
        llm = Llama(
            model_path=os.path.join(gdir, "model-f32.gguf"),
            lora_path=os.path.join(gdir, f"lora-r{args.rank}.gguf") if args.adapters else None,
            n_ctx=args.prompt_len + args.new_tokens + 16,
            logits_all=True,
            verbose=False,
        )
        llm.eval(prompt)
        cpp_logits = np.array(llm.scores[args.prompt_len - 1])
        llm.reset()
        cpp_tokens = []
        for t in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            cpp_tokens.append(t)
            if len(cpp_tokens) == args.new_tokens:
                break

    diff = float(np.max(np.abs(hf_logits - cpp_logits)))
    same = hf_tokens == cpp_tokens
    print(f"last-position logits, max abs difference: {diff:.3g} (logit scale {np.std(hf_logits):.3g})")
    print(f"transformers greedy: {hf_tokens}")
    print(f"llama.cpp greedy:    {cpp_tokens}")
    print("same greedy tokens" if same else "DIFFERENT greedy tokens")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
