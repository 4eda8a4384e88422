"""A closed-loop load client for comparing two servers on the same model and adapter:
`tributary dev` (OpenAI `/v1/completions`) and llama.cpp's `llama-server` (`/completion`).

    python serve_client.py --server tributary --url http://127.0.0.1:7466 --key KEY \
        --models a0,a1 --concurrency 16 --requests 64 --prompt-tokens 32 --max-tokens 128
    python serve_client.py --server llama --url http://127.0.0.1:8080 --loras 4 ...

C client threads each send one request, wait for the whole answer, and send the next, until
`--requests` are done (a closed loop at concurrency C, as `llama-server --parallel C` serves).
Requests are non-streaming and greedy. Request i names adapter i mod len(models) (llama:
LoRA id i mod --loras at scale 1, the others at scale 0; `--loras 0` runs the base).

Both sides generate exactly `--max-tokens` tokens: llama-server is asked with `ignore_eos`;
tributary's answers are counted from `usage.completion_tokens` (the random bench model almost
never samples its end token; the count is checked, not assumed). Prompts: llama-server takes
token ids (the bench GGUF's vocabulary is a placeholder one); tributary takes text whose
`usage.prompt_tokens` is reported, so both prompt lengths are printed.

Prints one JSON line: requests, wall seconds, output tokens/s, req/s, latency p50/p90/p99,
prompt and completion tokens per request (min/max), errors.
"""

import argparse
import http.client
import json
import random
import statistics
import sys
import threading
import time
import urllib.parse


def post(conn, path, body, headers):
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
    return json.loads(data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", choices=["tributary", "llama"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="")
    p.add_argument("--models", default="", help="tributary: comma-separated model names, one per request in turn")
    p.add_argument("--loras", type=int, default=1, help="llama: how many --lora files the server holds (0: base)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=32000, help="llama: prompt ids are drawn below this")
    p.add_argument("--tokenizer-json", default="", help="tributary: draw prompt words that are one token each in this tokenizer.json")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tag", default="")
    a = p.parse_args()

    url = urllib.parse.urlparse(a.url)
    rng = random.Random(a.seed)
    words = ["river", "stone", "delta", "basin", "current", "bank", "flow", "source", "mouth", "reach"]
    if a.tokenizer_json:
        # Whole words that are one token each in the server's tokenizer, so a prompt of N
        # words is N tokens, as llama-server's N token ids are (checked: both lengths print).
        vocab = json.load(open(a.tokenizer_json))["model"]["vocab"]
        words = sorted(k[1:] for k in vocab if k.startswith("\u0120") and k[1:].isalpha() and len(k) >= 5)
    bodies = []
    models = [m for m in a.models.split(",") if m]
    for i in range(a.requests):
        if a.server == "tributary":
            prompt = " ".join(rng.choice(words) for _ in range(a.prompt_tokens))
            bodies.append(("/v1/completions", {
                "model": models[i % len(models)],
                "prompt": prompt,
                "max_tokens": a.max_tokens,
                "temperature": 0,
            }))
        else:
            # Ids above the byte tokens (3..258) of the placeholder vocabulary, never the
            # special ones.
            prompt = [rng.randrange(259, a.vocab) for _ in range(a.prompt_tokens)]
            body = {
                "prompt": prompt,
                "n_predict": a.max_tokens,
                "ignore_eos": True,
                "temperature": 0,
                "cache_prompt": False,
            }
            if a.loras > 0:
                pick = i % a.loras
                body["lora"] = [{"id": j, "scale": 1.0 if j == pick else 0.0} for j in range(a.loras)]
            bodies.append(("/completion", body))

    headers = {"Content-Type": "application/json"}
    if a.key:
        headers["Authorization"] = f"Bearer {a.key}"
    lock = threading.Lock()
    next_i = [0]
    lat, prompt_toks, out_toks, errors = [], [], [], []

    def client():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
        while True:
            with lock:
                i = next_i[0]
                if i >= len(bodies):
                    return
                next_i[0] += 1
            path, body = bodies[i]
            t0 = time.monotonic()
            try:
                r = post(conn, path, body, headers)
            except Exception as e:  # noqa: BLE001 - every failure is counted and printed
                with lock:
                    errors.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
                continue
            dt = time.monotonic() - t0
            if a.server == "tributary":
                pt, ct = r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]
            else:
                pt, ct = r["tokens_evaluated"], r["tokens_predicted"]
            with lock:
                lat.append(dt)
                prompt_toks.append(pt)
                out_toks.append(ct)

    threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    out = {
        "tag": a.tag,
        "server": a.server,
        "concurrency": a.concurrency,
        "requests": len(lat),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "output_tokens_per_s": round(sum(out_toks) / wall, 2),
        "req_per_s": round(len(lat) / wall, 3),
        "latency_p50_s": pct(0.5),
        "latency_p90_s": pct(0.9),
        "latency_p99_s": pct(0.99),
        "prompt_tokens": [min(prompt_toks), max(prompt_toks)] if prompt_toks else None,
        "completion_tokens": [min(out_toks), max(out_toks)] if out_toks else None,
        "completion_tokens_mean": statistics.mean(out_toks) if out_toks else None,
    }
    print(json.dumps(out))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
