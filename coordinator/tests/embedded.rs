//! The coordinator and worker actors in one process (embedded mode): in-process links,
//! in-memory membership and store. Data-parallel determinism, worker death, fencing,
//! cancellation and several jobs sharing the pool.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use tributary_coordinator::{
    Checkpoint, CoordinatorConfig, CoordinatorMsg, JobState, JobStore, MemoryJobStore,
    StaticMembership, client, spawn_coordinator,
};
use tributary_protocol::{JobSpec, MicroBatch, NodeId, WorkerInfo};
use tributary_worker::toy::{LinearExecutor, LinearFactory};
use tributary_worker::{
    ExecError, ExecutorFactory, LocalLinkFactory, MicroGrad, ShardExecutor, WorkerCore, WorkerMsg,
    spawn_worker,
};

/// Wraps the linear executor with a delay per micro-batch so a test can act mid-job.
struct Slow(Box<dyn ShardExecutor>);
impl ShardExecutor for Slow {
    fn gradients(&mut self, step: u64, mb: &MicroBatch) -> Result<MicroGrad, ExecError> {
        std::thread::sleep(Duration::from_millis(3));
        self.0.gradients(step, mb)
    }
    fn apply(&mut self, step: u64, g: &[f32], tokens: u64) -> Result<(), ExecError> {
        self.0.apply(step, g, tokens)
    }
    fn checkpoint(&self) -> Result<Vec<u8>, ExecError> {
        self.0.checkpoint()
    }
    fn restore(&mut self, s: &[u8]) -> Result<(), ExecError> {
        self.0.restore(s)
    }
    fn num_params(&self) -> usize {
        self.0.num_params()
    }
}
struct SlowFactory;
impl ExecutorFactory for SlowFactory {
    fn create(&self, spec: &JobSpec) -> Result<Box<dyn ShardExecutor>, ExecError> {
        Ok(Box::new(Slow(LinearFactory.create(spec)?)))
    }
}

fn spec(workers: &str, steps: u64) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        "base_model = \"builtin:linear\"\ndata = \"synthetic\"\nworkers = {workers}\n\
         [train]\nsteps = {steps}\nbatch_size = 12\ngrad_accum = 6\nlr = 0.05\nwarmup = 3\nseed = 11\ncheckpoint_every = 10\n"
    ))
    .unwrap()
}

struct Embedded {
    coord: ActorRef<CoordinatorMsg>,
    workers: Vec<ActorRef<WorkerMsg>>,
    store: Arc<MemoryJobStore>,
    membership: StaticMembership,
}

async fn embedded(
    n: usize,
    slots: u32,
    fencing: u64,
    factory: Arc<dyn ExecutorFactory>,
) -> Embedded {
    let mut links = LocalLinkFactory::new();
    let mut infos = Vec::new();
    let mut workers = Vec::new();
    for i in 0..n {
        let node = NodeId::new(format!("w{i}")).unwrap();
        let (a, _) = spawn_worker(WorkerCore::new(node.clone(), factory.clone()))
            .await
            .unwrap();
        links.insert(node.clone(), a.clone());
        infos.push(WorkerInfo {
            node,
            addr: String::new(),
            device: "cpu".into(),
            cores: 1,
            memory_bytes: 1 << 30,
            slots,
            free_slots: slots,
        });
        workers.push(a);
    }
    let store = Arc::new(MemoryJobStore::default());
    let membership = StaticMembership::new(infos);
    let (coord, _) = spawn_coordinator(CoordinatorConfig {
        fencing,
        membership: Arc::new(membership.clone()),
        store: store.clone(),
        links: Arc::new(links),
        tick: Duration::from_millis(20),
    })
    .await
    .unwrap();
    Embedded {
        coord,
        workers,
        store,
        membership,
    }
}

async fn final_params(store: &MemoryJobStore, job: &tributary_protocol::JobId) -> (u64, Vec<f32>) {
    let Checkpoint { state, .. } = store.checkpoint(job).await.unwrap().unwrap();
    LinearExecutor::params_of_checkpoint(&state).unwrap()
}

