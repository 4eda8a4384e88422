"""The chart's pre-install certificate Job (`tls.generate`), checked without a cluster.

The chart rendered with helm/tributary/ci/bundled-values.yaml (generate on, bundled etcd):
the Job, its ServiceAccount, Role and RoleBinding are Helm hooks; the Role grants `create`
on Secrets and nothing else; the Job's flags are ones `tributary certs secret` has; its DNS
names cover every coordinator and worker pod and the node name the bundled etcd's init
container lays its certificate out under. Then the Job's exact arguments run against a stub
of the Kubernetes API (Python's HTTPS server: the one part that is not real here), which
checks the path, the service account's bearer token and the body, answers 201 and then 409
(the command leaves an existing Secret alone). The Secret it posted validates against the
Kubernetes schema; its PEM files are checked with openssl (the certificate chains to the CA,
names every pod, matches its key); and, laid out by the manifests' init script, they run a
job on a coordinator and two workers over QUIC with mutual TLS, on an etcd started with the
bundled StatefulSet's TLS flags that requires client certificates, the roles presenting
theirs through the env the chart sets."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import tempfile
import threading
from pathlib import Path

from deploycheck_common import CHART, certs_init_script, fail, render_chart, run, validate
from deploycheck_mtls import COORD, WORKERS, run_job_over_mtls

TOKEN = "service-account-token-for-the-stub"
NAMESPACE = "tributary"


def _hooked(d: dict) -> None:
    ann = d["metadata"].get("annotations") or {}
    if "pre-install" not in ann.get("helm.sh/hook", "").split(","):
        fail(f"{d['kind']}/{d['metadata']['name']} is not a pre-install hook: {ann}")


class _StubApi(http.server.BaseHTTPRequestHandler):
    """POST /api/v1/namespaces/NS/secrets: 201 the first time, 409 after."""

    posted: list[dict] = []
    errors: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != f"/api/v1/namespaces/{NAMESPACE}/secrets":
            self.errors.append(f"POST {self.path}")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.errors.append(f"Authorization: {self.headers.get('Authorization')}")
        code = 409 if self.posted else 201
        self.posted.append(json.loads(body))
        reply = json.dumps({"kind": "Status", "code": code}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


def _openssl(*args: str) -> str:
    p = run(["openssl", *args])
    if p.returncode != 0:
        fail(f"openssl {' '.join(args)}: {p.stderr}")
    return p.stdout


def check_certs_job(binary: str) -> str:
    import helm_python

    # Two makers of one Secret is refused by name.
    try:
        helm_python.Chart.load(str(CHART)).render(
            {"tls": {"generate": {"enabled": True}, "certManager": {"enabled": True}}},
            name="tributary", namespace=NAMESPACE,
        )
        fail("the chart rendered with both tls.generate and tls.certManager on")
    except helm_python.errors.HelmRenderError as e:
        if "tls.generate.enabled" not in str(e):
            fail(f"both tls.generate and tls.certManager on: {e}")
    docs = render_chart(CHART / "ci" / "bundled-values.yaml")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    job = next((d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-certs")), None)
    if job is None:
        fail("ci/bundled-values.yaml (tls.generate.enabled) renders no certs Job")
    name = job["metadata"]["name"]
    pod = job["spec"]["template"]["spec"]
    sa, role, binding = (by.get((k, name)) for k in ("ServiceAccount", "Role", "RoleBinding"))
    if not (sa and role and binding):
        fail(f"the certs Job needs its ServiceAccount, Role and RoleBinding named {name}")
    for d in (job, sa, role, binding):
        _hooked(d)
    weight = lambda d: int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))  # noqa: E731
    if not weight(sa) < weight(job) or not weight(role) < weight(job) or not weight(binding) < weight(job):
        fail("the ServiceAccount, Role and RoleBinding must come before the Job (hook weights)")
    if role["rules"] != [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]:
        fail(f"the certs Role may only create Secrets: {role['rules']}")
    if binding["roleRef"]["name"] != name or binding["subjects"] != [
        {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}
    ]:
        fail(f"RoleBinding/{name} does not bind Role/{name} to ServiceAccount/{name}")
    if pod.get("serviceAccountName") != name or pod.get("automountServiceAccountToken") is not True:
        fail(f"the certs Job's pod must run as {name} with its token mounted")
    [c] = pod["containers"]
    args = c["args"]
    if args[:3] != ["certs", "secret", "--create"]:
        fail(f"the certs Job runs {args}")

    # Every flag the Job passes is one the binary has.
    help_ = run([binary, "certs", "secret", "--help"])
    if help_.returncode != 0:
        fail(f"tributary certs secret --help: {help_.stderr}")
    for a in args[2:]:
        flag = a.split("=", 1)[0]
        if f"{flag} " not in help_.stdout and f"{flag}\n" not in help_.stdout:
            fail(f"the certs Job passes {flag}, which `tributary certs secret` does not have")
    dns = {a.split("=", 1)[1] for a in args if a.startswith("--dns-name=")}
    secret_name = next(a.split("=", 1)[1] for a in args if a.startswith("--secret-name="))

    # Names the certificate must carry: every pod of the roles, and etcd's node name.
    want = set()
    for d in docs:
        if d["kind"] == "StatefulSet" and d["metadata"]["name"].rsplit("-", 1)[-1] in ("coordinator", "worker"):
            want |= {f"{d['metadata']['name']}-{i}" for i in range(d["spec"]["replicas"])}
            vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
            if vols["tls"]["secret"]["secretName"] != secret_name:
                fail(f"{d['metadata']['name']} mounts {vols['tls']}, the Job makes {secret_name}")
    etcd = by.get(("StatefulSet", name.removesuffix("-certs") + "-etcd"))
    if etcd is None:
        fail("ci/bundled-values.yaml renders no bundled etcd")
    [etcd_init] = etcd["spec"]["template"]["spec"]["initContainers"]
    etcd_node = next(e["value"] for e in etcd_init["env"] if e["name"] == "TRIBUTARY_NAME")
    want.add(etcd_node)
    if not want <= dns:
        fail(f"the certs Job's certificate lacks {sorted(want - dns)}")
    etcd_tls_args = [a for a in etcd["spec"]["template"]["spec"]["containers"][0]["args"]
                     if a.split("=", 1)[0] in ("--cert-file", "--key-file", "--trusted-ca-file", "--client-cert-auth")]
    if len(etcd_tls_args) != 4 or not any(a.startswith("--listen-client-urls=https://") for a in etcd["spec"]["template"]["spec"]["containers"][0]["args"]):
        fail(f"the bundled etcd does not serve clients over TLS with client certificates: {etcd_tls_args}")
    coord = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-coordinator"))
    role_env = {e["name"]: e.get("value") for e in coord["spec"]["template"]["spec"]["containers"][0]["env"]}
    if not role_env.get("TRIBUTARY_ETCD", "").startswith("https://"):
        fail(f"the roles reach the bundled etcd at {role_env.get('TRIBUTARY_ETCD')}")
    etcd_env = {k: role_env[k] for k in ("TRIBUTARY_ETCD_CA", "TRIBUTARY_ETCD_CERT", "TRIBUTARY_ETCD_KEY")}

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # The stub API server's certificate, and the service account directory a pod has.
        pki = t / "pki"
        for a in (["certs", "init", "--out", str(pki)], ["certs", "issue", "--name", "kube-api", "--dir", str(pki)]):
            p = run([binary, *a])
            if p.returncode != 0:
                fail(f"tributary {' '.join(a)}: {p.stderr}")
        sa_dir = t / "serviceaccount"
        sa_dir.mkdir()
        (sa_dir / "token").write_text(TOKEN + "\n")
        (sa_dir / "ca.crt").write_bytes((pki / "ca.pem").read_bytes())
        (sa_dir / "namespace").write_text(NAMESPACE)
        _StubApi.posted, _StubApi.errors = [], []
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubApi)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / "kube-api.pem", pki / "kube-api.key")
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            cmd = [binary, *args, f"--api-server=https://127.0.0.1:{server.server_address[1]}",
                   f"--service-account-dir={sa_dir}"]
            outs = []
            for _ in range(2):
                p = run(cmd, timeout=60)
                if p.returncode != 0:
                    fail(f"the certs Job's command failed: {p.stdout}{p.stderr}")
                outs.append(p.stdout)
        finally:
            server.shutdown()
        if _StubApi.errors:
            fail(f"the stub API server got: {_StubApi.errors}")
        if "created" not in outs[0] or "exists already" not in outs[1]:
            fail(f"the command's output: {outs}")
        secret = _StubApi.posted[0]
        validate([secret], "the Secret the certs Job posts")
        if secret["type"] != "kubernetes.io/tls" or secret["metadata"]["name"] != secret_name:
            fail(f"the posted Secret: {secret['type']} {secret['metadata']}")
        if sorted(secret["data"]) != ["ca.crt", "tls.crt", "tls.key"]:
            fail(f"the Secret holds {sorted(secret['data'])}, want cert-manager's ca.crt, tls.crt, tls.key")
        layout = t / "tributary-tls"
        layout.mkdir()
        for k, v in secret["data"].items():
            (layout / k).write_bytes(base64.b64decode(v))

        # The PEM files: a CA, a certificate it signed naming every pod, its key.
        ca, crt, key = (str(layout / f) for f in ("ca.crt", "tls.crt", "tls.key"))
        if "CA:TRUE" not in _openssl("x509", "-in", ca, "-noout", "-ext", "basicConstraints"):
            fail("ca.crt is not a CA certificate")
        if ": OK" not in _openssl("verify", "-CAfile", ca, crt):
            fail("tls.crt does not verify against ca.crt")
        sans = _openssl("x509", "-in", crt, "-noout", "-ext", "subjectAltName")
        missing = [n for n in sorted(want) if f"DNS:{n}" not in sans]
        if missing:
            fail(f"tls.crt does not name {missing}: {sans}")
        usage = _openssl("x509", "-in", crt, "-noout", "-ext", "extendedKeyUsage")
        if "TLS Web Server Authentication" not in usage or "TLS Web Client Authentication" not in usage:
            fail(f"tls.crt is not for both server and client authentication: {usage}")
        if _openssl("x509", "-in", crt, "-noout", "-pubkey") != _openssl("pkey", "-in", key, "-pubout"):
            fail("tls.key is not tls.crt's key")

        # And they work: a job over mTLS on an etcd with the bundled StatefulSet's TLS flags.
        etcd_args = [a.replace("/certs/", "{certs}/") for a in etcd_tls_args]
        env = {k: v.replace("/certs/", "{certs}/").replace("$(TRIBUTARY_NAME)", "{name}") for k, v in etcd_env.items()}
        job_id = run_job_over_mtls(
            binary, layout, certs_init_script(docs), t,
            etcd_tls={"node": etcd_node, "args": etcd_args, "env": env},
        )
    return (
        f"Job {name} (hooks; Role: create Secrets only) runs `certs secret` with flags the binary has "
        f"and {len(dns)} DNS names (every pod, etcd); against a stub API it posted a valid "
        f"kubernetes.io/tls Secret (201, then 409 left alone); openssl verifies it; job {job_id} ran "
        f"over mTLS on {[COORD, *WORKERS]} with it, on a TLS etcd requiring client certificates"
    )
