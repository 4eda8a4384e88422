//! End to end with real processes: etcd (Debian's binary, temp dir), `tributary worker` and
//! `tributary coordinator` processes talking QUIC with mutual TLS on loopback, certificates
//! made by `tributary certs`. Faults are real: kill -9, SIGSTOP/SIGCONT. Jobs go in through
//! the library (etcd) and through `tributary job` against a coordinator's HTTP API; the
//! object store is a directory or a real S3 API server (moto).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_coordinator::etcd::{connect, list_jobs, submit_job};
use tributary_coordinator::local_etcd::EtcdServer;
use tributary_coordinator::{
    CoordinatorConfig, JobRecord, JobState, MemoryJobStore, StaticMembership, client,
    spawn_coordinator,
};
use tributary_protocol::{Digest, JobId, JobSpec, NodeId, WorkerInfo};
use tributary_worker::toy::LinearFactory;
use tributary_worker::{LocalLinkFactory, WorkerCore, spawn_worker};

const TTL: &str = "3";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

struct Cluster {
    etcd: EtcdServer,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    /// The coordinators' `--store`.
    store: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn run_ok(args: &[&str]) {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tributary {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn new() -> Self {
        let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let certs_s = certs.to_str().unwrap();
        run_ok(&["certs", "init", "--out", certs_s]);
        for n in ["coord-a", "coord-b", "w1", "w2", "w3"] {
            run_ok(&["certs", "issue", "--name", n, "--dir", certs_s]);
        }
        let store = dir.path().join("store").to_string_lossy().into_owned();
        Self {
            etcd,
            dir,
            procs: Vec::new(),
            store,
        }
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(args)
            .args(["--name", name, "--lease-ttl", TTL])
            .env("TRIBUTARY_ETCD", self.etcd.url())
            .env("TRIBUTARY_CERTS", self.dir.path().join("certs"))
            .env("TRIBUTARY_STORE", &self.store)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        self.procs.push(Proc {
            name: name.into(),
            child,
            log,
        });
    }

    fn worker(&mut self, name: &str, delay_ms: u64) {
        let listen = format!("127.0.0.1:{}", free_port());
        let delay = delay_ms.to_string();
        self.spawn(
            name,
            &[
                "worker",
                "--listen",
                &listen,
                "--micro-batch-delay-ms",
                &delay,
            ],
        );
    }

    /// A worker that may read `allow` (base models and data outside its cache and store).
    fn worker_allowing(&mut self, name: &str, delay_ms: u64, allow: &[&std::path::Path]) {
        let listen = format!("127.0.0.1:{}", free_port());
        let delay = delay_ms.to_string();
        let mut args = vec![
            "worker".to_string(),
            "--listen".into(),
            listen,
            "--micro-batch-delay-ms".into(),
            delay,
            "--cache-dir".into(),
            self.dir
                .path()
                .join(format!("{name}-cache"))
                .display()
                .to_string(),
        ];
        for a in allow {
            args.push("--allow-path".into());
            args.push(a.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(name, &args);
    }

    fn coordinator(&mut self, name: &str) {
        self.spawn(name, &["coordinator"]);
    }

    fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap()
    }

    fn log(&self, name: &str) -> String {
        let p = self.procs.iter().find(|p| p.name == name).unwrap();
        std::fs::read_to_string(&p.log).unwrap_or_default()
    }

    fn signal(&mut self, name: &str, sig: &str) {
        let pid = self.proc(name).child.id().to_string();
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig} {name}");
    }

    fn dump_logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, self.log(&p.name)))
            .collect()
    }
}

fn spec(steps: u64) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        "base_model = \"builtin:linear\"\ndata = \"synthetic\"\nworkers = 2\n[train]\n\
         steps = {steps}\nbatch_size = 8\ngrad_accum = 4\nlr = 0.05\nseed = 5\ncheckpoint_every = 10\n"
    ))
    .unwrap()
}

