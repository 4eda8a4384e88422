"""Gathers the GPU check's outputs ($OUT/bench.jsonl, fixtures.log, gpu.txt) into one JSON
object on stdout: the card, the wgpu adapter, the fixture checks, every bench line, and
tributary-on-wgpu / PyTorch+PEFT-on-CUDA ratios of tokens/s taken within this one run.

    python3 scripts/gpu/summarize.py --out $OUT --fixtures-rc 0 --expect hardware
"""

import argparse
import datetime
import json
import os
import re


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--fixtures-rc", type=int, required=True)
    p.add_argument("--expect", default="hardware")
    a = p.parse_args()

    def read(name):
        path = os.path.join(a.out, name)
        return open(path).read() if os.path.exists(path) else ""

    fixtures_log = read("fixtures.log")
    adapter = re.search(r"wgpu fixtures on (.*)", fixtures_log)
    diffs = re.findall(r"^wgpu (tiny-.*)$", fixtures_log, re.M)
    seconds = dict(re.findall(r"^(device check|logits|greedy|train step): ([0-9.]+) s$", fixtures_log, re.M))
    result = re.search(r"^test result: (.*)$", fixtures_log, re.M)
    runs = [json.loads(line) for line in read("bench.jsonl").splitlines() if line.strip()]
    by_tag = {r["tag"]: r.get("result") for r in runs}
    ratios = {}
    for tag, res in by_tag.items():
        if not tag.startswith("tributary-") or not res:
            continue
        peer = by_tag.get("torch-" + tag[len("tributary-"):])
        if peer and peer.get("tokens_per_s"):
            ratios[tag[len("tributary-"):]] = res["tokens_per_s"] / peer["tokens_per_s"]
    print(json.dumps({
        "check": "scripts/gpu/check.sh",
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpu": read("gpu.txt").strip(),
        "wgpu_adapter": adapter.group(1) if adapter else None,
        "expect": a.expect,
        "fixtures": {
            "passed": a.fixtures_rc == 0,
            "exit": a.fixtures_rc,
            "result": result.group(1) if result else None,
            "max_differences": diffs,
            "seconds": {k: float(v) for k, v in seconds.items()},
        },
        "runs": runs,
        "tributary_over_torch_tokens_per_s": ratios,
    }, indent=1))


if __name__ == "__main__":
    main()
