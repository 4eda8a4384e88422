//! A cluster of real processes for the end-to-end tests: etcd (Debian's binary, temp dir,
//! plain or mutual TLS), `tributary worker` and `tributary coordinator` processes talking QUIC
//! with mutual TLS on loopback, certificates made by `tributary certs`; plus the reference
//! results of the same jobs in embedded mode and waits on job records and logs.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary_coordinator::etcd::{EtcdClient, list_jobs};
use tributary_coordinator::etcd_tls::{EtcdTls, connect_with};
use tributary_coordinator::local_etcd::{EtcdServer, ServerTls};
use tributary_coordinator::{
    CoordinatorConfig, JobRecord, JobState, MemoryJobStore, StaticMembership, client,
    spawn_coordinator,
};
use tributary_protocol::{Digest, JobId, JobSpec, NodeId, WorkerInfo};
use tributary_worker::toy::LinearFactory;
use tributary_worker::{LocalLinkFactory, WorkerCore, spawn_worker};

pub const TTL: &str = "3";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

pub struct Cluster {
    pub etcd: EtcdServer,
    pub dir: tempfile::TempDir,
    pub procs: Vec<Proc>,
    /// The coordinators' `--store`.
    pub store: String,
    /// Every process reaches etcd over mutual TLS (see [`Cluster::with_etcd_tls`]).
    pub etcd_tls: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

pub fn run_ok(args: &[&str]) {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tributary {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// etcd over plain HTTP, certificates for the nodes of every test.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// etcd serving clients over TLS and requiring client certificates (as a production
    /// etcd does): its server certificate is `tributary certs issue --name etcd` (valid for
    /// 127.0.0.1) and every process presents its node certificate.
    pub fn with_etcd_tls() -> Self {
        Self::build(true)
    }

    fn build(etcd_tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let certs_s = certs.to_str().unwrap();
        run_ok(&["certs", "init", "--out", certs_s]);
        for n in ["coord-a", "coord-b", "w1", "w2", "w3", "etcd"] {
            run_ok(&["certs", "issue", "--name", n, "--dir", certs_s]);
        }
        let etcd = if etcd_tls {
            EtcdServer::start_tls(ServerTls {
                cert: certs.join("etcd.pem"),
                key: certs.join("etcd.key"),
                client_ca: certs.join("ca.pem"),
            })
        } else {
            EtcdServer::start()
        }
        .unwrap_or_else(|e| panic!("{e}"));
        let store = dir.path().join("store").to_string_lossy().into_owned();
        Self {
            etcd,
            dir,
            procs: Vec::new(),
            store,
            etcd_tls,
        }
    }

    /// The TLS files node `name` uses for etcd: the CA and its own certificate and key.
    pub fn etcd_tls_for(&self, name: &str) -> EtcdTls {
        let certs = self.dir.path().join("certs");
        EtcdTls {
            ca: certs.join("ca.pem"),
            identity: Some((
                certs.join(format!("{name}.pem")),
                certs.join(format!("{name}.key")),
            )),
        }
    }

    /// A library client of this cluster's etcd (over TLS as node `coord-b` when it needs it).
    pub async fn etcd_client(&self) -> EtcdClient {
        let tls = self.etcd_tls.then(|| self.etcd_tls_for("coord-b"));
        connect_with(&self.etcd.url(), tls.as_ref()).await.unwrap()
    }

    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        // Appended: a process started again under the same name continues its log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(bin());
        if self.etcd_tls {
            let tls = self.etcd_tls_for(name);
            let (cert, key) = tls.identity.unwrap();
            cmd.env("TRIBUTARY_ETCD_CA", tls.ca)
                .env("TRIBUTARY_ETCD_CERT", cert)
                .env("TRIBUTARY_ETCD_KEY", key);
        }
        let child = cmd
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

    pub fn worker(&mut self, name: &str, delay_ms: u64) {
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
    pub fn worker_allowing(&mut self, name: &str, delay_ms: u64, allow: &[&std::path::Path]) {
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

    pub fn coordinator(&mut self, name: &str) {
        self.spawn(name, &["coordinator"]);
    }

    pub fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        let p = self.procs.iter().find(|p| p.name == name).unwrap();
        std::fs::read_to_string(&p.log).unwrap_or_default()
    }

    pub fn signal(&mut self, name: &str, sig: &str) {
        let pid = self.proc(name).child.id().to_string();
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success(), "kill {sig} {name}");
    }

    /// Waits up to `secs` for `name` to exit (after a signal); returns how it exited.
    pub fn wait_exit(&mut self, name: &str, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.proc(name).child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                panic!("{name} still running after {secs} s\n{}", self.dump_logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `name` again (after it exited) with `args`: a new process, the same log.
    pub fn restart(&mut self, name: &str, args: &[&str]) {
        let at = self.procs.iter().position(|p| p.name == name).unwrap();
        let mut old = self.procs.remove(at);
        assert!(
            old.child.try_wait().unwrap().is_some(),
            "{name} is still running"
        );
        self.spawn(name, args);
    }

    /// How many times `name`'s log (all its runs) contains `needle`.
    pub fn log_count(&self, name: &str, needle: &str) -> usize {
        self.log(name).matches(needle).count()
    }

    pub fn dump_logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, self.log(&p.name)))
            .collect()
    }
}

pub fn spec(steps: u64) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        "base_model = \"builtin:linear\"\ndata = \"synthetic\"\nworkers = 2\n[train]\n\
         steps = {steps}\nbatch_size = 8\ngrad_accum = 4\nlr = 0.05\nseed = 5\ncheckpoint_every = 10\n"
    ))
    .unwrap()
}

