//! `tributary bench cluster`: what running a job as a cluster costs. One LoRA job (same
//! spec, seed and global batch) runs first on one in-process worker, then on two
//! `tributary worker` processes over QUIC with mutual TLS (registered in a real etcd), both
//! driven by a coordinator actor in this process behind [`TimedLinks`]; the difference of
//! the median step times is the coordination overhead, and the QUIC byte counters give the
//! traffic per step. A run on one worker process separates the transport's cost from the
//! gain of two processes computing in parallel. Then the failover ([`crate::failover`]).
// A load generator measures real latency and waits on real deadlines.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tributary_coordinator::etcd::{EtcdMembership, connect};
use tributary_coordinator::local_etcd::EtcdServer;
use tributary_coordinator::{
    Artifacts, CoordinatorConfig, JobRecord, JobState, Membership, MemoryJobStore,
    StaticMembership, client, spawn_coordinator,
};
use tributary_protocol::link::{LinkFactory, QuicLinkFactory};
use tributary_protocol::metrics::BytesTotals;
use tributary_protocol::{JobSpec, NodeId, NodeTls, ShutdownController, WorkerInfo};
use tributary_worker::{DefaultFactory, LocalLinkFactory, WorkerCore, spawn_worker};

use crate::failover::FailoverFigures;
use crate::processes::{Processes, free_udp_port};
use crate::step_timer::{StepLog, TimedLinks, median, step_seconds};

/// Tokenizer files copied into the model directory when the config has none beside it.
const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
];
/// How long one job may take before the bench gives up.
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often the coordinators re-read membership and the store.
const TICK: Duration = Duration::from_millis(50);
/// Errors of the cluster bench, each saying which part failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterBenchError {
    #[error("bench setup: {0}")]
    Setup(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("job on {run}: {reason}")]
    Job { run: &'static str, reason: String },
}

fn setup(e: impl std::fmt::Display) -> ClusterBenchError {
    ClusterBenchError::Setup(e.to_string())
}

fn cluster(e: impl std::fmt::Display) -> ClusterBenchError {
    ClusterBenchError::Cluster(e.to_string())
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct ClusterBench {
    /// The `tributary` binary (workers and the killed coordinator run as its subcommands).
    pub exe: PathBuf,
    /// config.json-style model configuration (random weights are made for it).
    pub config: PathBuf,
    /// Where tokenizer files come from when none lie beside `config`.
    pub tokenizer_dir: PathBuf,
    /// Training data (JSONL).
    pub data: PathBuf,
    /// Timed steps per run.
    pub steps: u64,
    /// Steps at the start of each run left out of the medians.
    pub warmup: usize,
    /// Global batch (examples per step) and micro-batches per step.
    pub batch_size: u32,
    pub grad_accum: u32,
    /// LoRA rank (alpha = 2·rank) and target modules.
    pub rank: u32,
    pub targets: Vec<String>,
    pub seed: u64,
    /// Lease TTL in seconds for worker registration and leadership.
    pub lease_ttl: i64,
    /// Steps of the failover job (0: skip the failover part).
    pub failover_steps: u64,
}

/// One run's step figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub workers: usize,
    pub median_step_s: f64,
    pub timed_steps: usize,
    pub final_loss: Option<f32>,
}

/// The one JSON line `tributary bench cluster` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub config: String,
    pub batch_size: u32,
    pub grad_accum: u32,
    pub lora_rank: u32,
    pub in_process: RunFigures,
    /// One `tributary worker` process over QUIC (transport and process cost alone).
    pub quic_one_process: RunFigures,
    /// Two `tributary worker` processes over QUIC.
    pub quic: RunFigures,
    /// Median two-process step minus median in-process step (the issue's comparison; on a
    /// machine with cores to spare it includes the gain of computing in parallel).
    pub overhead_s_per_step: f64,
    /// Median two-process step over median in-process step.
    pub overhead_ratio: f64,
    /// Median one-process step minus (and over) median in-process step.
    pub one_process_overhead_s_per_step: f64,
    pub one_process_overhead_ratio: f64,
    /// f32 gradient tensor bytes the workers returned per step (all micro-batches).
    pub gradient_bytes_per_step: u64,
    /// The coordinator's QUIC stream bytes per step (`tributary_quic_*_bytes_total`).
    pub quic_received_bytes_per_step: u64,
    pub quic_sent_bytes_per_step: u64,
    /// Whether the three runs produced the same adapter digest.
    pub same_adapter: bool,
    pub failover: Option<FailoverFigures>,
}

