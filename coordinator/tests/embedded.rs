//! The coordinator and worker actors in one process (embedded mode): in-process links,
//! in-memory membership and store. Data-parallel determinism, worker death, fencing,
//! cancellation and several jobs sharing the pool.
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
use std::time::Duration;

use ractor::ActorRef;
use tributary_coordinator::{
    Artifacts, CoordinatorConfig, CoordinatorMsg, JobRecord, JobState, JobStore, MemoryJobStore,
    StaticMembership, client, spawn_coordinator,
};
use tributary_protocol::{JobId, JobSpec, MicroBatch, NodeId, WorkerInfo};
use tributary_worker::toy::{DelayedFactory, LinearExecutor, LinearFactory};
use tributary_worker::{
    ExecutorFactory, LocalLinkFactory, ShardExecutor, WorkerCore, WorkerMsg, spawn_worker,
};

/// The linear executor with a delay per micro-batch, so a test can act mid-job.
fn slow() -> Arc<DelayedFactory> {
    Arc::new(DelayedFactory {
        inner: Arc::new(LinearFactory),
        delay: Duration::from_millis(3),
    })
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
    artifacts: Artifacts,
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
            gpu: false,
            cores: 1,
            memory_bytes: 1 << 30,
            slots,
            free_slots: slots,
            serving: None,
        });
        workers.push(a);
    }
    let store = Arc::new(MemoryJobStore::default());
    let membership = StaticMembership::new(infos);
    let arts = artifacts();
    let (coord, _) = spawn_coordinator(CoordinatorConfig {
        fencing,
        membership: Arc::new(membership.clone()),
        store: store.clone(),
        links: Arc::new(links),
        artifacts: arts.clone(),
        tick: Duration::from_millis(20),
    })
    .await
    .unwrap();
    Embedded {
        coord,
        workers,
        store,
        membership,
        artifacts: arts,
    }
}

/// The parameters in the job's last checkpoint (read through the record's pointer).
async fn final_params(arts: &Artifacts, rec: &JobRecord) -> (u64, Vec<f32>) {
    let cp = rec.checkpoint.as_ref().expect("a checkpoint pointer");
    let state = arts.load_checkpoint(cp).await.unwrap();
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
        let (step, params) = final_params(&e.artifacts, &rec).await;
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
    let want = fault_free_run(spec("2", 60)).await;

    let e = embedded(2, 1, 1, slow()).await;
    let id = client::submit(&e.coord, spec("2", 60)).await.unwrap();
    // Wait until the job is mid-way, then kill worker w1's actor outright.
    wait_for_step(&e.coord, &id, 15).await;
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
    assert!(recs[0].checkpoint.is_none());
}

