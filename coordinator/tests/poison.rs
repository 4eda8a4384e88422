//! A poison job beside a good one, in embedded mode with supervised worker actors: the
//! poison job's executor panics (killing its worker actor) on every run; the supervisor
//! restarts the actor, the coordinator retries the job a bounded number of times with
//! back-off and then fails it with the reason, and the good job, submitted after it,
//! finishes. Also measures what the poison job costs the good one (docs/benchmarks.md).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tributary_coordinator::{
    Artifacts, CoordinatorConfig, CoordinatorOptions, JobState, MemoryJobStore, RetryPolicy,
    StaticMembership, SystemClock, client, spawn_coordinator_with,
};
use tributary_protocol::{JobSpec, NodeId, WorkerInfo};
use tributary_worker::toy::LinearFactory;
use tributary_worker::{
    ExecError, ExecutorFactory, LocalLinkFactory, ShardExecutor, WorkerCore, WorkerMsg,
    spawn_worker,
};

/// `base_model = "builtin:poison"`: an executor that panics on its first gradient.
struct PoisonFactory;

struct Poison(Box<dyn ShardExecutor>);

impl ShardExecutor for Poison {
    fn gradients(
        &mut self,
        _step: u64,
        _mb: &tributary_protocol::MicroBatch,
    ) -> Result<tributary_worker::MicroGrad, ExecError> {
        panic!("poison executor: a bug reachable from input")
    }
    fn apply(&mut self, step: u64, summed: &[f32], tokens: u64) -> Result<(), ExecError> {
        self.0.apply(step, summed, tokens)
    }
    fn checkpoint(&self) -> Result<Vec<u8>, ExecError> {
        self.0.checkpoint()
    }
    fn restore(&mut self, state: &[u8]) -> Result<(), ExecError> {
        self.0.restore(state)
    }
    fn num_params(&self) -> usize {
        self.0.num_params()
    }
    fn sources(&self) -> tributary_worker::Sources {
        self.0.sources()
    }
    fn export(&self) -> Result<Vec<tributary_protocol::NamedFile>, ExecError> {
        self.0.export()
    }
}

impl ExecutorFactory for PoisonFactory {
    fn create(&self, spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError> {
        if spec.base_model == "builtin:poison" {
            let mut s = spec.clone();
            s.base_model = "builtin:linear".into();
            return Ok(Box::new(Poison(LinearFactory.create(&s)?)));
        }
        LinearFactory.create(spec)
    }
}

fn spec(base: &str, steps: u64) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        "base_model = \"{base}\"\ndata = \"synthetic\"\nworkers = 1\n\
         [train]\nsteps = {steps}\nbatch_size = 4\ngrad_accum = 2\nlr = 0.05\nseed = 3\n"
    ))
    .unwrap()
}

fn artifacts() -> Artifacts {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Artifacts::open(&format!("memory://{}-{n}", module_path!())).unwrap()
}

async fn cluster() -> (
    ractor::ActorRef<tributary_coordinator::CoordinatorMsg>,
    ractor::ActorRef<WorkerMsg>,
) {
    let node = NodeId::new("w0").unwrap();
    let (w, _) = spawn_worker(WorkerCore::new(node.clone(), Arc::new(PoisonFactory)))
        .await
        .unwrap();
    let mut links = LocalLinkFactory::new();
    links.insert(node.clone(), w.clone());
    let info = WorkerInfo {
        node,
        addr: String::new(),
        device: "cpu".into(),
        gpu: false,
        cores: 1,
        memory_bytes: 0,
        slots: 1,
        free_slots: 1,
        serving: None,
    };
    let (c, _) = spawn_coordinator_with(
        CoordinatorConfig {
            fencing: 1,
            membership: Arc::new(StaticMembership::new(vec![info])),
            store: Arc::new(MemoryJobStore::default()),
            links: Arc::new(links),
            artifacts: artifacts(),
            tick: Duration::from_millis(20),
        },
        CoordinatorOptions {
            retry: RetryPolicy {
                max_attempts: 3,
                backoff_ms: 100,
                max_backoff_ms: 1000,
            },
            clock: Arc::new(SystemClock),
        },
    )
    .await
    .unwrap();
    (c, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_retried_then_failed_and_the_good_job_beside_it_finishes() {
    // Baseline: the good job alone.
    let (c, _w) = cluster().await;
    let t0 = Instant::now();
    let id = client::submit(&c, spec("builtin:linear", 200))
        .await
        .unwrap();
    let alone = client::wait(&c, &id, Duration::from_secs(60))
        .await
        .unwrap();
    let alone_secs = t0.elapsed().as_secs_f64();
    assert_eq!(alone.state, JobState::Succeeded, "{alone:?}");
    c.stop(None);

    let (c, w) = cluster().await;
    let restarts_before = tributary_worker::metrics::ACTOR_RESTARTS.get();
    let t0 = Instant::now();
    let poison = client::submit(&c, spec("builtin:poison", 200))
        .await
        .unwrap();
    let good = client::submit(&c, spec("builtin:linear", 200))
        .await
        .unwrap();
    let good_rec = client::wait(&c, &good, Duration::from_secs(60))
        .await
        .unwrap();
    let beside_secs = t0.elapsed().as_secs_f64();
    assert_eq!(good_rec.state, JobState::Succeeded, "{good_rec:?}");
    assert_eq!(good_rec.progress.step, 200);
    assert_eq!(
        good_rec.adapter_digest, alone.adapter_digest,
        "same spec, same result"
    );
    let rec = client::wait(&c, &poison, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Failed, "{rec:?}");
    assert_eq!(rec.attempts, 3);
    let err = rec.error.clone().unwrap();
    assert!(err.contains("3 attempts"), "{err}");
    let queued_again = rec
        .log
        .iter()
        .filter(|l| l.msg.contains("queued again in"))
        .count();
    assert_eq!(queued_again, 2, "{:?}", rec.log);
    // The worker actor died on every attempt and was restarted each time.
    assert!(
        tributary_worker::metrics::ACTOR_RESTARTS.get() >= restarts_before + 3,
        "restarts: {}",
        tributary_worker::metrics::ACTOR_RESTARTS.get() - restarts_before
    );
    assert!(tributary_worker::metrics::actors_ready().is_ok());
    // And it still serves.
    let again = client::submit(&c, spec("builtin:linear", 5)).await.unwrap();
    let rec = client::wait(&c, &again, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    eprintln!(
        "poison figure: good job alone {alone_secs:.2} s, beside a poison job {beside_secs:.2} s"
    );
    c.stop(None);
    w.stop(None);
}