/// The same job in embedded mode with one in-process worker: the reference result.
pub async fn embedded_digest(spec: JobSpec) -> Digest {
    let factory = Arc::new(LinearFactory);
    embedded_run(
        spec,
        factory,
        "cluster-e2e-reference",
        Duration::from_secs(30),
    )
    .await
}

/// The same LoRA job in embedded mode with one in-process worker running the real trainer.
pub async fn embedded_lora_digest(spec: JobSpec) -> Digest {
    embedded_run(
        spec,
        Arc::new(tributary_worker::DefaultFactory),
        "cluster-e2e-lora-reference",
        Duration::from_secs(120),
    )
    .await
}

/// Runs `spec` on one in-process worker with `factory` (artifacts in `memory://{store}`)
/// and returns its adapter's digest.
async fn embedded_run(
    spec: JobSpec,
    factory: Arc<dyn tributary_worker::ExecutorFactory>,
    store: &str,
    timeout: Duration,
) -> Digest {
    let node = NodeId::new("local").unwrap();
    let (w, _) = spawn_worker(WorkerCore::new(node.clone(), factory))
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
        artifacts: tributary_coordinator::Artifacts::open(&format!("memory://{store}")).unwrap(),
        tick: Duration::from_millis(20),
    })
    .await
    .unwrap();
    let id = client::submit(&c, spec).await.unwrap();
    let r = client::wait(&c, &id, timeout).await.unwrap();
    c.stop(None);
    assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    r.adapter_digest.unwrap()
}

pub async fn record(etcd: &EtcdClient, id: &JobId) -> Option<JobRecord> {
    list_jobs(etcd)
        .await
        .ok()?
        .into_iter()
        .find(|r| &r.id == id)
}

pub async fn wait_for(
    c: &Cluster,
    etcd: &EtcdClient,
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

pub fn log_has(c: &Cluster, name: &str, needle: &str) -> bool {
    c.log(name).contains(needle)
}

pub async fn wait_log(c: &Cluster, name: &str, needle: &str, secs: u64) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if log_has(c, name, needle) {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never logged {needle:?}\n{}", c.dump_logs());
}