/// The same job in embedded mode with one in-process worker: the reference result.
async fn embedded_digest(spec: JobSpec) -> Digest {
    let node = NodeId::new("local").unwrap();
    let (w, _) = spawn_worker(WorkerCore::new(node.clone(), Arc::new(LinearFactory)))
        .await
        .unwrap();
    let mut links = LocalLinkFactory::new();
    links.insert(node.clone(), w);
    let mut spec = spec;
    spec.workers = tributary_protocol::spec::Workers::Count(1);
    let (c, _) = spawn_coordinator(CoordinatorConfig {
        fencing: 1,
        membership: Arc::new(StaticMembership::new(vec![WorkerInfo::in_process(node)])),
        store: Arc::new(MemoryJobStore::default()),
        links: Arc::new(links),
        artifacts: tributary_coordinator::Artifacts::open("memory://cluster-e2e-reference")
            .unwrap(),
        tick: Duration::from_millis(20),
    })
    .await
    .unwrap();
    let id = client::submit(&c, spec).await.unwrap();
    let r = client::wait(&c, &id, Duration::from_secs(30))
        .await
        .unwrap();
    c.stop(None);
    assert_eq!(r.state, JobState::Succeeded);
    r.adapter_digest.unwrap()
}

/// The same LoRA job in embedded mode with one in-process worker running the real trainer.
async fn embedded_lora_digest(spec: JobSpec) -> Digest {
    let node = NodeId::new("local").unwrap();
    let (w, _) = spawn_worker(WorkerCore::new(
        node.clone(),
        Arc::new(tributary_worker::DefaultFactory),
    ))
    .await
    .unwrap();
    let mut links = LocalLinkFactory::new();
    links.insert(node.clone(), w);
    let mut spec = spec;
    spec.workers = tributary_protocol::spec::Workers::Count(1);
    let (c, _) = spawn_coordinator(CoordinatorConfig {
        fencing: 1,
        membership: Arc::new(StaticMembership::new(vec![WorkerInfo::in_process(node)])),
        store: Arc::new(MemoryJobStore::default()),
        links: Arc::new(links),
        artifacts: tributary_coordinator::Artifacts::open("memory://cluster-e2e-lora-reference")
            .unwrap(),
        tick: Duration::from_millis(20),
    })
    .await
    .unwrap();
    let id = client::submit(&c, spec).await.unwrap();
    let r = client::wait(&c, &id, Duration::from_secs(120))
        .await
        .unwrap();
    c.stop(None);
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    r.adapter_digest.unwrap()
}

async fn record(etcd: &tributary_coordinator::etcd::EtcdClient, id: &JobId) -> Option<JobRecord> {
    list_jobs(etcd)
        .await
        .ok()?
        .into_iter()
        .find(|r| &r.id == id)
}

