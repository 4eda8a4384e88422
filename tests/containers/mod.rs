//! A whole cluster in containers for fault tests across hosts: `deploy/local-cluster.sh up`
//! with a prefix of its own (so tests and a developer's cluster never meet), torn down on
//! drop. Each container has its own address on a private Docker network, so a partition
//! (`docker network disconnect`) and node loss are real.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::common;

/// Lease TTL the test clusters run with (seconds).
pub const TTL: u64 = 3;

/// One container cluster at a time in a test run: eight containers each, and failover
/// deadlines measured in seconds, on two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct ContainerCluster {
    pub prefix: String,
    _turn: std::sync::MutexGuard<'static, ()>,
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
        Self::up_with(mount, &["--workers", &workers.to_string()], &[])
    }

    /// [`up`](Self::up) with two workers that also serve `base_model` (a checkpoint
    /// directory) and `gateways` gateways (`gw1`, …); `env` goes to `local-cluster.sh` (e.g.
    /// `TRIBUTARY_SHUTDOWN_DELAY_SECS`).
    pub fn up_serving(
        mount: &Path,
        base_model: &Path,
        gateways: u32,
        env: &[(&str, &str)],
    ) -> Self {
        let model = base_model.to_str().unwrap();
        let n = gateways.to_string();
        let args = ["--workers", "2", "--base-model", model, "--gateways", &n];
        Self::up_with(mount, &args, env)
    }

    fn up_with(mount: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = format!(
            "tt{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(script())
            .args(["up", "--binary", common::bin()])
            .args(args)
            .envs(env.iter().copied())
            .env("TRIBUTARY_CLUSTER_PREFIX", &prefix)
            .env("TRIBUTARY_CLUSTER_DIR", state.path())
            .env("TRIBUTARY_CLUSTER_MOUNT", mount)
            .env("TRIBUTARY_LEASE_TTL", TTL.to_string())
            .output()
            .unwrap();
        let mut cluster = Self {
            prefix,
            _turn: turn,
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

    /// The admin API key `up` made in the cluster's store.
    pub fn api_key(&self) -> String {
        self.env
            .get("TRIBUTARY_API_KEY")
            .cloned()
            .unwrap_or_else(|| panic!("no TRIBUTARY_API_KEY in cluster.env: {:?}", self.env))
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

    /// How many times `needle` is in a node's log (a restarted container keeps its log).
    pub fn log_count(&self, node: &str, needle: &str) -> usize {
        self.logs(node).matches(needle).count()
    }

    pub fn dump_logs(&self) -> String {
        let mut s = String::new();
        let gateways = ["gw1", "gw2", "gw3", "gw4"]
            .into_iter()
            .filter(|g| self.env.contains_key(&format!("TRIBUTARY_URL_{g}")));
        let nodes = [
            "coord-a", "coord-b", "w1", "w2", "etcd-1", "etcd-2", "etcd-3",
        ];
        for n in nodes.into_iter().chain(gateways) {
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

    /// Cuts a node off the cluster network: every packet to and from it is lost.
    pub fn partition(&self, node: &str) {
        let net = format!("{}-net", self.prefix);
        docker(&["network", "disconnect", &net, &self.container(node)]);
    }

    /// Stops a node's container (SIGKILL): node loss.
    pub fn kill(&self, node: &str) {
        docker(&["kill", &self.container(node)]);
    }

    /// Starts a stopped node's container again, with its data.
    pub fn start(&self, node: &str) {
        docker(&["start", &self.container(node)]);
    }

    /// `docker stop --time GRACE`, started: SIGTERM now, SIGKILL after `grace` seconds if
    /// the node has not exited. Wait for it with [`stopped`](Self::stopped).
    pub fn stop(&self, node: &str, grace: u64) -> std::process::Child {
        Command::new("docker")
            .args(["stop", "--time", &grace.to_string(), &self.container(node)])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Waits for a [`stop`](Self::stop) and asserts the node exited 0 of itself (not
    /// killed at the end of its grace: that exits 137).
    pub fn stopped(&self, node: &str, mut stop: std::process::Child) {
        assert!(stop.wait().unwrap().success(), "docker stop {node}");
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.State.ExitCode}}",
                &self.container(node),
            ])
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(code, "0", "{node} exited {code}\n{}", self.dump_logs());
    }

    /// Starts a stopped node again ([`start`](Self::start)) and returns its HTTP address,
    /// which [`url`](Self::url) gives from now on (Docker may give it another IP address).
    pub fn restart(&mut self, node: &str) -> SocketAddr {
        self.start(node);
        let net = format!("{}-net", self.prefix);
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
                &self.container(node),
            ])
            .output()
            .unwrap();
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let key = format!("TRIBUTARY_URL_{}", node.replace('-', "_"));
        self.env.insert(key, format!("http://{ip}:7400"));
        self.addr(node)
    }

    /// A node's HTTP address (from [`url`](Self::url)).
    pub fn addr(&self, node: &str) -> SocketAddr {
        let url = self.url(node);
        url.trim_start_matches("http://").parse().unwrap()
    }

    /// Heals [`partition`](Self::partition), keeping the node's name on the network.
    pub fn heal(&self, node: &str) {
        let net = format!("{}-net", self.prefix);
        docker(&[
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

/// Moto S3 servers in containers on a network of their own, for the reward log's replicas.
pub struct S3Replicas {
    pub prefix: String,
    pub ips: Vec<String>,
}

impl S3Replicas {
    pub fn up(n: usize) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "ts{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        // The images (built once, cached) come from the same script the cluster uses.
        let out = Command::new(common::repo().join("deploy/images/build.sh"))
            .arg("s3")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "build.sh s3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut me = Self {
            prefix,
            ips: Vec::new(),
        };
        let net = format!("{}-net", me.prefix);
        // A subnet of our own, so a healed replica gets its address back.
        let subnet = format!(
            "10.213.{}.0/24",
            (std::process::id() as usize * 7 + N.load(Ordering::Relaxed) as usize) % 250
        );
        docker(&["network", "create", "--subnet", &subnet, &net]);
        for i in 0..n {
            let name = format!("{}-s3-{i}", me.prefix);
            docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &net,
                "--label",
                &format!("tributary.cluster={}", me.prefix),
                "tributary-s3:dev",
            ]);
            let ip = Command::new("docker")
                .args([
                    "inspect",
                    "-f",
                    &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
                    &name,
                ])
                .output()
                .unwrap();
            me.ips
                .push(String::from_utf8_lossy(&ip.stdout).trim().to_string());
        }
        for ip in &me.ips {
            let start = Instant::now();
            // Make the bucket once the server answers.
            while !Command::new("curl")
                .args(["-fsS", "-o", "/dev/null", "--max-time", "2", "-X", "PUT"])
                .arg(format!("http://{ip}:9000/ledger"))
                .status()
                .is_ok_and(|s| s.success())
            {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "S3 server at {ip} never answered"
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        me
    }

    /// The store URL of replica `i`, with a short timeout so an unreachable one is given
    /// up on quickly.
    pub fn url(&self, i: usize) -> String {
        format!(
            "s3://ledger/rewards?endpoint=http://{}:9000&region=us-east-1&timeout=5",
            self.ips[i]
        )
    }

    pub fn partition(&self, i: usize) {
        let net = format!("{}-net", self.prefix);
        docker(&[
            "network",
            "disconnect",
            &net,
            &format!("{}-s3-{i}", self.prefix),
        ]);
    }

    pub fn heal(&self, i: usize) {
        let net = format!("{}-net", self.prefix);
        let name = format!("{}-s3-{i}", self.prefix);
        docker(&["network", "connect", "--ip", &self.ips[i], &net, &name]);
    }
}

impl Drop for S3Replicas {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=tributary.cluster={}", self.prefix),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("{}-net", self.prefix)])
            .output();
    }
}

fn docker(args: &[&str]) {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
