"""Checks a directory written by `tributary model import` with the Hugging Face libraries:
transformers' AutoConfig and AutoTokenizer load it, the tokenizer gives llama.cpp's ids on
the committed corpus (model/tests/data/smollm2/llama_cpp.json), and the chat template
renders through transformers' apply_chat_template. With torch installed (the 4.6 GB
scripts/peers venv), the model loads too and its greedy answers to the committed prompts
are compared, token for token, with Tributary's (= llama.cpp's on the same weights as F32,
llama_cpp_f32.json) and with llama.cpp's on the Q4_1 file.

    ~/.cache/tributary/gguf-venv/bin/pip install transformers    # no torch needed
    ~/.cache/tributary/gguf-venv/bin/python scripts/gguf/check_import.py DIR
"""

import json
import os
import sys

from transformers import AutoConfig, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    d = sys.argv[1]
    cfg = AutoConfig.from_pretrained(d)
    print(f"config: {cfg.model_type}, {cfg.num_hidden_layers} layers, heads {cfg.num_attention_heads}/"
          f"{cfg.num_key_value_heads}, tie {cfg.tie_word_embeddings}")
    tok = AutoTokenizer.from_pretrained(d)
    ref = json.load(open(os.path.join(ROOT, "model/tests/data/smollm2/llama_cpp.json")))
    bad = 0
    for case in ref["tokenizer"]:
        ids = tok.encode(case["text"], add_special_tokens=False)
        if ids != case["ids"]:
            bad += 1
            print(f"differs: {case['text']!r}: {ids} vs {case['ids']}")
    print(f"tokenizer: {len(ref['tokenizer']) - bad}/{len(ref['tokenizer'])} strings give llama.cpp's ids")
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    want = next(c["text"] for c in ref["tokenizer"]
                if c["text"].endswith("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n"))
    print("chat template:", "same as llama.cpp's run" if text == want else f"DIFFERS: {text!r}")
    try:
        import torch  # noqa: F401
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("torch is not installed: model loading skipped")
        return 1 if bad else 0
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    # llama_cpp_f32.json: llama.cpp on the same weights dequantized to F32, whose greedy
    # answers are Tributary's (docs/benchmarks.md); llama_cpp.json: llama.cpp on the Q4_1 file.
    f32_ref = json.load(open(os.path.join(ROOT, "model/tests/data/smollm2/llama_cpp_f32.json")))
    eos = set(tok.all_special_ids)
    trim = lambda ids: [t for t in ids if t not in eos]  # noqa: E731
    same_f32 = same_q4 = 0
    for a, a32 in zip(ref["answers"], f32_ref["answers"]):
        ids = torch.tensor([a32["prompt_ids"]])
        n = max(len(a32["ids"]), len(a["ids"]), 1)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 do_sample=False)
        new = trim(out[0, ids.shape[1]:].tolist())
        ok32 = new[:len(trim(a32["ids"]))] == trim(a32["ids"])
        okq4 = new[:len(trim(a["ids"]))] == trim(a["ids"])
        same_f32 += ok32
        same_q4 += okq4
        print(f"{'same' if ok32 else 'DIFFERS'}: transformers {tok.decode(new)!r}\n"
              f"      Tributary / llama.cpp F32 {a32['text']!r}")
    n = len(f32_ref["answers"])
    print(f"greedy answers: transformers = Tributary (= llama.cpp on F32 weights) on {same_f32}/{n}, "
          f"= llama.cpp on the Q4_1 file on {same_q4}/{n}")
    return 1 if bad or same_f32 != n else 0

if __name__ == "__main__":
    sys.exit(main())