pub(crate) fn node(name: &str) -> Result<NodeId, ClusterBenchError> {
    NodeId::new(name).map_err(setup)
}

fn absolute(p: &Path) -> Result<PathBuf, ClusterBenchError> {
    std::fs::canonicalize(p).map_err(|e| setup(format!("{}: {e}", p.display())))
}

impl ClusterBench {
    pub(crate) fn spec(
        &self,
        model: &Path,
        workers: u32,
        steps: u64,
        lora: (u32, &[String]),
        checkpoint_every: Option<u64>,
    ) -> Result<JobSpec, ClusterBenchError> {
        let (rank, targets) = lora;
        let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        let mut toml = format!(
            "base_model = {:?}\ndata = {:?}\nworkers = {workers}\n[lora]\nrank = {}\nalpha = {}\n\
             target_modules = [{}]\n[train]\nsteps = {steps}\nbatch_size = {}\ngrad_accum = {}\n\
             lr = 2e-4\nseed = {}\n",
            model.display().to_string(),
            absolute(&self.data)?.display().to_string(),
            rank,
            2 * rank,
            targets.join(", "),
            self.batch_size,
            self.grad_accum,
            self.seed,
        );
        if let Some(n) = checkpoint_every {
            toml.push_str(&format!("checkpoint_every = {n}\n"));
        }
        JobSpec::from_toml_str(&toml).map_err(setup)
    }

    /// Makes the random checkpoint with `tributary model init`, plus tokenizer files.
    fn make_model(&self, out: &Path) -> Result<(), ClusterBenchError> {
        let status = Command::new(&self.exe)
            .args(["model", "init", "--seed", "0", "--config"])
            .arg(absolute(&self.config)?)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .status()
            .map_err(setup)?;
        if !status.success() {
            return Err(setup(format!("tributary model init exited with {status}")));
        }
        for f in TOKENIZER_FILES {
            let (src, dst) = (self.tokenizer_dir.join(f), out.join(f));
            if !dst.exists() && src.is_file() {
                std::fs::copy(&src, &dst).map_err(|e| setup(format!("{}: {e}", src.display())))?;
            }
        }
        Ok(())
    }

    /// Runs the whole bench on its own async runtime.
    pub fn run(&self) -> Result<ClusterReport, ClusterBenchError> {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(setup)?
            .block_on(self.run_async())
    }