#[tokio::test]
async fn one_and_two_workers_train_bit_identical_parameters() {
    let mut results = Vec::new();
    for workers in ["1", "2", "3"] {
        let e = embedded(3, 1, 1, Arc::new(LinearFactory)).await;
        let id = client::submit(&e.coord, spec(workers, 40)).await.unwrap();
        let rec = client::wait(&e.coord, &id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
        assert_eq!(rec.workers.len(), workers.parse::<usize>().unwrap());
        assert_eq!(rec.progress.step, 40);
        let (step, params) = final_params(&e.store, &id).await;
        assert_eq!(step, 40);
        results.push((rec.adapter_digest.unwrap(), params, rec.final_loss.unwrap()));
        e.coord.stop(None);
    }
    let (d1, p1, l1) = &results[0];
    for (d, p, l) in &results[1..] {
        assert_eq!(d, d1, "adapter digests differ across worker counts");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(p), bits(p1));
        assert_eq!(l.to_bits(), l1.to_bits());
    }
    // Training did something: the loss went down from the untrained model's.
    let mut fresh = LinearExecutor::new(&spec("1", 40));
    let mb = MicroBatch {
        index: 0,
        start: 0,
        len: 12,
    };
    let g = fresh.gradients(0, &mb).unwrap();
    let initial = (g.loss_sum / g.tokens as f64) as f32;
    assert!(*l1 < initial * 0.5, "loss {initial} -> {l1}");
}

#[tokio::test]
async fn killed_worker_mid_job_is_resharded_and_matches_a_fault_free_run() {
    let clean = embedded(2, 1, 1, Arc::new(LinearFactory)).await;
    let id = client::submit(&clean.coord, spec("2", 60)).await.unwrap();
    let want = client::wait(&clean.coord, &id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(want.state, JobState::Succeeded);

    let e = embedded(2, 1, 1, Arc::new(SlowFactory)).await;
    let id = client::submit(&e.coord, spec("2", 60)).await.unwrap();
    // Wait until the job is mid-way, then kill worker w1's actor outright.
    loop {
        let r = client::status(&e.coord, Some(id.clone())).await.unwrap();
        if r[0].progress.step >= 15 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    e.workers[1].kill();
    e.membership.remove(&NodeId::new("w1").unwrap());
    let got = client::wait(&e.coord, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.state, JobState::Succeeded, "{got:?}");
    assert_eq!(
        got.workers,
        vec![NodeId::new("w0").unwrap()],
        "finished on the survivor"
    );
    assert_eq!(got.adapter_digest, want.adapter_digest);
}

#[tokio::test]
async fn worker_refuses_a_stale_leader_and_the_job_is_not_run() {
    let e = embedded(1, 1, 5, Arc::new(LinearFactory)).await;
    // A newer leader (token 9) has already spoken to the worker.
    let newer = tributary_protocol::Payload::bare(tributary_protocol::Command {
        fencing: 9,
        job: tributary_protocol::JobId::new("job-x").unwrap(),
        body: tributary_protocol::CommandBody::Ping,
    });
    let _ = e.workers[0]
        .call(|tx| WorkerMsg::Command(newer, tx), None)
        .await
        .unwrap();
    let id = client::submit(&e.coord, spec("1", 5)).await.unwrap();
    // The stale coordinator steps down (its actor stops) instead of running the job.
    let mut stopped = false;
    for _ in 0..200 {
        if client::status(&e.coord, Some(id.clone())).await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stopped, "stale coordinator kept running");
    let recs = e.store.list().await.unwrap();
    assert_ne!(recs[0].state, JobState::Succeeded);
    assert!(e.store.checkpoint(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn cancel_stops_a_running_job_and_queued_jobs_wait_their_turn() {
    let e = embedded(1, 1, 1, Arc::new(SlowFactory)).await;
    let long = client::submit(&e.coord, spec("1", 100_000)).await.unwrap();
    let next = client::submit(&e.coord, spec("1", 5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let recs = client::status(&e.coord, None).await.unwrap();
    let state = |id| recs.iter().find(|r| &r.id == id).unwrap().state;
    assert_eq!(state(&long), JobState::Running);
    assert_eq!(
        state(&next),
        JobState::Queued,
        "one slot: the second job waits"
    );
    client::cancel(&e.coord, long.clone()).await.unwrap();
    let r = client::wait(&e.coord, &long, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Cancelled);
    let r = client::wait(&e.coord, &next, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Succeeded);
    let err = client::cancel(&e.coord, next)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("succeeded"), "{err}");
}

#[tokio::test]
async fn several_jobs_share_the_pool_and_all_finish() {
    let e = embedded(2, 2, 1, Arc::new(LinearFactory)).await;
    let mut ids = Vec::new();
    for w in ["\"auto\"", "1", "2", "\"auto\""] {
        ids.push(client::submit(&e.coord, spec(w, 20)).await.unwrap());
    }
    let mut digests = Vec::new();
    for id in &ids {
        let r = client::wait(&e.coord, id, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
        digests.push(r.adapter_digest.unwrap());
    }
    // Same spec and seed: the same adapter whatever the placement.
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}