async fn wait_for(
    c: &Cluster,
    etcd: &tributary_coordinator::etcd::EtcdClient,
    id: &JobId,
    what: &str,
    secs: u64,
    f: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(r) = record(etcd, id).await {
            if f(&r) {
                return r;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; job: {r:?}\n{}",
                    c.dump_logs()
                );
            }
        } else if Instant::now() > deadline {
            panic!("timed out waiting for {what}: no record\n{}", c.dump_logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_has(c: &Cluster, name: &str, needle: &str) -> bool {
    c.log(name).contains(needle)
}

async fn wait_log(c: &Cluster, name: &str, needle: &str, secs: u64) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if log_has(c, name, needle) {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never logged {needle:?}\n{}", c.dump_logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_process_cluster_trains_the_same_adapter_as_embedded_mode() {
    let want = embedded_digest(spec(30)).await;
    let mut c = Cluster::new();
    c.worker("w1", 0);
    c.worker("w2", 0);
    c.coordinator("coord-a");
    let etcd = connect(&c.etcd.url()).await.unwrap();
    let id = submit_job(&etcd, spec(30)).await.unwrap();
    let r = wait_for(&c, &etcd, &id, "success", 60, |r| r.state.is_terminal()).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(r.workers.len(), 2, "{r:?}");
    assert_eq!(
        r.adapter_digest,
        Some(want),
        "2 workers over QUIC != 1 in-process worker"
    );
    assert!(log_has(&c, "coord-a", "leader with fencing token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_worker_mid_job_and_the_job_finishes_on_the_other() {
    let want = embedded_digest(spec(150)).await;
    let mut c = Cluster::new();
    c.worker("w1", 3);
    c.worker("w2", 3);
    c.coordinator("coord-a");
    let etcd = connect(&c.etcd.url()).await.unwrap();
    let id = submit_job(&etcd, spec(150)).await.unwrap();
    wait_for(&c, &etcd, &id, "step 20", 60, |r| r.progress.step >= 20).await;
    c.signal("w2", "-KILL");
    let r = wait_for(&c, &etcd, &id, "the end", 90, |r| r.state.is_terminal()).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(r.workers, vec![NodeId::new("w1").unwrap()], "{r:?}");
    assert_eq!(r.adapter_digest, Some(want));
}

/// The same fault as above on a real LoRA job (the tiny model and the demo data): the
/// adapter trained through a worker's death is the one a fault-free single worker trains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_worker_mid_lora_job_and_the_adapter_matches_a_fault_free_run() {
    let mut c = Cluster::new();
    let model = common::tiny_model(c.dir.path());
    let data = common::repo().join("assets/demo/train.jsonl");
    let spec = JobSpec::from_toml_str(&format!(
        "base_model = {:?}\ndata = {:?}\nworkers = 2\n\
         [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.1\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
         [train]\nsteps = 24\nbatch_size = 4\ngrad_accum = 2\nlr = 1e-3\nseed = 7\ncheckpoint_every = 4\n",
        model.display().to_string(),
        data.display().to_string(),
    ))
    .unwrap();
    let want = embedded_lora_digest(spec.clone()).await;
    let allow = [model.as_path(), data.parent().unwrap()];
    c.worker_allowing("w1", 80, &allow);
    c.worker_allowing("w2", 80, &allow);
    c.coordinator("coord-a");
    let etcd = connect(&c.etcd.url()).await.unwrap();
    let id = submit_job(&etcd, spec).await.unwrap();
    wait_for(&c, &etcd, &id, "step 4", 120, |r| r.progress.step >= 4).await;
    c.signal("w2", "-KILL");
    let r = wait_for(&c, &etcd, &id, "the end", 180, |r| r.state.is_terminal()).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(r.workers, vec![NodeId::new("w1").unwrap()], "{r:?}");
    assert_eq!(r.progress.step, 24);
    assert_eq!(
        r.adapter_digest,
        Some(want),
        "LoRA adapter after a worker's kill -9 != fault-free run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_leader_and_a_standby_finishes_the_job() {
    let want = embedded_digest(spec(150)).await;
    let mut c = Cluster::new();
    c.worker("w1", 3);
    c.worker("w2", 3);
    c.coordinator("coord-a");
    wait_log(&c, "coord-a", "leader with fencing token", 20).await;
    c.coordinator("coord-b");
    let etcd = connect(&c.etcd.url()).await.unwrap();
    let id = submit_job(&etcd, spec(150)).await.unwrap();
    wait_for(&c, &etcd, &id, "step 20", 60, |r| r.progress.step >= 20).await;
    assert!(
        !log_has(&c, "coord-b", "leader with"),
        "standby led too early"
    );
    c.signal("coord-a", "-KILL");
    let took = wait_log(&c, "coord-b", "leader with fencing token", 30).await;
    let ttl: u64 = TTL.parse().unwrap();
    assert!(
        took <= Duration::from_secs(ttl + 5),
        "failover took {took:?}"
    );
    let r = wait_for(&c, &etcd, &id, "the end", 90, |r| r.state.is_terminal()).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(r.adapter_digest, Some(want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_is_refused_and_steps_down() {
    let want = embedded_digest(spec(200)).await;
    let mut c = Cluster::new();
    c.worker("w1", 3);
    c.worker("w2", 3);
    c.coordinator("coord-a");
    wait_log(&c, "coord-a", "leader with fencing token", 20).await;
    c.coordinator("coord-b");
    let etcd = connect(&c.etcd.url()).await.unwrap();
    let id = submit_job(&etcd, spec(200)).await.unwrap();
    wait_for(&c, &etcd, &id, "step 20", 60, |r| r.progress.step >= 20).await;
    c.signal("coord-a", "-STOP");
    wait_log(&c, "coord-b", "leader with fencing token", 30).await;
    // Let the new leader talk to the workers, then wake the old one up.
    let at = record(&etcd, &id).await.unwrap().progress.step;
    wait_for(&c, &etcd, &id, "progress under B", 60, |r| {
        r.progress.step > at + 5 || r.state.is_terminal()
    })
    .await;
    c.signal("coord-a", "-CONT");
    // The old leader must notice it was deposed and exit, having changed nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = c.proc("coord-a").child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "paused leader kept running\n{}",
            c.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = c.log("coord-a");
    assert!(
        log.contains("leadership lost") || log.contains("fenced out"),
        "{log}"
    );
    let r = wait_for(&c, &etcd, &id, "the end", 90, |r| r.state.is_terminal()).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(r.adapter_digest, Some(want));
}

/// Starts a coordinator with the job API on a free port; returns the port once it is ready.
fn coordinator_with_http(c: &mut Cluster, name: &str) -> u16 {
    let port = common::free_tcp_port();
    c.spawn(
        name,
        &[
            "coordinator",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--insecure-no-auth",
        ],
    );
    common::wait_ready(port, "/healthz", 30, &|| c.dump_logs());
    port
}

#[test]
fn a_lora_job_from_job_submit_on_an_s3_store_matches_dev_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model(tmp.path());
    // The reference: `tributary dev` with one worker.
    let want = {
        let dev = common::Dev::start(tmp.path(), 1);
        common::submit_and_wait(&dev.url(), &common::lora_spec(tmp.path(), &model, 1))
    };
    assert_eq!(want["state"], "succeeded", "{want}");

    tributary_ledger::testkit::init_crypto();
    let moto = tributary_ledger::testkit::MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket("tributary").unwrap();
    let mut c = Cluster::new();
    c.store = moto.url("tributary", "cluster");
    let w1_port = common::free_tcp_port();
    let w1_listen = format!("127.0.0.1:{}", free_port());
    let demo = common::repo().join("assets/demo");
    let (tmp_s, demo_s) = (tmp.path().display().to_string(), demo.display().to_string());
    c.spawn(
        "w1",
        &[
            "worker",
            "--listen",
            &w1_listen,
            "--http",
            &format!("127.0.0.1:{w1_port}"),
            "--allow-path",
            &tmp_s,
            "--allow-path",
            &demo_s,
        ],
    );
    c.worker_allowing("w2", 0, &[tmp.path(), demo.as_path()]);
    let port = coordinator_with_http(&mut c, "coord-a");
    common::wait_ready(port, "/readyz", 30, &|| c.dump_logs());
    let url = format!("http://127.0.0.1:{port}");
    let got = common::submit_and_wait(&url, &common::lora_spec(tmp.path(), &model, 2));
    assert_eq!(got["state"], "succeeded", "{got}\n{}", c.dump_logs());
    assert_eq!(got["steps"], 4);
    assert_eq!(
        got["adapter_digest"], want["adapter_digest"],
        "2 workers over QUIC != dev mode with 1 worker"
    );
    let adapter = got["adapter"].as_str().unwrap();
    assert!(
        adapter.starts_with("s3://tributary/cluster/adapters/"),
        "{adapter}"
    );

    // The registry entry and files are in the bucket.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = tributary_ledger::Store::open(&c.store).unwrap();
    let registry = tributary_ledger::adapters::AdapterRegistry::new(store);
    let digest = got["adapter_digest"].as_str().unwrap();
    let entry = rt
        .block_on(registry.get(digest))
        .unwrap()
        .expect("registered");
    assert_eq!(entry.job_id, got["id"].as_str().unwrap());
    assert_eq!(entry.location, adapter);
    let files = rt.block_on(registry.files(&entry)).unwrap();
    assert_eq!(tributary_ledger::adapters::adapter_digest(&files), digest);
    // Both workers trained; the record knows where its last checkpoint is.
    let out = common::job(&url, &["status", got["id"].as_str().unwrap(), "--json"]);
    let rec: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(rec["workers"].as_array().unwrap().len(), 2, "{rec}");
    assert!(
        rec["checkpoint"]["key"]
            .as_str()
            .unwrap()
            .starts_with("checkpoints/")
    );
    // The leader's metrics saw the workers and the steps.
    let (_, metrics) = common::http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("tributary_worker_heartbeat_age_seconds{node=\"w1\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_train_step_seconds_count 4"),
        "{metrics}"
    );
    // The worker serves its own health and metrics.
    assert_eq!(common::http_get(w1_port, "/readyz").unwrap().0, 200);
    let (_, metrics) = common::http_get(w1_port, "/metrics").unwrap();
    assert!(
        metrics.contains("tributary_worker_commands_total{command=\"gradients\",outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_worker_micro_batches_total "),
        "{metrics}"
    );
    assert!(
        metrics.contains("tributary_worker_jobs_loaded 0"),
        "{metrics}"
    );
}

#[test]
fn a_standby_accepts_submit_and_cancel_and_the_leader_acts_on_them() {
    let mut c = Cluster::new();
    c.worker("w1", 3);
    c.worker("w2", 3);
    c.coordinator("coord-a");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_log(&c, "coord-a", "leader with fencing token", 20));
    let port = coordinator_with_http(&mut c, "coord-b");
    let url = format!("http://127.0.0.1:{port}");
    let spec = c.dir.path().join("long.toml");
    std::fs::write(
        &spec,
        "base_model = \"builtin:linear\"\ndata = \"synthetic\"\nworkers = 2\n\
         [train]\nsteps = 100000000\nbatch_size = 8\ngrad_accum = 4\nseed = 1\n",
    )
    .unwrap();
    let out = common::job(&url, &["submit", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let id = common::stdout(&out).trim().to_string();
    let t0 = Instant::now();
    loop {
        let out = common::job(&url, &["status", &id, "--json"]);
        let rec: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
        if rec["state"] == "running" && rec["progress"]["step"].as_u64() > Some(2) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{rec}\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !log_has(&c, "coord-b", "leader with"),
        "coord-b must still be a standby"
    );
    let out = common::job(&url, &["cancel", &id]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = common::job(&url, &["status", &id, "--watch", "--json"]);
    let v: serde_json::Value = serde_json::from_str(common::stdout(&out).trim()).unwrap();
    assert_eq!(v["state"], "cancelled", "{v}\n{}", c.dump_logs());
    // The list shows it too.
    let out = common::job(&url, &["status", "--json"]);
    let all: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    let logs = common::stdout(&common::job(&url, &["logs", &id]));
    assert!(logs.contains("cancel requested"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_worker_and_a_replacement_joins_at_a_step_boundary() {
    let want = embedded_digest(spec(400)).await;
    let mut c = Cluster::new();
    c.worker("w1", 3);
    c.worker("w2", 3);
    c.coordinator("coord-a");
    let etcd = connect(&c.etcd.url()).await.unwrap();
    let id = submit_job(&etcd, spec(400)).await.unwrap();
    wait_for(&c, &etcd, &id, "step 20", 60, |r| r.progress.step >= 20).await;
    c.signal("w2", "-KILL");
    c.worker("w3", 3);
    let r = wait_for(&c, &etcd, &id, "the end", 90, |r| r.state.is_terminal()).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(
        r.workers,
        vec![NodeId::new("w1").unwrap(), NodeId::new("w3").unwrap()],
        "w3 took w2's place; log: {:?}",
        r.log
    );
    assert!(
        r.log
            .iter()
            .any(|l| l.msg.starts_with("worker w3 joined at step"))
    );
    assert_eq!(
        r.adapter_digest,
        Some(want),
        "the replacement changed the adapter"
    );
}
