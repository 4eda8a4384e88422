"""Summarizes scripts/peers/smollm2_decode.sh: per round, ours ÷ llama.cpp (its better thread
count) for bf16 vs F16, NF4 vs Q4_1 and Q4_1 vs Q4_1 at each batch; then the median over rounds.

    python3 scripts/peers/smollm2_decode_summary.py decode.jsonl
"""

import json
import statistics
import sys

PAIRS = [("tributary-bf16", "llama-f16"), ("tributary-nf4", "llama-q4_1"), ("tributary-q4_1", "llama-q4_1")]


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    best = {}  # (round, tag, batch) -> (tokens/s, threads, load)
    for r in rows:
        res = r["result"]
        key = (r["round"], r["tag"], r["batch"])
        tps = float(res["tokens_per_s"])
        if key not in best or tps > best[key][0]:
            best[key] = (tps, res.get("threads", 2), res.get("load_avg_1m"))
    print("| pair | batch | ours tokens/s (median) | llama.cpp tokens/s (median, best thread count) | ratio per round | median ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    rounds = sorted({r["round"] for r in rows})
    for ours, peer in PAIRS:
        for batch in (1, 8):
            ratios, a, b, threads = [], [], [], []
            for rd in rounds:
                if (rd, ours, batch) in best and (rd, peer, batch) in best:
                    x, y = best[(rd, ours, batch)][0], best[(rd, peer, batch)][0]
                    a.append(x)
                    b.append(y)
                    threads.append(best[(rd, peer, batch)][1])
                    ratios.append(x / y)
            if not ratios:
                continue
            print(f"| {ours} / {peer} | {batch} | {statistics.median(a):.1f} | "
                  f"{statistics.median(b):.1f} (t={'/'.join(map(str, threads))}) | "
                  f"{', '.join(f'{q:.2f}' for q in ratios)} | **{statistics.median(ratios):.2f}×** |")
    loads = [r["result"].get("load_avg_1m") for r in rows if r["result"].get("load_avg_1m") is not None]
    if loads:
        print(f"\nload average (1 min) during the runs: {min(loads)}–{max(loads)}")


if __name__ == "__main__":
    main()
