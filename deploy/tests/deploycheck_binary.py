"""The manifests against the binary: ports, env variable names and probe/metrics paths from
its --help and source, served by a live `tributary dev`; version skew of job specs; the certs
init script on both Secret layouts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploycheck_common import (
    OVERLAYS,
    ROOT,
    certs_init_script,
    chart_values_files,
    fail,
    free_port,
    help_text,
    http_get,
    kustomize,
    render_chart,
    run,
    run_certs_init,
)

# Environment variables the manifests set that the binary does not read yet (none now: the
# etcd client TLS variables of etcd.tls.* are read since `--etcd-ca/--etcd-cert/--etcd-key`).
EXPECTED_ENV_FROM_OPEN_WORK: set[str] = set()


def _default_port(help_text: str, flag: str) -> int:
    m = re.search(rf"--{flag} <[A-Z_]+>.*?\[default: [^\]]*:(\d+)\]", help_text, re.S)
    if not m:
        fail(f"no default port for --{flag} in:\n{help_text}")
    return int(m.group(1))


def _routes() -> set[str]:
    """The operator routes every process serves, from the source (gateway/src/ops.rs)."""
    src = (ROOT / "gateway" / "src" / "ops.rs").read_text()
    routes = set(re.findall(r'\.route\("(/[a-z]+)"', src))
    if not {"/healthz", "/readyz", "/metrics"} <= routes:
        fail(f"gateway/src/ops.rs serves {routes}")
    return routes


def _check_serving(what: str, docs: list[dict], c: dict, port: tuple, default: int) -> None:
    """A serving worker: its inference port is --serve-listen's, the env points the binary at
    it, and the workers' NetworkPolicy lets gateway pods reach it over UDP."""
    if port != (default, "UDP"):
        fail(f"{what}: worker serve port {port}, --serve-listen defaults to {default}/UDP")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    for k in ("TRIBUTARY_BASE_MODEL", "TRIBUTARY_SERVE_LISTEN", "TRIBUTARY_SERVE_ADVERTISE"):
        if not env.get(k):
            fail(f"{what}: a serving worker without {k}")
    for k in ("TRIBUTARY_SERVE_LISTEN", "TRIBUTARY_SERVE_ADVERTISE"):
        if env[k].rsplit(":", 1)[-1] != str(port[0]):
            fail(f"{what}: {k}={env[k]}, the serve port is {port[0]}")
    policies = [
        d for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") == "worker"
    ]
    for pol in policies:
        allowed = any(
            {"port": port[0], "protocol": "UDP"} in (r.get("ports") or [])
            and any(
                f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "gateway"
                for f in r.get("from", [])
            )
            for r in pol["spec"].get("ingress", [])
        )
        if not allowed:
            fail(f"{what}: NetworkPolicy {pol['metadata']['name']} does not let gateways reach {port[0]}/UDP on workers")


