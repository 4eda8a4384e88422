//! End to end with real processes: etcd (Debian's binary, temp dir), `tributary worker` and
//! `tributary coordinator` processes talking QUIC with mutual TLS on loopback, certificates
//! made by `tributary certs`. Faults are real: kill -9, SIGSTOP/SIGCONT.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_coordinator::etcd::{connect, list_jobs, submit_job};
use tributary_coordinator::testkit::EtcdServer;
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
        for n in ["coord-a", "coord-b", "w1", "w2"] {
            run_ok(&["certs", "issue", "--name", n, "--dir", certs_s]);
        }
        Self {
            etcd,
            dir,
            procs: Vec::new(),
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
            .env("TRIBUTARY_STORE", self.dir.path().join("store"))
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
        membership: Arc::new(StaticMembership::new(vec![WorkerInfo {
            node,
            addr: String::new(),
            device: "cpu".into(),
            cores: 1,
            memory_bytes: 0,
            slots: 1,
            free_slots: 1,
        }])),
        store: Arc::new(MemoryJobStore::default()),
        links: Arc::new(links),
        artifacts: tributary_coordinator::Artifacts::open("memory://cluster-e2e-reference").unwrap(),
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
