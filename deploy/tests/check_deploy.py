#!/usr/bin/env python3
"""Offline checks of Tributary's deployment files, without a cluster.

Run by tests/deploy_checks.rs (one test per subcommand) with the Python of the cached venv
that scripts/setup-test-deps.sh makes (helm-python-sdk, kubernetes-validate,
check-jsonschema, yamllint):

  check_deploy.py lint        yamllint over the manifests, the chart's values and Chart.yaml
  check_deploy.py kustomize   every kustomize overlay renders and validates (strict schemas)
  check_deploy.py chart       helm lint --strict; every values file validates against
                              values.schema.json (and a bad one is refused); the chart renders
                              with each and the output validates
  check_deploy.py agree       the chart (release "tributary", default values) renders the same
                              workloads, ports, probes, env, volumes, Services, PDBs and
                              NetworkPolicies as deploy/k8s/base
  check_deploy.py binary --binary PATH
                              ports, env variables and probe/metrics paths in the manifests are
                              the ones the binary has: read from its --help and from the
                              source, and served by a running `tributary dev`; the certs init
                              script turns both Secret layouts into what --certs DIR reads
  check_deploy.py mtls --binary PATH
                              etcd, a coordinator and two workers on loopback with certificates
                              from a cert-manager-shaped Secret (made with openssl: one ECDSA
                              certificate naming every pod), laid out by the manifests' init
                              script, run a job over QUIC with mutual TLS
  check_deploy.py dashboard   every metric the Grafana dashboard queries is registered in the
                              Rust sources (or listed as expected from open work)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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

# Metrics the dashboard queries that other work of this session adds (branches serve, engine,
# attrib). Empty this list after merging: the dashboard check fails for any listed metric the
# code already registers, and for any metric neither registered nor listed.
EXPECTED_FROM_OPEN_WORK = {
    "tributary_request_ttft_seconds",
    "tributary_request_tpot_seconds",
    "tributary_request_e2e_seconds",
    "tributary_queue_depth",
    "tributary_kv_cache_usage_ratio",
    "tributary_batch_size",
    "tributary_adapter_resident",
    "tributary_attribution_backlog",
    "tributary_reward_lag_seconds",
    # On branch serve (gateway/src/openai/metrics.rs, worker/src/engine/metrics.rs).
    "tributary_requests_total",
    "tributary_gateway_queue_depth",
    "tributary_adapter_cache_hits_total",
    "tributary_adapter_cache_misses_total",
    "tributary_adapter_cache_bytes",
}

# Environment variables the manifests set that the binary does not read yet: etcd client TLS
# (values etcd.tls.*). Empty this once `--etcd-ca/--etcd-cert/--etcd-key` exist.
EXPECTED_ENV_FROM_OPEN_WORK = {"TRIBUTARY_ETCD_CA", "TRIBUTARY_ETCD_CERT", "TRIBUTARY_ETCD_KEY"}


class CheckFailed(Exception):
    pass


def fail(msg: str) -> None:
    raise CheckFailed(msg)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ------------------------------------------------------------------ rendering


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


# ------------------------------------------------------------------ checks


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


# ------------------------------------------------------------------ the binary


def _help(binary: str, role: str) -> str | None:
    p = run([binary, role, "--help"])
    return p.stdout if p.returncode == 0 else None


def _default_port(help_text: str, flag: str) -> int:
    m = re.search(rf"--{flag} <[A-Z_]+>.*?\[default: [^\]]*:(\d+)\]", help_text, re.S)
    if not m:
        fail(f"no default port for --{flag} in:\n{help_text}")
    return int(m.group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _routes() -> set[str]:
    """The operator routes every process serves, from the source (gateway/src/ops.rs)."""
    src = (ROOT / "gateway" / "src" / "ops.rs").read_text()
    routes = set(re.findall(r'\.route\("(/[a-z]+)"', src))
    if not {"/healthz", "/readyz", "/metrics"} <= routes:
        fail(f"gateway/src/ops.rs serves {routes}")
    return routes


def _certs_init_script(docs: list[dict]) -> str:
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


def _run_certs_init(script: str, tls: Path, certs: Path, name: str) -> None:
    script = script.replace("/tls/", f"{tls}/").replace("/certs/", f"{certs}/")
    p = run(["/bin/sh", "-c", script], env={**os.environ, "TRIBUTARY_NAME": name})
    if p.returncode != 0:
        fail(f"certs init script failed for {tls}:\n{p.stderr}")


def check_binary(binary: str) -> str:
    helps = {r: _help(binary, r) for r in ("dev", "coordinator", "worker", "gateway")}
    for r in ("dev", "coordinator", "worker"):
        if helps[r] is None:
            fail(f"{binary} {r} --help failed")
    http_port = _default_port(helps["dev"], "http")
    quic_port = _default_port(helps["worker"], "listen")
    routes = _routes()
    renders = {o: kustomize(o) for o in OVERLAYS}
    renders |= {f"chart {vf.name if vf else 'defaults'}": render_chart(vf) for vf in chart_values_files()}
    probe_paths, metric_paths = set(), set()
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
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if env.get("TRIBUTARY_HTTP", "").rsplit(":", 1)[-1] != str(http_port):
                fail(f"{what}: {role} TRIBUTARY_HTTP={env.get('TRIBUTARY_HTTP')}")
            if helps[role] is None:
                # `tributary gateway` does not exist yet: the chart must keep it off by default.
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
    if not (probe_paths | metric_paths) <= routes:
        fail(f"manifests use {sorted(probe_paths | metric_paths)}, the code serves {sorted(routes)}")

    # The paths answer on a running process.
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
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
                    if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
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
                if e.code != 400 or body.get("field") != "priority":
                    fail(f"a spec with an unknown key: {e.code} {body}")
            for path in sorted(probe_paths | metric_paths):
                status, body = _get(f"http://127.0.0.1:{port}{path}")
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
        script = _certs_init_script(renders["base"])
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
            _run_certs_init(script, layout, out, name)
            got = sorted(f.name for f in out.iterdir())
            want = sorted(["ca.pem", f"{name}.pem", f"{name}.key"])
            if got != want:
                fail(f"certs init from {layout.name}: {got}, `--certs DIR` reads {want}")
            if (out / f"{name}.pem").read_bytes() != (src / f"{name}.pem").read_bytes():
                fail(f"certs init from {layout.name}: the certificate was not copied as it is")
            if (out / f"{name}.key").stat().st_mode & 0o077:
                fail(f"certs init from {layout.name}: the key is readable by others")
    return (
        f"HTTP {http_port}/tcp and QUIC {quic_port}/udp as the binary's defaults; paths "
        f"{sorted(probe_paths | metric_paths)} served by tributary dev; env names known to each role; "
        "a spec with an unknown key refused with 400 naming it; "
        "certs init maps both Secret layouts"
    )


# ------------------------------------------------------------------ mTLS with a cert-manager Secret


def _openssl(*args: str) -> None:
    p = run(["openssl", *args])
    if p.returncode != 0:
        fail(f"openssl {' '.join(args)}: {p.stderr}")


def cert_manager_secret(out: Path, names: list[str]) -> None:
    """Writes what cert-manager puts in the Secret for components/cert-manager's Certificate:
    ca.crt (an ECDSA P-256 CA), tls.crt (one certificate naming every pod, server and client
    auth) and tls.key (PKCS#8)."""
    out.mkdir(parents=True)
    ca_key, ca = out / "ca-private.key", out / "ca.crt"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(ca_key))
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-out", str(ca), "-days", "2",
        "-subj", "/CN=Tributary cluster CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
    )
    key, csr = out / "tls.key", out / "tls.csr"
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", "/CN=tributary")
    ext = out / "ext.cnf"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={','.join('DNS:' + n for n in names)}\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(out / "tls.crt"), "-days", "2", "-extfile", str(ext),
    )
    for f in (ca_key, csr, ext, out / "ca.srl"):
        f.unlink(missing_ok=True)


