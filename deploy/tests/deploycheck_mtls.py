"""A job over QUIC with mutual TLS on certificates laid out from a Kubernetes TLS Secret by the
manifests' init script: etcd, a coordinator and two workers on loopback. `check_mtls` makes
the Secret as cert-manager would (openssl); `deploycheck_certs` reuses `run_job_over_mtls`
with the Secret the chart's pre-install Job makes, on an etcd that requires TLS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from deploycheck_common import (
    certs_init_script,
    fail,
    free_ports,
    help_text,
    http_get,
    kustomize,
    run,
    run_certs_init,
)

COORD = "tributary-coordinator-0"
WORKERS = ["tributary-worker-0", "tributary-worker-1"]


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
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "tributary-tls"
        cert_manager_secret(secret, [COORD, "tributary-coordinator-1", *WORKERS])
        job = run_job_over_mtls(binary, secret, certs_init_script(kustomize("base")), Path(tmp))
    return f"job {job} succeeded on {WORKERS} over mTLS with certs from a cert-manager-shaped Secret"


def run_job_over_mtls(
    binary: str,
    secret: Path,
    script: str,
    tmp: Path,
    etcd_tls: dict | None = None,
) -> str:
    """Runs a two-worker job on etcd, a coordinator and two workers whose --certs the init
    `script` lays out from `secret`; returns the job's id.

    `etcd_tls`, when given, runs etcd over TLS: `node` (the name its certificate is laid out
    under), `args` (its TLS flags, paths inside the laid-out directory written as `{certs}`)
    and `env` (the roles' TRIBUTARY_ETCD_CA/_CERT/_KEY, `{certs}` and `{name}` substituted)."""
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    if not Path(etcd).exists():
        fail("etcd is not installed (scripts/setup-test-deps.sh installs it)")
    procs: list[subprocess.Popen] = []
    dirs = {}
    for n in (COORD, *WORKERS, *([etcd_tls["node"]] if etcd_tls else [])):
        dirs[n] = tmp / "certs" / n
        dirs[n].mkdir(parents=True)
        run_certs_init(script, secret, dirs[n], n)
    client, peer, metrics, *https, quic0, quic1 = free_ports(8)
    http = dict(zip((COORD, *WORKERS), https))
    quic = dict(zip(WORKERS, (quic0, quic1)))
    logs = {}

    def start(name: str, args: list[str], env: dict) -> None:
        logs[name] = open(tmp / f"{name}.log", "w")
        procs.append(subprocess.Popen(args, stdout=logs[name], stderr=subprocess.STDOUT, env={**os.environ, **env}))

    def log(name: str) -> str:
        return (tmp / f"{name}.log").read_text()[-2000:]

    scheme = "https" if etcd_tls else "http"
    tls_args = [a.format(certs=dirs[etcd_tls["node"]]) for a in etcd_tls["args"]] if etcd_tls else []
    try:
        start("etcd", [
            etcd, "--name", "default", "--data-dir", str(tmp / "etcd"),
            "--listen-client-urls", f"{scheme}://127.0.0.1:{client}",
            "--advertise-client-urls", f"{scheme}://127.0.0.1:{client}",
            "--listen-metrics-urls", f"http://127.0.0.1:{metrics}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}", *tls_args,
        ], {})
        deadline = time.monotonic() + 90
        while True:  # the roles exit if etcd does not answer when they start
            try:
                if http_get(f"http://127.0.0.1:{metrics}/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                fail(f"etcd did not start: {log('etcd')}")
            time.sleep(0.2)
        common = {"TRIBUTARY_ETCD": f"{scheme}://127.0.0.1:{client}", "TRIBUTARY_STORE": str(tmp / "store"), "TRIBUTARY_LEASE_TTL": "5"}

        def env_for(n: str) -> dict:
            env = {**common, "TRIBUTARY_NAME": n, "TRIBUTARY_CERTS": str(dirs[n]), "TRIBUTARY_HTTP": f"127.0.0.1:{http[n]}"}
            if etcd_tls:
                env |= {k: v.format(certs=dirs[n], name=n) for k, v in etcd_tls["env"].items()}
            return env

        for n in WORKERS:
            start(n, [binary, "worker"], {**env_for(n), "TRIBUTARY_LISTEN": f"127.0.0.1:{quic[n]}", "TRIBUTARY_CACHE_DIR": str(tmp / n)})
        # Once the job API takes API keys, this test runs it without (the check is mTLS).
        no_auth = ["--insecure-no-auth"] if "--insecure-no-auth" in (help_text(binary, "coordinator") or "") else []
        start(COORD, [binary, "coordinator", *no_auth], env_for(COORD))
        base = f"http://127.0.0.1:{http[COORD]}"
        while True:
            try:
                if all(http_get(f"http://127.0.0.1:{http[n]}/readyz")[0] == 200 for n in (COORD, *WORKERS)):
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
            status, body = http_get(f"{base}/v1/jobs/{job}")
            rec = json.loads(body) if status == 200 else {}
            if rec.get("state") in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline + 60:
                fail(f"job {job} did not finish: {body}\n" + "\n".join(f"{n}: {log(n)}" for n in logs))
            time.sleep(0.3)
        if rec["state"] != "succeeded" or sorted(rec.get("workers", [])) != WORKERS:
            fail(f"job {job}: {rec}\n" + "\n".join(f"{n}: {log(n)}" for n in logs))
        return job
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
