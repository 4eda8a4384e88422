"""Summarizes run.sh's JSON lines: median tokens/s per benchmark, and issue 3's ratios taken
within each round (so both sides of a ratio ran minutes apart, under the same load). A peer
that ran with several thread counts (tags ending in -t1, -t2, ...) counts with its best
result of the round.

    python summarize.py peers.jsonl
"""

import json
import re
import statistics
import sys
from collections import defaultdict

# (label, numerator tag, denominator tag, issue 3's target)
RATIOS = [
    ("training: Tributary bf16 / PyTorch+PEFT f32", "tributary-train", "torch-train", ">= 2.5 (issue 19)"),
    ("training: Tributary bf16 / PyTorch+PEFT autocast bf16", "tributary-train", "torch-train-autocast", ">= 1.25 (issue 19)"),
    ("training: Tributary f32 / PyTorch+PEFT f32", "tributary-train-f32", "torch-train", ">= 1.25"),
    ("training: Tributary bf16 / Tributary f32", "tributary-train", "tributary-train-f32", ""),
    ("batch 1 + adapter, f32: Tributary f32-packed / llama.cpp f32", "tributary-g1-f32packed", "llamacpp-g1-f32", ">= 1.1"),
    ("batch 1 + adapter, 16-bit: Tributary bf16 / llama.cpp f16", "tributary-g1-bf16", "llamacpp-g1-f16", ">= 1.0"),
    ("batch 1 + adapter: Tributary f32-packed / PyTorch+PEFT", "tributary-g1-f32packed", "torch-g1", ""),
    ("batch 1, no adapter, f32: Tributary / llama.cpp", "tributary-g1a0-f32packed", "llamacpp-g1a0-f32", ""),
    ("batch 1, no adapter, 16-bit: Tributary bf16 / llama.cpp f16", "tributary-g1a0-bf16", "llamacpp-g1a0-f16", ""),
    ("batch 8 + adapter: Tributary bf16 / PyTorch+PEFT", "tributary-g8-bf16", "torch-g8", ""),
    ("8 adapters / 1 adapter, batch 8: Tributary bf16", "tributary-g8x8-bf16", "tributary-g8-bf16", ">= 0.9"),
    ("8 adapters / 1 adapter, batch 8: Tributary f32-packed", "tributary-g8x8-f32packed", "tributary-g8-f32packed", ">= 0.9"),
    ("8 adapters / 1 adapter, batch 8: PyTorch+PEFT", "torch-g8x8", "torch-g8", ""),
]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py FILE.jsonl")
    by_round = defaultdict(dict)
    speeds = defaultdict(list)
    loads = []
    errors = []
    with open(sys.argv[1]) as f:
        for line in f:
            rec = json.loads(line)
            res = rec["result"]
            if "error" in res:
                errors.append(f"round {rec['round']} {rec['tag']}: {res['error'][-200:]}")
                continue
            base = re.sub(r"-t[0-9]+$", "", rec["tag"])
            key = (rec.get("run", ""), rec["round"])
            best = by_round[key].get(base, 0.0)
            by_round[key][base] = max(best, res["tokens_per_s"])
            speeds[rec["tag"]].append(res["tokens_per_s"])
            if res.get("load_avg_1m") is not None:
                loads.append(res["load_avg_1m"])
    print("| benchmark | tokens/s, median (min–max) | runs |")
    print("| --- | --- | --- |")
    for tag, v in speeds.items():
        print(f"| {tag} | {statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f}) | {len(v)} |")
    print()
    print("| ratio (same round; a peer at its best thread count) | median | per round | target |")
    print("| --- | --- | --- | --- |")
    for label, num, den, target in RATIOS:
        per = [r[num] / r[den] for _, r in sorted(by_round.items()) if num in r and den in r and r[den] > 0]
        if per:
            rounds = ", ".join(f"{x:.2f}" for x in per)
            print(f"| {label} | {statistics.median(per):.2f} | {rounds} | {target} |")
    if loads:
        print(f"\nload average (1 min) during the runs: {min(loads):.2f}–{max(loads):.2f}")
    for e in errors:
        print("error:", e)


if __name__ == "__main__":
    main()
