"""What the deploy checks share: paths, rendering (kustomize, the chart), Kubernetes schema
validation, small HTTP and process helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CHART = ROOT / "helm" / "tributary"
DASHBOARD = ROOT / "deploy" / "grafana" / "tributary.json"
VENV_BIN = Path(sys.executable).parent

# Kubernetes versions the manifests are validated against (the chart's kubeVersion floor is
# 1.25; kubectl on the machines is 1.32).
K8S_VERSIONS = ["1.27.0", "1.32.0"]
# Custom resources the Kubernetes schemas do not know; anything else unknown is an error.
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
OVERLAYS = ["base", "overlays/dev", "overlays/production"]


class CheckFailed(Exception):
    pass


def fail(msg: str) -> None:
    raise CheckFailed(msg)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def kustomize(overlay: str) -> list[dict]:
    if shutil.which("kubectl") is None:
        fail("kubectl is not installed (kubectl kustomize renders the overlays; it is on the machine image)")
    p = run(["kubectl", "kustomize", str(K8S / overlay)])
    if p.returncode != 0:
        fail(f"kubectl kustomize {overlay} failed:\n{p.stderr}")
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def chart_values_files() -> list[Path | None]:
    return [None, *sorted((CHART / "ci").glob("*.yaml"))]


def render_chart(values_file: Path | None) -> list[dict]:
    import helm_python

    values = yaml.safe_load(values_file.read_text()) if values_file else None
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(values, name="tributary", namespace="tributary")
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def validate(docs: list[dict], what: str) -> int:
    import kubernetes_validate

    errors = []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        name = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                if key not in CRD_KINDS:
                    errors.append(f"{what}: {name}: no schema for {key} (not a known CRD)")
                elif not d.get("spec"):
                    errors.append(f"{what}: {name}: custom resource without a spec")
                break
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{what}: {name} (Kubernetes {v}): {e.message} at {list(e.path)}")
    if errors:
        fail("\n".join(errors))
    return len(docs)


def help_text(binary: str, role: str) -> str | None:
    p = run([binary, role, "--help"])
    return p.stdout if p.returncode == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (held open together while chosen, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def certs_init_script(docs: list[dict]) -> str:
    scripts = {
        c["args"][0]
        for d in docs
        if d["kind"] in ("StatefulSet", "Deployment")
        for c in d["spec"]["template"]["spec"].get("initContainers", [])
        if c["name"] == "certs"
    }
    if len(scripts) != 1:
        fail(f"expected one certs init script, found {len(scripts)}")
    return scripts.pop()


def run_certs_init(script: str, tls: Path, certs: Path, name: str) -> None:
    script = script.replace("/tls/", f"{tls}/").replace("/certs/", f"{certs}/")
    p = run(["/bin/sh", "-c", script], env={**os.environ, "TRIBUTARY_NAME": name})
    if p.returncode != 0:
        fail(f"certs init script failed for {tls}:\n{p.stderr}")
