//! A whole cluster in containers for fault tests across hosts: `deploy/local-cluster.sh up`
//! with a prefix of its own (so tests and a developer's cluster never meet), torn down on
//! drop. Each container has its own address on a private Docker network, so a partition
//! (`docker network disconnect`) and node loss are real.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::common;

/// Lease TTL the test clusters run with (seconds).
pub const TTL: u64 = 3;

pub struct ContainerCluster {
    pub prefix: String,
    state: tempfile::TempDir,
    env: HashMap<String, String>,
}

/// Docker must be here: the machines this project runs on have an engine. A machine
/// without one says so by setting `TRIBUTARY_SKIP_CONTAINER_TESTS=1`, and the tests then
/// print that they skipped.
pub fn docker_or_skip(test: &str) -> bool {
    if std::env::var("TRIBUTARY_SKIP_CONTAINER_TESTS").as_deref() == Ok("1") {
        eprintln!("{test}: SKIPPED (TRIBUTARY_SKIP_CONTAINER_TESTS=1)");
        return false;
    }
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{test}: no Docker engine answers (`docker info` failed); set TRIBUTARY_SKIP_CONTAINER_TESTS=1 to skip the container tests on a machine without one"
    );
    true
}

fn script() -> std::path::PathBuf {
    common::repo().join("deploy/local-cluster.sh")
}

impl ContainerCluster {
    /// Starts etcd ×3, S3, two coordinators and `workers` workers; `mount` is visible
    /// read-only at the same path inside the coordinators and workers.
    pub fn up(mount: &Path, workers: u32) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "tt{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(script())
            .args(["up", "--binary", common::bin(), "--workers"])
            .arg(workers.to_string())
            .env("TRIBUTARY_CLUSTER_PREFIX", &prefix)
            .env("TRIBUTARY_CLUSTER_DIR", state.path())
            .env("TRIBUTARY_CLUSTER_MOUNT", mount)
            .env("TRIBUTARY_LEASE_TTL", TTL.to_string())
            .output()
            .unwrap();
        let mut cluster = Self {
            prefix,
            state,
            env: HashMap::new(),
        };
        assert!(
            out.status.success(),
            "local-cluster.sh up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.dump_logs()
        );
        let env = std::fs::read_to_string(cluster.state.path().join("cluster.env")).unwrap();
        cluster.env = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        cluster
    }

    /// The HTTP URL of a node (`coord-a`, `w1`, …).
    pub fn url(&self, node: &str) -> String {
        let key = format!("TRIBUTARY_URL_{}", node.replace('-', "_"));
        self.env
            .get(&key)
            .unwrap_or_else(|| panic!("no {key} in cluster.env: {:?}", self.env))
            .clone()
    }

    pub fn container(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn logs(&self, node: &str) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.container(node)])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        for n in [
            "coord-a", "coord-b", "w1", "w2", "etcd-1", "etcd-2", "etcd-3",
        ] {
            let log = self.logs(n);
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            s.push_str(&format!("--- {n} (last 25 lines)\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    fn docker(&self, args: &[&str]) {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Cuts a node off the cluster network: every packet to and from it is lost.
    pub fn partition(&self, node: &str) {
        let net = format!("{}-net", self.prefix);
        self.docker(&["network", "disconnect", &net, &self.container(node)]);
    }

    /// Heals [`partition`](Self::partition), keeping the node's name on the network.
    pub fn heal(&self, node: &str) {
        let net = format!("{}-net", self.prefix);
        self.docker(&[
            "network",
            "connect",
            "--alias",
            node,
            &net,
            &self.container(node),
        ]);
    }

    /// Whether the node's container is still running.
    pub fn running(&self, node: &str) -> bool {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", &self.container(node)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// Waits until `needle` is in a node's log; returns how long that took.
    pub fn wait_log(&self, node: &str, needle: &str, secs: u64) -> Duration {
        let start = Instant::now();
        while !self.logs(node).contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "{node} did not log {needle:?} within {secs} s\n{}",
                self.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }
}

impl Drop for ContainerCluster {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("down")
            .env("TRIBUTARY_CLUSTER_PREFIX", &self.prefix)
            .env("TRIBUTARY_CLUSTER_DIR", self.state.path())
            .output();
    }
}