def check_binary(binary: str) -> str:
    helps = {r: help_text(binary, r) for r in ("dev", "coordinator", "worker", "gateway")}
    for r in ("dev", "coordinator", "worker"):
        if helps[r] is None:
            fail(f"{binary} {r} --help failed")
    http_port = _default_port(helps["dev"], "http")
    quic_port = _default_port(helps["worker"], "listen")
    serve_port = _default_port(helps["worker"], "serve-listen")
    routes = _routes()
    renders = {o: kustomize(o) for o in OVERLAYS}
    renders |= {f"chart {vf.name if vf else 'defaults'}": render_chart(vf) for vf in chart_values_files()}
    probe_paths, metric_paths, serving = set(), set(), set()
    for what, docs in renders.items():
        for d in docs:
            if d["kind"] == "ServiceMonitor":
                metric_paths |= {e["path"] for e in d["spec"]["endpoints"]}
            if d["kind"] not in ("StatefulSet", "Deployment"):
                continue
            meta = d["spec"]["template"]["metadata"]
            role = meta["labels"].get("app.kubernetes.io/component")
            if role not in ("coordinator", "worker", "gateway"):
                continue
            ann = meta.get("annotations") or {}
            if "prometheus.io/path" in ann:
                metric_paths.add(ann["prometheus.io/path"])
                if ann.get("prometheus.io/port") != str(http_port):
                    fail(f"{what}: {d['metadata']['name']} scrapes port {ann.get('prometheus.io/port')}, HTTP is {http_port}")
            c = d["spec"]["template"]["spec"]["containers"][0]
            ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}
            if ports.get("http") != (http_port, "TCP"):
                fail(f"{what}: {role} http port {ports.get('http')}, the binary's default is {http_port}/TCP")
            if role == "worker" and ports.get("quic") != (quic_port, "UDP"):
                fail(f"{what}: worker quic port {ports.get('quic')}, --listen defaults to {quic_port}/UDP")
            if role == "worker" and "serve" in ports:
                _check_serving(what, docs, c, ports["serve"], serve_port)
                serving.add(what)
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if env.get("TRIBUTARY_HTTP", "").rsplit(":", 1)[-1] != str(http_port):
                fail(f"{what}: {role} TRIBUTARY_HTTP={env.get('TRIBUTARY_HTTP')}")
            if helps[role] is None:
                # A role this binary lacks: the chart must keep it off by default.
                if what == "chart defaults":
                    fail("the chart enables the gateway by default, but the binary has no `gateway` role")
                continue
            if c["args"] != [role]:
                fail(f"{what}: {role} runs {c['args']}")
            known = set(re.findall(r"\[env: (TRIBUTARY_[A-Z_]+)=", helps[role]))
            unknown = {k for k in env if k.startswith("TRIBUTARY_")} - known - EXPECTED_ENV_FROM_OPEN_WORK
            if unknown:
                fail(f"{what}: {role} sets {sorted(unknown)}, which `tributary {role}` does not read ({sorted(known)})")
            for kind, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = c[kind]["httpGet"]
                if got["path"] != path or got["port"] != "http":
                    fail(f"{what}: {role} {kind} is {got}, want {path} on port http")
                probe_paths.add(got["path"])
    # The shared ConfigMap's keys reach both roles.
    both = set(re.findall(r"\[env: (TRIBUTARY_[A-Z_]+)=", helps["coordinator"])) & set(
        re.findall(r"\[env: (TRIBUTARY_[A-Z_]+)=", helps["worker"])
    )
    for what, docs in renders.items():
        for d in docs:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("tributary-config"):
                if not set(d.get("data", {})) <= both:
                    fail(f"{what}: ConfigMap keys {sorted(set(d['data']) - both)} are not read by both roles")
    stale = EXPECTED_ENV_FROM_OPEN_WORK & set(re.findall(r"\[env: (TRIBUTARY_[A-Z_]+)=", helps["coordinator"]))
    if stale:
        fail(f"the binary now reads {sorted(stale)}: remove them from EXPECTED_ENV_FROM_OPEN_WORK")
    if not serving:
        fail("no render configures serving workers (ci/all-features-values.yaml should)")
    if not (probe_paths | metric_paths) <= routes:
        fail(f"manifests use {sorted(probe_paths | metric_paths)}, the code serves {sorted(routes)}")

    # The paths answer on a running process.
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = subprocess.Popen(
            [binary, "dev", "--data-dir", tmp, "--workers", "1", "--http", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    fail(f"tributary dev did not come up: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)
            # Version skew: a spec with a key this release does not know is refused cleanly,
            # naming the key (docs/operations.md, Upgrading).
            headers = {"Content-Type": "application/toml"}
            admin_key = Path(tmp) / "admin.key"  # dev makes one once API keys exist
            if admin_key.exists():
                headers["Authorization"] = f"Bearer {admin_key.read_text().strip()}"
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/jobs",
                data=b'base_model = "builtin:linear"\ndata = "synthetic"\npriority = 3\n',
                method="POST",
                headers=headers,
            )
            try:
                urllib.request.urlopen(req, timeout=10)
                fail("a spec with an unknown key was accepted")
            except urllib.error.HTTPError as e:
                body = json.loads(e.read())
                if e.code != 400 or body.get("error", {}).get("param") != "priority":
                    fail(f"a spec with an unknown key: {e.code} {body}")
            for path in sorted(probe_paths | metric_paths):
                status, body = http_get(f"http://127.0.0.1:{port}{path}")
                if status != 200:
                    fail(f"GET {path} on tributary dev: {status} {body[:200]}")
                if path in metric_paths and "# TYPE tributary_" not in body:
                    fail(f"GET {path} is not Prometheus text with tributary_ metrics: {body[:200]}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                fail("tributary dev did not exit within 20 s of SIGTERM")

        # Both Secret layouts become what `--certs DIR` reads.
        script = certs_init_script(renders["base"])
        src = Path(tmp) / "tributary-certs"
        name = "tributary-worker-0"
        for args in (["certs", "init", "--out", str(src)], ["certs", "issue", "--name", name, "--dir", str(src)]):
            p = run([binary, *args])
            if p.returncode != 0:
                fail(f"tributary {' '.join(args)}: {p.stderr}")
        (src / "ca.key").unlink()  # never in the Secret
        cm = Path(tmp) / "cert-manager"
        cm.mkdir()
        shutil.copy(src / "ca.pem", cm / "ca.crt")
        shutil.copy(src / f"{name}.pem", cm / "tls.crt")
        shutil.copy(src / f"{name}.key", cm / "tls.key")
        for layout in (src, cm):
            out = Path(tmp) / f"out-{layout.name}"
            out.mkdir()
            run_certs_init(script, layout, out, name)
            got = sorted(f.name for f in out.iterdir())
            want = sorted(["ca.pem", f"{name}.pem", f"{name}.key"])
            if got != want:
                fail(f"certs init from {layout.name}: {got}, `--certs DIR` reads {want}")
            if (out / f"{name}.pem").read_bytes() != (src / f"{name}.pem").read_bytes():
                fail(f"certs init from {layout.name}: the certificate was not copied as it is")
            if (out / f"{name}.key").stat().st_mode & 0o077:
                fail(f"certs init from {layout.name}: the key is readable by others")
    return (
        f"HTTP {http_port}/tcp, QUIC {quic_port}/udp and serving {serve_port}/udp as the binary's defaults "
        f"(serving workers, their env and gateway ingress in {sorted(serving)}); paths "
        f"{sorted(probe_paths | metric_paths)} served by tributary dev; env names known to each role; "
        "a spec with an unknown key refused with 400 naming it; "
        "certs init maps both Secret layouts"
    )