    async fn run_async(&self) -> Result<ClusterReport, ClusterBenchError> {
        let tmp = tempfile::tempdir().map_err(setup)?;
        let model = tmp.path().join("model");
        self.make_model(&model)?;
        let certs = tmp.path().join("certs");
        tributary_protocol::certs::init_ca(&certs).map_err(setup)?;
        for n in ["w1", "w2", "coord-a", "bench"] {
            tributary_protocol::certs::issue(&certs, &node(n)?).map_err(setup)?;
        }

        // Checkpoints and adapters of every run (and of the failover's coordinator process).
        let store = tmp.path().join("store");
        let artifacts = Artifacts::open(&store.display().to_string()).map_err(setup)?;

        // 1. One in-process worker.
        let lora = (self.rank, self.targets.as_slice());
        let spec1 = self.spec(&model, 1, self.steps, lora, None)?;
        let (local_rec, local_log) = in_process_run(&artifacts, spec1).await?;

        // 2. Two worker processes over QUIC, found through etcd.
        let etcd = EtcdServer::start().map_err(setup)?;
        let client = connect(&etcd.url()).await.map_err(setup)?;
        let mut procs = Processes::default();
        for w in ["w1", "w2"] {
            let args = self.process_args(
                "worker",
                w,
                &etcd.url(),
                &certs,
                &[
                    "--listen".into(),
                    format!("127.0.0.1:{}", free_udp_port()?),
                    // The model is made in `tmp`; the data is the bench's own file.
                    "--allow-path".into(),
                    tmp.path().display().to_string(),
                    "--allow-path".into(),
                    absolute(&self.data)?
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                ],
            );
            procs.spawn(&self.exe, w, &args, tmp.path())?;
        }
        let ctl = ShutdownController::new();
        let membership = Arc::new(EtcdMembership::start(client.clone(), ctl.subscribe()));
        wait_for_workers(membership.as_ref(), 2, &procs).await?;
        let bench_tls = NodeTls::load(&certs, &node("bench")?).map_err(setup)?;
        let quic: Arc<dyn LinkFactory> =
            Arc::new(QuicLinkFactory::new(node("bench")?, bench_tls.clone()));
        let spec_one = self.spec(&model, 1, self.steps, lora, None)?;
        let (one_rec, one_log) = timed_run(
            &artifacts,
            quic.clone(),
            membership.clone(),
            spec_one,
            QUIC_ONE,
        )
        .await?;
        let spec_two = self.spec(&model, 2, self.steps, lora, None)?;
        let (quic_rec, quic_log) = timed_run(
            &artifacts,
            quic.clone(),
            membership.clone(),
            spec_two,
            QUIC_TWO,
        )
        .await?;

        let local = figures(1, IN_PROCESS, &local_rec, &local_log, self.warmup)?;
        let one = figures(1, QUIC_ONE, &one_rec, &one_log, self.warmup)?;
        let remote = figures(2, QUIC_TWO, &quic_rec, &quic_log, self.warmup)?;
        let steps = quic_log.snapshot();
        let per_step = |f: fn(&BytesTotals) -> u64| {
            let v: Vec<f64> = steps
                .values()
                .filter_map(|t| Some(f(&t.quic_applied?.since(t.quic_started)) as f64))
                .collect();
            median(&v).unwrap_or(0.0) as u64
        };
        let gradient_bytes = median(
            &steps
                .values()
                .map(|t| t.gradient_bytes as f64)
                .collect::<Vec<_>>(),
        )
        .unwrap_or(0.0) as u64;

        let failover = if self.failover_steps > 0 {
            let f = self
                .failover(
                    &model,
                    &certs,
                    &etcd,
                    &client,
                    quic,
                    &artifacts,
                    &mut procs,
                    tmp.path(),
                )
                .await;
            Some(f.map_err(|e| {
                cluster(format!(
                    "{e}\n--- coord-a log ---\n{}",
                    procs.log("coord-a")
                ))
            })?)
        } else {
            None
        };
        stop(ctl).await;
        Ok(ClusterReport {
            config: self.config.display().to_string(),
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lora_rank: self.rank,
            overhead_s_per_step: remote.median_step_s - local.median_step_s,
            overhead_ratio: remote.median_step_s / local.median_step_s,
            one_process_overhead_s_per_step: one.median_step_s - local.median_step_s,
            one_process_overhead_ratio: one.median_step_s / local.median_step_s,
            in_process: local,
            quic_one_process: one,
            quic: remote,
            gradient_bytes_per_step: gradient_bytes,
            quic_received_bytes_per_step: per_step(|b| b.received),
            quic_sent_bytes_per_step: per_step(|b| b.sent),
            same_adapter: local_rec.adapter_digest.is_some()
                && local_rec.adapter_digest == quic_rec.adapter_digest
                && local_rec.adapter_digest == one_rec.adapter_digest,
            failover,
        })
    }

    pub(crate) fn process_args(
        &self,
        role: &str,
        name: &str,
        etcd: &str,
        certs: &Path,
        extra: &[String],
    ) -> Vec<String> {
        let mut args = vec![
            role.to_string(),
            "--name".into(),
            name.into(),
            "--etcd".into(),
            etcd.into(),
            "--certs".into(),
            certs.display().to_string(),
            "--lease-ttl".into(),
            self.lease_ttl.to_string(),
        ];
        args.extend_from_slice(extra);
        args
    }
}

