#!/usr/bin/env python3
"""Scoring methods tried offline on the features `tributary bench attribution
--dump-features DIR` writes (layout in model/src/attribution_bench/dump.rs).

It first recomputes TracIn, TracIn-cos and TracIn-ccos with numpy and checks them against
the scores the benchmark computed in Rust (so this script's AUCs are those of the same
features), then prints per-query mean AUC, min AUC and contributor top-1 (largest summed
positive score among the top 32 examples) for every method below, and, when the
benchmark ran with --lds N, each method's linear datamodeling score from the dumped
halves (Spearman across halves of the summed scores against the negated loss).

    python3 scripts/attribution/methods.py DIR [--lambdas 0.01,0.1,1]
"""
import argparse
import json
import sys

import numpy as np


def load(d):
    meta = json.load(open(f"{d}/meta.json"))
    n, dims = meta["examples"], meta["dims"]
    lrs = np.array(meta["checkpoint_lrs"])
    c = len(lrs)
    index = np.fromfile(f"{d}/index.f32", dtype="<f4").astype(np.float64).reshape(c, n, dims)
    qc = meta["query_checkpoints"]
    nq = len(meta["queries"])
    queries = np.fromfile(f"{d}/queries.f32", dtype="<f4").astype(np.float64).reshape(nq, qc, dims)
    if qc == 1 and c > 1:
        queries = np.repeat(queries, c, axis=1)
    return meta, lrs, index, queries


def auc(scores, positive):
    # Mann-Whitney U with average ranks, as attribution/src/metrics.rs.
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = positive.sum()
    neg = len(positive) - pos
    return (ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg)


def top1(scores, owners, owner, k=32):
    best = np.argsort(-scores, kind="stable")[:k]
    sums = {}
    for i in best:
        if scores[i] > 0:
            sums[owners[i]] = sums.get(owners[i], 0.0) + scores[i]
    return bool(sums) and max(sorted(sums), key=lambda o: sums[o]) == owner


def spearman(a, b):
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return np.nan if den == 0 else (ra * rb).sum() / den


def unit(x, axis=-1):
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0)


def blockwise(x, blocks, fn):
    out, start = [], 0
    for _, size in blocks:
        out.append(fn(x[..., start:start + size]))
        start += size
    return np.concatenate(out, axis=-1)


def methods(lrs, index, queries, blocks, lambdas):
    """name -> function(query [c, d]) -> scores [n]."""
    c, n, _ = index.shape
    mean = index.mean(axis=1, keepdims=True)
    cent = index - mean
    index_u, cent_u = unit(index), unit(cent)
    lw = blockwise(index, blocks, unit) / np.sqrt(len(blocks))
    out = {
        "tracin": lambda q: sum(lrs[k] * index[k] @ q[k] for k in range(c)),
        "tracin_cos": lambda q: sum(lrs[k] * index_u[k] @ unit(q[k]) for k in range(c)),
        "tracin_ccos": lambda q: sum(lrs[k] * cent_u[k] @ unit(q[k] - mean[k, 0]) for k in range(c)),
        "layer_cos": lambda q: sum(
            lrs[k] * lw[k] @ (blockwise(q[k], blocks, unit) / np.sqrt(len(blocks))) for k in range(c)),
    }
    # TRAK-style: (Φ Φᵀ + λ·mean‖g‖² I)⁻¹ Φ q per checkpoint, on raw and on unit rows.
    for name, feats in [("krr", index), ("krr_unit", index_u), ("krr_cunit", cent_u)]:
        grams = [feats[k] @ feats[k].T for k in range(c)]
        scale = [np.trace(g) / n for g in grams]
        for lam in lambdas:
            inv = [np.linalg.inv(grams[k] + lam * scale[k] * np.eye(n)) for k in range(c)]

            def f(q, feats=feats, inv=inv, centred=(name == "krr_cunit")):
                tot = 0
                for k in range(c):
                    qk = unit(q[k] - mean[k, 0]) if centred else q[k]
                    tot = tot + lrs[k] * inv[k] @ (feats[k] @ qk)
                return tot
            out[f"{name}_l{lam:g}"] = f
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--lambdas", default="0.01,0.1,1")
    args = ap.parse_args()
    meta, lrs, index, queries = load(args.dir)
    owners = meta["contributors"]
    blocks = meta["blocks"]
    lambdas = [float(x) for x in args.lambdas.split(",")]
    table = methods(lrs, index, queries, blocks, lambdas)
    if meta.get("suspects"):
        # The benchmark gives suspects (rows training fit far worse than their owner's
        # others: attribution::score::suspects) no credit.
        bad = np.array(meta["suspects"])
        table = {k: (lambda q, f=f: np.where(bad, 0.0, f(q))) for k, f in table.items()}
    # Check the numpy methods against the benchmark's own scores.
    worst = 0.0
    for qi, q in enumerate(meta["queries"]):
        rust = dict((m, np.array(s)) for m, s in q["scores"])
        for m in ("tracin", "tracin_cos", "tracin_ccos"):
            ours = table[m](queries[qi])
            err = np.abs(ours - rust[m]).max() / max(np.abs(rust[m]).max(), 1e-30)
            worst = max(worst, err)
    print(f"numpy vs benchmark scores: largest relative difference {worst:.2e}")
    if worst > 1e-3:
        sys.exit("the numpy methods do not reproduce the benchmark's scores")
    try:
        cf = json.load(open(f"{args.dir}/counterfactual.json"))
        masks = np.array(cf["masks"], dtype=float)
        losses = np.array(cf["losses"])
    except FileNotFoundError:
        masks = None
    rows = []
    names = list(table) + ["datainf", "bm25"]
    for name in names:
        aucs, tops, lds = [], [], []
        for qi, q in enumerate(meta["queries"]):
            if name in table:
                s = table[name](queries[qi])
            else:
                s = np.array(dict((m, v) for m, v in q["scores"])[name])
            positive = np.array([o == q["owner"] for o in owners])
            aucs.append(auc(s, positive))
            tops.append(top1(s, owners, q["owner"]))
            if masks is not None and len(masks) >= 2:
                lds.append(spearman(masks @ s, -losses[:, qi]))
        rows.append((name, np.mean(aucs), np.min(aucs), np.mean(tops), np.nanmean(lds) if lds else np.nan))
    print(f"{'method':<16} {'AUC':>7} {'min':>7} {'top-1':>6} {'LDS':>7}")
    for name, a, m, t, l in rows:
        print(f"{name:<16} {a:7.4f} {m:7.4f} {t:6.3f} {l:7.4f}")


if __name__ == "__main__":
    main()