def check_mtls(binary: str) -> str:
    """A coordinator and two workers on loopback, each with --certs laid out by the manifests'
    init script from a cert-manager-shaped Secret, run a job over QUIC with mutual TLS."""
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(etcd).exists():
        fail("etcd is not installed (scripts/setup-test-deps.sh installs it)")
    script = _certs_init_script(kustomize("base"))
    coord, workers = "tributary-coordinator-0", ["tributary-worker-0", "tributary-worker-1"]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        secret = t / "tributary-tls"
        cert_manager_secret(secret, [coord, "tributary-coordinator-1", *workers])
        dirs = {}
        for n in (coord, *workers):
            dirs[n] = t / "certs" / n
            dirs[n].mkdir(parents=True)
            _run_certs_init(script, secret, dirs[n], n)
        client, peer = _free_port(), _free_port()
        http = {n: _free_port() for n in (coord, *workers)}
        logs = {}

        def start(name: str, args: list[str], env: dict) -> None:
            logs[name] = open(t / f"{name}.log", "w")
            procs.append(subprocess.Popen(args, stdout=logs[name], stderr=subprocess.STDOUT, env={**os.environ, **env}))

        def log(name: str) -> str:
            return (t / f"{name}.log").read_text()[-2000:]

        try:
            start("etcd", [
                etcd, "--name", "default", "--data-dir", str(t / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            ], {})
            deadline = time.monotonic() + 90
            while True:  # the roles exit if etcd does not answer when they start
                try:
                    if _get(f"http://127.0.0.1:{client}/health")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    fail(f"etcd did not start: {log('etcd')}")
                time.sleep(0.2)
            common = {"TRIBUTARY_ETCD": f"http://127.0.0.1:{client}", "TRIBUTARY_STORE": str(t / "store"), "TRIBUTARY_LEASE_TTL": "5"}
            for n in workers:
                quic = _free_port()
                start(n, [binary, "worker"], {**common, "TRIBUTARY_NAME": n, "TRIBUTARY_CERTS": str(dirs[n]),
                      "TRIBUTARY_HTTP": f"127.0.0.1:{http[n]}", "TRIBUTARY_LISTEN": f"127.0.0.1:{quic}",
                      "TRIBUTARY_CACHE_DIR": str(t / n)})
            # Once the job API takes API keys, this test runs it without (the check is mTLS).
            no_auth = ["--insecure-no-auth"] if "--insecure-no-auth" in (_help(binary, "coordinator") or "") else []
            start(coord, [binary, "coordinator", *no_auth], {**common, "TRIBUTARY_NAME": coord, "TRIBUTARY_CERTS": str(dirs[coord]),
                  "TRIBUTARY_HTTP": f"127.0.0.1:{http[coord]}"})
            base = f"http://127.0.0.1:{http[coord]}"
            while True:
                try:
                    if all(_get(f"http://127.0.0.1:{http[n]}/readyz")[0] == 200 for n in (coord, *workers)):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    fail("the cluster did not become ready:\n" + "\n".join(f"{n}: {log(n)}" for n in logs))
                time.sleep(0.3)
            spec = ('base_model = "builtin:linear"\ndata = "synthetic"\nworkers = 2\n[train]\n'
                    "steps = 6\nbatch_size = 8\ngrad_accum = 4\nlr = 0.05\nseed = 5\ncheckpoint_every = 3\n")
            req = urllib.request.Request(f"{base}/v1/jobs", data=spec.encode(), method="POST",
                                         headers={"Content-Type": "application/toml"})
            with urllib.request.urlopen(req, timeout=10) as r:
                job = json.loads(r.read())["id"]
            while True:
                status, body = _get(f"{base}/v1/jobs/{job}")
                rec = json.loads(body) if status == 200 else {}
                if rec.get("state") in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() > deadline + 60:
                    fail(f"job {job} did not finish: {body}\n" + "\n".join(f"{n}: {log(n)}" for n in logs))
                time.sleep(0.3)
            if rec["state"] != "succeeded" or sorted(rec.get("workers", [])) != workers:
                fail(f"job {job}: {rec}\n" + "\n".join(f"{n}: {log(n)}" for n in logs))
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in reversed(procs):
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
            for f in logs.values():
                f.close()
    return f"job {job} succeeded on {workers} over mTLS with certs from a cert-manager-shaped Secret"


# ------------------------------------------------------------------ dashboard


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


CHECKS = {
    "lint": check_lint,
    "kustomize": check_kustomize,
    "chart": check_chart,
    "agree": check_agree,
    "dashboard": check_dashboard,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=[*CHECKS, "binary", "mtls", "all"])
    ap.add_argument("--binary", help="the tributary binary (for `binary` and `all`)")
    a = ap.parse_args()
    names = [*CHECKS, "binary", "mtls"] if a.check == "all" else [a.check]
    failed = 0
    for name in names:
        t = time.monotonic()
        try:
            if name in ("binary", "mtls"):
                if not a.binary:
                    fail("--binary PATH is required")
                msg = check_binary(a.binary) if name == "binary" else check_mtls(a.binary)
            else:
                msg = CHECKS[name]()
            print(f"ok   {name}: {msg} ({time.monotonic() - t:.1f} s)")
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {name}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
