#!/usr/bin/env python3
"""Offline checks of Tributary's deployment files, without a cluster.

Run by tests/deploy_checks.rs (one test per subcommand) with the Python of the cached venv
that scripts/setup-test-deps.sh makes (helm-python-sdk, kubernetes-validate,
check-jsonschema, yamllint):

  check_deploy.py lint        yamllint over the manifests, the chart's values and Chart.yaml
  check_deploy.py kustomize   every kustomize overlay renders and validates (strict schemas)
  check_deploy.py chart       helm lint --strict; every values file validates against
                              values.schema.json (and bad ones are refused); the chart renders
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
  check_deploy.py certs-job --binary PATH
                              the chart's pre-install certificate Job (tls.generate): hooks and
                              RBAC; its flags exist; its command run against a stub Kubernetes
                              API posts a valid TLS Secret whose certificates openssl verifies
                              and that run a job over mTLS on a TLS etcd with the bundled
                              etcd's flags
  check_deploy.py dashboard   every metric the Grafana dashboard queries is registered in the
                              Rust sources (or listed as expected from open work)
"""

from __future__ import annotations

import argparse
import sys
import time

from deploycheck_binary import check_binary
from deploycheck_certs import check_certs_job
from deploycheck_common import CheckFailed, fail
from deploycheck_dashboard import check_dashboard
from deploycheck_manifests import check_agree, check_chart, check_kustomize, check_lint
from deploycheck_mtls import check_mtls


CHECKS = {
    "lint": check_lint,
    "kustomize": check_kustomize,
    "chart": check_chart,
    "agree": check_agree,
    "dashboard": check_dashboard,
}

# Checks that run the binary (--binary PATH).
WITH_BINARY = {
    "binary": check_binary,
    "mtls": check_mtls,
    "certs-job": check_certs_job,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=[*CHECKS, *WITH_BINARY, "all"])
    ap.add_argument("--binary", help="the tributary binary (for `binary` and `all`)")
    a = ap.parse_args()
    names = [*CHECKS, *WITH_BINARY] if a.check == "all" else [a.check]
    failed = 0
    for name in names:
        t = time.monotonic()
        try:
            if name in WITH_BINARY:
                if not a.binary:
                    fail("--binary PATH is required")
                msg = WITH_BINARY[name](a.binary)
            else:
                msg = CHECKS[name]()
            print(f"ok   {name}: {msg} ({time.monotonic() - t:.1f} s)")
        except CheckFailed as e:
            failed += 1
            print(f"FAIL {name}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