#[tokio::test]
async fn cancel_stops_a_running_job_and_queued_jobs_wait_their_turn() {
    let e = embedded(1, 1, 1, slow()).await;
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

/// The job on two unslowed workers, run to success: what a run with faults must equal.
async fn fault_free_run(spec: JobSpec) -> JobRecord {
    let clean = embedded(2, 1, 1, Arc::new(LinearFactory)).await;
    let id = client::submit(&clean.coord, spec).await.unwrap();
    let rec = client::wait(&clean.coord, &id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Succeeded);
    rec
}

/// Polls the job until it has reached `step`; returns its record then.
async fn wait_for_step(coord: &ActorRef<CoordinatorMsg>, id: &JobId, step: u64) -> JobRecord {
    loop {
        let r = client::status(coord, Some(id.clone())).await.unwrap();
        if r[0].progress.step >= step {
            return r.into_iter().next().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fresh in-memory object store for checkpoints and adapters.
fn artifacts() -> tributary_coordinator::Artifacts {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    tributary_coordinator::Artifacts::open(&format!("memory://{}-{n}", module_path!())).unwrap()
}

#[tokio::test]
async fn a_replacement_worker_is_taken_in_and_the_adapter_is_unchanged() {
    let want = fault_free_run(spec("2", 80)).await;

    // Three workers; the job uses two, so w2 stays free until w1 dies.
    let e = embedded(3, 1, 1, slow()).await;
    let id = client::submit(&e.coord, spec("2", 80)).await.unwrap();
    let mid = wait_for_step(&e.coord, &id, 15).await;
    assert_eq!(mid.workers.len(), 2, "{:?}", mid.workers);
    assert!(!mid.workers.contains(&NodeId::new("w2").unwrap()));
    e.workers[1].kill();
    e.membership.remove(&NodeId::new("w1").unwrap());
    let got = client::wait(&e.coord, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.state, JobState::Succeeded, "{got:?}");
    assert_eq!(
        got.workers,
        vec![NodeId::new("w0").unwrap(), NodeId::new("w2").unwrap()],
        "the newcomer joined the survivor; log: {:?}",
        got.log
    );
    assert!(got.log.iter().any(|l| l.msg.contains("w2 joined")));
    assert_eq!(got.adapter_digest, want.adapter_digest);
}

#[tokio::test]
async fn epoch_specs_count_steps_from_the_dataset_size_the_workers_report() {
    let e = embedded(2, 1, 1, Arc::new(LinearFactory)).await;
    let spec = JobSpec::from_toml_str(
        "base_model = \"builtin:linear\"\ndata = \"synthetic\"\nworkers = 2\n\
         [train]\nepochs = 2\nbatch_size = 12\ngrad_accum = 6\nlr = 0.05\nseed = 11\n",
    )
    .unwrap();
    let id = client::submit(&e.coord, spec).await.unwrap();
    let rec = client::wait(&e.coord, &id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    // 1024 examples in batches of 12: 86 steps per epoch.
    let per_epoch = tributary_worker::toy::EXAMPLES.div_ceil(12);
    assert_eq!(per_epoch, 86);
    assert_eq!(rec.examples, Some(tributary_worker::toy::EXAMPLES));
    assert_eq!(rec.progress.total_steps, 2 * per_epoch);
    assert_eq!(rec.progress.step, 2 * per_epoch);
    let (step, _) = final_params(&e.artifacts, &rec).await;
    assert_eq!(step, 2 * per_epoch, "the workers trained every step");
}

#[tokio::test]
async fn the_trained_adapter_is_registered_with_its_provenance() {
    let e = embedded(1, 1, 1, Arc::new(LinearFactory)).await;
    let id = client::submit(&e.coord, spec("1", 12)).await.unwrap();
    let rec = client::wait(&e.coord, &id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    let digest = rec.adapter_digest.unwrap();
    let registry = e.artifacts.registry();
    let entry = registry.get(&digest.to_hex()).await.unwrap().unwrap();
    assert_eq!(entry.job_id, id.to_string());
    assert_eq!(Some(entry.location.clone()), rec.adapter);
    assert_eq!(
        Some(entry.base_model_digest.clone()),
        rec.base_model_digest.map(|d| d.to_hex())
    );
    assert_eq!(
        Some(entry.data_digest.clone()),
        rec.data_digest.map(|d| d.to_hex())
    );
    assert_eq!(entry.spec["train"]["steps"], 12);
    // The digest names the adapter's files, not the checkpoint's bytes.
    let files = registry.files(&entry).await.unwrap();
    assert_eq!(
        entry.files,
        vec!["adapter_config.json", "adapter_model.safetensors"]
    );
    assert_eq!(
        tributary_ledger::adapters::adapter_digest(&files),
        digest.to_hex()
    );
    assert_ne!(Some(digest), rec.checkpoint.map(|c| c.digest));
    // The job's log tells its story.
    let log: Vec<&str> = rec.log.iter().map(|l| l.msg.as_str()).collect();
    assert_eq!(log[0], "queued");
    assert!(
        log.iter().any(|l| l.starts_with("placed on workers w0")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("step 12/12 loss")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("checkpoint at step 10")),
        "{log:?}"
    );
    assert_eq!(log.last(), Some(&"succeeded"));
}
