"""Checks of the manifests and the chart: yamllint, schema validation of every render, the
values schema, and agreement between the chart and deploy/k8s/base."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import yaml

from deploycheck_common import (
    CHART,
    K8S_VERSIONS,
    K8S,
    OVERLAYS,
    ROOT,
    VENV_BIN,
    fail,
    kustomize,
    chart_values_files,
    render_chart,
    run,
    validate,
)


def check_lint() -> str:
    files = sorted(K8S.rglob("*.yaml")) + [CHART / "Chart.yaml", CHART / "values.yaml"]
    files += sorted((CHART / "ci").glob("*.yaml"))
    config = ROOT / "deploy" / "yamllint.yaml"
    p = run([str(VENV_BIN / "yamllint"), "-c", str(config), "--strict", *map(str, files)])
    if p.returncode != 0:
        fail(f"yamllint:\n{p.stdout}{p.stderr}")
    return f"{len(files)} YAML files lint clean"


def check_kustomize() -> str:
    n = 0
    for o in OVERLAYS:
        docs = kustomize(o)
        if not docs:
            fail(f"{o} rendered nothing")
        n += validate(docs, o)
    return f"{len(OVERLAYS)} overlays, {n} resources valid against Kubernetes {K8S_VERSIONS}"


def check_chart() -> str:
    import helm_python

    report = helm_python.lint(str(CHART), strict=True)
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or bad:
        fail(f"helm lint --strict: {report}")
    cargo = (ROOT / "Cargo.toml").read_text()
    version = re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', cargo)
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    if not version or chart_meta["appVersion"] != version.group(1):
        fail(f"Chart.yaml appVersion {chart_meta['appVersion']} is not the workspace version {version and version.group(1)}")
    schema = CHART / "values.schema.json"
    cj = str(VENV_BIN / "check-jsonschema")
    files = [CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]
    p = run([cj, "--schemafile", str(schema), *map(str, files)])
    if p.returncode != 0:
        fail(f"check-jsonschema:\n{p.stdout}{p.stderr}")
    # The schema must refuse what it does not describe, so it covers every value.
    with tempfile.TemporaryDirectory() as tmp:
        for bad_values, needle in (
            ({"worker": {"slotz": 2}}, "slotz"),
            ({"ports": {"http": 0}}, "0"),
            ({"etcd": {"endpoints": ["etcd:2379"]}}, "etcd:2379"),
            ({"tls": {"generate": {"maxWorkers": 0}}}, "0"),
        ):
            f = Path(tmp) / "bad.yaml"
            f.write_text(yaml.safe_dump(bad_values))
            p = run([cj, "--schemafile", str(schema), str(f)])
            if p.returncode == 0 or needle not in p.stdout + p.stderr:
                fail(f"values.schema.json accepted {bad_values}: {p.stdout}{p.stderr}")
    n = 0
    for vf in chart_values_files():
        n += validate(render_chart(vf), f"chart with {vf.name if vf else 'default values'}")
    return f"lint clean, {len(files)} values files valid, {n} rendered resources valid"


def _env(container: dict, configmaps: dict) -> dict:
    env = {}
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]])
    # Where etcd and the store are differs by design (a ConfigMap placeholder in the base,
    # values in the chart): compare that they are set, not what to.
    for k in ("TRIBUTARY_ETCD", "TRIBUTARY_STORE"):
        if k in env:
            env[k] = "<set>"
    return env


def _container(c: dict, configmaps: dict) -> dict:
    return {
        "image": c["image"],
        "command": c.get("command"),
        "args": c.get("args"),
        "env": _env(c, configmaps),
        "secrets": sorted(s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s),
        "ports": sorted((p["name"], p["containerPort"], p.get("protocol", "TCP")) for p in c.get("ports", [])),
        "probes": {k: c.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")},
        "lifecycle": c.get("lifecycle"),
        "resources": c.get("resources"),
        "securityContext": c.get("securityContext"),
        "mounts": sorted((m["name"], m["mountPath"], m.get("readOnly", False)) for m in c.get("volumeMounts", [])),
    }


def facts(docs: list[dict]) -> dict:
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    out: dict = {}
    for d in docs:
        kind, name, spec = d["kind"], d["metadata"]["name"], d.get("spec", {})
        if kind in ("StatefulSet", "Deployment"):
            pod = spec["template"]["spec"]
            out[f"{kind}/{name}"] = {
                "replicas": spec.get("replicas"),
                "serviceName": spec.get("serviceName"),
                "podManagementPolicy": spec.get("podManagementPolicy"),
                "annotations": spec["template"]["metadata"].get("annotations"),
                "serviceAccount": (pod.get("serviceAccountName"), pod.get("automountServiceAccountToken")),
                "grace": pod.get("terminationGracePeriodSeconds"),
                "securityContext": pod.get("securityContext"),
                "init": [_container(c, configmaps) for c in pod.get("initContainers", [])],
                "containers": [_container(c, configmaps) for c in pod["containers"]],
                "volumes": sorted(json.dumps(v, sort_keys=True) for v in pod.get("volumes", [])),
                "claims": [(c["metadata"]["name"], c["spec"]) for c in spec.get("volumeClaimTemplates", [])],
            }
        elif kind == "Service":
            out[f"Service/{name}"] = {
                "clusterIP": spec.get("clusterIP"),
                "publishNotReadyAddresses": spec.get("publishNotReadyAddresses"),
                "ports": spec["ports"],
                "component": spec["selector"].get("app.kubernetes.io/component"),
                "scrape": d["metadata"].get("labels", {}).get("tributary.dev/scrape"),
            }
        elif kind == "PodDisruptionBudget":
            out[f"PDB/{name}"] = {k: v for k, v in spec.items() if k != "selector"}
        elif kind == "NetworkPolicy":
            out[f"NetworkPolicy/{name}"] = {
                "component": spec["podSelector"]["matchLabels"].get("app.kubernetes.io/component"),
                "policyTypes": spec.get("policyTypes"),
                "ports": [r.get("ports") for r in spec.get("ingress", [])],
                "from": [
                    [f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") for f in r.get("from", [])]
                    for r in spec.get("ingress", [])
                ],
            }
        elif kind == "ServiceAccount":
            out[f"ServiceAccount/{name}"] = {"automount": d.get("automountServiceAccountToken")}
    return out


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}/{k}: only in the chart: {b[k]!r}"[:300])
            elif k not in b:
                out.append(f"{path}/{k}: only in deploy/k8s/base: {a[k]!r}"[:300])
            else:
                out += _diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [x for i, (p, q) in enumerate(zip(a, b)) for x in _diff(p, q, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: base {a!r} != chart {b!r}"[:400]]


def check_agree() -> str:
    base = facts(kustomize("base"))
    chart = facts(render_chart(None))
    diffs = _diff(base, chart)
    if diffs:
        fail("the chart and deploy/k8s/base disagree:\n" + "\n".join(diffs))
    return f"{len(base)} resources agree (images, ports, probes, env, volumes, Services, PDBs, policies)"
