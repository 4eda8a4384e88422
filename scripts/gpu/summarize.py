"""Gathers the GPU check's outputs ($OUT/bench.jsonl, fixtures-B.log, gpu.txt) into one JSON
object on stdout: the card, the device each backend ran on, the fixture checks per backend
(fixtures-B.log, fixtures-B.rc), every bench line, and tributary-on-B / PyTorch+PEFT-on-CUDA
ratios of tokens/s taken within this one run (tag tributary-B-WHAT against torch-WHAT).

    python3 scripts/gpu/summarize.py --out $OUT --backends "cuda wgpu" --expect hardware
"""

import argparse
import datetime
import json
import os
import re


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--backends", default="cuda wgpu")
    p.add_argument("--expect", default="hardware")
    a = p.parse_args()

    def read(name):
        path = os.path.join(a.out, name)
        return open(path).read() if os.path.exists(path) else ""

    fixtures = {}
    for b in a.backends.split():
        log = read(f"fixtures-{b}.log")
        rc = read(f"fixtures-{b}.rc").strip()
        device = re.search(r"fixtures on (.*)", log)
        result = re.search(r"^test result: (.*)$", log, re.M)
        fixtures[b] = {
            "passed": rc == "0",
            "exit": int(rc) if rc.lstrip("-").isdigit() else None,
            "device": device.group(1) if device else None,
            "result": result.group(1) if result else None,
            "max_differences": re.findall(r"^wgpu (tiny-.*)$", log, re.M),
            "seconds": {k: float(v) for k, v in re.findall(
                r"^(device check|logits|greedy|train step): ([0-9.]+) s$", log, re.M)},
        }
    runs = [json.loads(line) for line in read("bench.jsonl").splitlines() if line.strip()]
    by_tag = {r["tag"]: r.get("result") for r in runs}
    ratios = {}
    for tag, res in by_tag.items():
        parts = tag.split("-", 2)
        if len(parts) < 3 or parts[0] != "tributary" or not res:
            continue
        peer = by_tag.get("torch-" + parts[2])
        if peer and peer.get("tokens_per_s"):
            ratios[parts[1] + "-" + parts[2]] = res["tokens_per_s"] / peer["tokens_per_s"]
    print(json.dumps({
        "check": "scripts/gpu/check.sh",
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": read("gpu.txt").strip(),
        "expect": a.expect,
        "fixtures": fixtures,
        "runs": runs,
        "tributary_over_torch_tokens_per_s": ratios,
    }, indent=1))


if __name__ == "__main__":
    main()