/// Signals shutdown and waits (a bounded time) for the listeners to finish.
pub(crate) async fn stop(ctl: ShutdownController) {
    let _ = tokio::time::timeout(Duration::from_secs(10), ctl.shutdown()).await;
}

const IN_PROCESS: &str = "1 in-process worker";
const QUIC_ONE: &str = "1 QUIC worker process";
const QUIC_TWO: &str = "2 QUIC worker processes";

/// Runs `spec` to success on a fresh coordinator (fencing token 1, in-memory store) whose
/// links are timed.
async fn timed_run(
    artifacts: &Artifacts,
    links: Arc<dyn LinkFactory>,
    membership: Arc<dyn Membership>,
    spec: JobSpec,
    run: &'static str,
) -> Result<(JobRecord, Arc<StepLog>), ClusterBenchError> {
    let log = Arc::new(StepLog::default());
    let (coord, _) = spawn_coordinator(CoordinatorConfig {
        fencing: 1,
        membership,
        store: Arc::new(MemoryJobStore::default()),
        links: Arc::new(TimedLinks::new(links, log.clone())),
        artifacts: artifacts.clone(),
        tick: TICK,
    })
    .await
    .map_err(cluster)?;
    let rec = run_job(&coord, spec, run).await;
    coord.stop(None);
    Ok((rec?, log))
}

/// The job on one worker actor in this process, with in-memory membership and store.
async fn in_process_run(
    artifacts: &Artifacts,
    spec: JobSpec,
) -> Result<(JobRecord, Arc<StepLog>), ClusterBenchError> {
    let me = node("local")?;
    let (worker, _) = spawn_worker(WorkerCore::new(me.clone(), Arc::new(DefaultFactory)))
        .await
        .map_err(setup)?;
    let mut links = LocalLinkFactory::new();
    links.insert(me.clone(), worker.clone());
    let membership = StaticMembership::new(vec![WorkerInfo::in_process(me)]);
    let run = timed_run(
        artifacts,
        Arc::new(links),
        Arc::new(membership),
        spec,
        IN_PROCESS,
    )
    .await;
    worker.stop(None);
    run
}

async fn run_job(
    coord: &ractor::ActorRef<tributary_coordinator::CoordinatorMsg>,
    spec: JobSpec,
    run: &'static str,
) -> Result<JobRecord, ClusterBenchError> {
    let job = |reason: String| ClusterBenchError::Job { run, reason };
    let id = client::submit(coord, spec)
        .await
        .map_err(|e| job(e.to_string()))?;
    let rec = client::wait(coord, &id, JOB_TIMEOUT)
        .await
        .map_err(|e| job(e.to_string()))?;
    if rec.state != JobState::Succeeded {
        return Err(job(format!("ended {} ({:?})", rec.state, rec.error)));
    }
    Ok(rec)
}

fn figures(
    workers: usize,
    run: &'static str,
    rec: &JobRecord,
    log: &StepLog,
    warmup: usize,
) -> Result<RunFigures, ClusterBenchError> {
    let secs = step_seconds(&log.snapshot(), warmup);
    let median_step_s = median(&secs).ok_or_else(|| ClusterBenchError::Job {
        run,
        reason: format!(
            "no timed steps (warm-up {warmup} of {} steps)",
            rec.progress.step
        ),
    })?;
    Ok(RunFigures {
        workers,
        median_step_s,
        timed_steps: secs.len(),
        final_loss: rec.final_loss,
    })
}

async fn wait_for_workers(
    m: &dyn Membership,
    n: usize,
    procs: &Processes,
) -> Result<(), ClusterBenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if m.workers().await.map(|w| w.len()).unwrap_or(0) >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(cluster(format!(
                "{n} workers did not register within 60 s\n--- w1 ---\n{}\n--- w2 ---\n{}",
                procs.log("w1"),
                procs.log("w2")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
