"""Checks a directory written by `tributary model import` with the Hugging Face libraries:
transformers' AutoConfig and AutoTokenizer load it, the tokenizer gives llama.cpp's ids on
the committed corpus (model/tests/data/smollm2/llama_cpp.json), and the chat template
renders through transformers' apply_chat_template. With torch installed (the 4.6 GB
scripts/peers venv), the model loads too and its greedy answers are printed.

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
    model = AutoModelForCausalLM.from_pretrained(d)
    for a in ref["answers"][:3]:
        ids = torch.tensor([a["prompt_ids"]])
        out = model.generate(ids, max_new_tokens=len(a["ids"]) or 1, do_sample=False)
        new = out[0, ids.shape[1]:].tolist()
        print(f"transformers: {tok.decode(new)!r}\nllama.cpp:    {a['text']!r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
