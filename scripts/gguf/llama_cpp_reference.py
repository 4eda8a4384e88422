"""Runs llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct.Q4_1.gguf and writes its
outputs as committed test data for `model/tests/smollm2_llama_cpp.rs`:

    scripts/gguf/setup.sh --llama        # venv with gguf + llama-cpp-python (builds llama.cpp)
    ~/.cache/tributary/gguf-venv/bin/python scripts/gguf/llama_cpp_reference.py \
        "$(scripts/fetch-smollm2.sh)" [OUT_JSON]

OUT_JSON defaults to model/tests/data/smollm2/llama_cpp.json and holds:
- tokenizer: [{text, ids}] for every string of corpus.tokenizer_corpus() and every chat of
  corpus.CHATS rendered through the file's chat template (with and without the generation
  prompt); ids from `Llama.tokenize(add_bos=False, special=True)`, i.e. special tokens
  written in the text are parsed, as Tributary's tokenizer does.
- documents: for each of corpus.DOCUMENTS, its ids and, per position i, llama.cpp's top-1
  next token and the log-probability it gives the actual token i+1 (teacher forcing, one
  fresh context per document, no BOS as the file's add_bos_token is false).
- answers: greedy answers (argmax, at most 48 new tokens, stop at eos) to corpus.CHATS.
Rerun by hand when the model or llama.cpp changes; CI does not build llama.cpp.
"""

import hashlib
import json
import os
import sys

import jinja2
import llama_cpp.llama_cpp as llama_cpp_c
import numpy as np
from llama_cpp import Llama, __version__ as llama_cpp_version

# llama.cpp's "extra buffer types" (weight repacking, AMX on these Xeons) crash in
# llama_decode on this machine (a segmentation fault at the first eval); the plain CPU
# buffers work. llama-cpp-python does not expose `use_extra_bufts`, so its defaults are
# patched here.
_default_model_params = llama_cpp_c.llama_model_default_params


def _model_params():
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


llama_cpp_c.llama_model_default_params = _model_params

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EOS = 2
MAX_NEW = 48


def render(template, messages, add_generation_prompt):
    env = jinja2.Environment(loader=jinja2.BaseLoader(), keep_trailing_newline=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt)


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def main():
    model_path = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "model", "tests", "data", "smollm2", "llama_cpp.json")
    sha = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    threads = int(os.environ.get("LLAMA_THREADS", "2"))
    # KV cache in f32 (llama.cpp's default is f16): one rounding fewer between the two sides;
    # LLAMA_KV=f16 keeps llama.cpp's default.
    kv = {"f32": 0, "f16": 1}[os.environ.get("LLAMA_KV", "f32")]
    llm = Llama(model_path=model_path, n_ctx=2048, n_batch=512, logits_all=True, n_threads=threads,
                n_threads_batch=threads, verbose=False, type_k=kv, type_v=kv)
    template = llm.metadata["tokenizer.chat_template"]

    def tok(text):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    tokenizer = [{"text": t, "ids": tok(t)} for t in corpus.tokenizer_corpus()]
    for chat in corpus.CHATS:
        for gen in (False, True):
            text = render(template, chat, gen)
            tokenizer.append({"text": text, "ids": tok(text)})

    documents = []
    for text in corpus.DOCUMENTS:
        ids = tok(text)
        llm.reset()
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        lp = log_softmax(scores)
        top1 = lp.argmax(axis=-1)
        nxt = [float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1)]
        documents.append({"text": text, "ids": ids, "top1": [int(t) for t in top1[:-1]],
                          "logprob_next": [round(v, 5) for v in nxt]})
        print(f"document: {len(ids)} tokens, ppl {np.exp(-np.mean(nxt)):.3f}", file=sys.stderr)

    answers = []
    for chat in corpus.CHATS:
        prompt = tok(render(template, chat, True))
        llm.reset()
        llm.eval(prompt)
        new = []
        for _ in range(MAX_NEW):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if nxt == EOS:
                break
            new.append(nxt)
            llm.eval([nxt])
        answers.append({"messages": chat, "prompt_ids": prompt, "ids": new,
                        "text": llm.detokenize(new).decode("utf-8", errors="replace")})
        print(f"answer: {answers[-1]['text']!r}", file=sys.stderr)

    n_pos = sum(len(d["top1"]) for d in documents)
    result = {
        "llama_cpp_python": llama_cpp_version,
        "model_sha256": sha,
        "threads": threads,
        "kv_cache": os.environ.get("LLAMA_KV", "f32"),
        "tokenizer": tokenizer,
        "documents": documents,
        "answers": answers,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, separators=(",", ":"))
    print(f"{len(tokenizer)} tokenizer strings, {len(documents)} documents ({n_pos} positions), "
          f"{len(answers)} answers -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
