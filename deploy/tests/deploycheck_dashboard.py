"""The Grafana dashboard against the code: every metric it queries is registered in the Rust
sources, or listed as expected from open work."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from deploycheck_common import (
    DASHBOARD,
    ROOT,
    fail,
)

# Metrics the dashboard queries that other work of this session adds (branches serve, engine,
# attrib). Empty this list after merging: the dashboard check fails for any listed metric the
# code already registers, and for any metric neither registered nor listed.
EXPECTED_FROM_OPEN_WORK: set[str] = set()


def registered_metrics() -> set[str]:
    """Metric names registered in the Rust sources (string literals in files using prometheus)."""
    names = set()
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in ("target", "tests", ".git", "node_modules") and not d.startswith(".")]
        for f in files:
            if not f.endswith(".rs"):
                continue
            text = (Path(top) / f).read_text(errors="replace")
            if "prometheus" in text:
                names |= set(re.findall(r'"(tributary_[a-z0-9_]+)"', text))
    return names


def dashboard_metrics(dash: dict) -> set[str]:
    exprs = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("expr", "query", "definition") and isinstance(v, str):
                    exprs.append(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(dash)
    return {m for e in exprs for m in re.findall(r"\b(tributary_[a-z0-9_]+)", e)}


def check_dashboard() -> str:
    dash = json.loads(DASHBOARD.read_text())
    code = registered_metrics()
    if "tributary_jobs" not in code:
        fail(f"found no metrics in the sources (got {sorted(code)})")
    used = dashboard_metrics(dash)
    unknown, expected = [], set()
    for m in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        if m in code or base in code:
            continue
        if m in EXPECTED_FROM_OPEN_WORK or base in EXPECTED_FROM_OPEN_WORK:
            expected.add(base if base in EXPECTED_FROM_OPEN_WORK else m)
            continue
        unknown.append(m)
    if unknown:
        fail(f"the dashboard queries metrics the code does not export: {unknown}")
    stale = sorted(EXPECTED_FROM_OPEN_WORK & code)
    if stale:
        fail(f"now exported by the code, remove from EXPECTED_FROM_OPEN_WORK in {__file__}: {stale}")
    unused = sorted(EXPECTED_FROM_OPEN_WORK - expected)
    if unused:
        fail(f"EXPECTED_FROM_OPEN_WORK lists metrics the dashboard does not query: {unused}")
    if not any(p.get("type") == "row" for p in dash.get("panels", [])):
        fail("the dashboard has no rows")
    return f"{len(used)} metrics queried: {len(used) - len(expected)} exported now, {len(expected)} expected from open work"
