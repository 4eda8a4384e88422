//! Checkpoints in object storage, on a local directory (`file://`) and on a real S3 API
//! server (moto): the record holds only the pointer (key, digest), a new coordinator resumes
//! a job from it and ends with the same adapter as a fault-free run, and a checkpoint whose
//! bytes do not match the record's digest is refused.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::Duration;

use tributary_coordinator::{
    Artifacts, CoordinatorConfig, JobState, JobStore, MemoryJobStore, StaticMembership, client,
    spawn_coordinator,
};
use tributary_ledger::testkit::{MotoServer, init_crypto};
use tributary_protocol::{JobId, JobSpec, NodeId, WorkerInfo};
use tributary_worker::toy::{DelayedFactory, LinearFactory};
use tributary_worker::{ExecutorFactory, LocalLinkFactory, WorkerCore, spawn_worker};

fn spec() -> JobSpec {
    JobSpec::from_toml_str(
        "base_model = \"builtin:linear\"\ndata = \"synthetic\"\nworkers = 1\n\
         [train]\nsteps = 60\nbatch_size = 8\ngrad_accum = 2\nlr = 0.05\nseed = 4\ncheckpoint_every = 10\n",
    )
    .unwrap()
}

async fn coordinator(
    store: Arc<MemoryJobStore>,
    artifacts: Artifacts,
    factory: Arc<dyn ExecutorFactory>,
) -> ractor::ActorRef<tributary_coordinator::CoordinatorMsg> {
    let node = NodeId::new("w0").unwrap();
    let (w, _) = spawn_worker(WorkerCore::new(node.clone(), factory))
        .await
        .unwrap();
    let mut links = LocalLinkFactory::new();
    links.insert(node.clone(), w);
    let (c, _) = spawn_coordinator(CoordinatorConfig {
        fencing: 1,
        membership: Arc::new(StaticMembership::new(vec![WorkerInfo::in_process(node)])),
        store,
        links: Arc::new(links),
        artifacts,
        tick: Duration::from_millis(20),
    })
    .await
    .unwrap();
    c
}

async fn record(store: &MemoryJobStore, id: &JobId) -> tributary_coordinator::JobRecord {
    store
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| &r.id == id)
        .unwrap()
}

async fn resume_from_object_storage(url: &str) {
    let artifacts = Artifacts::open(url).unwrap();
    // Fault-free reference.
    let c = coordinator(
        Arc::new(MemoryJobStore::default()),
        artifacts.clone(),
        Arc::new(LinearFactory),
    )
    .await;
    let id = client::submit(&c, spec()).await.unwrap();
    let want = client::wait(&c, &id, Duration::from_secs(20))
        .await
        .unwrap();
    c.stop(None);
    assert_eq!(want.state, JobState::Succeeded);

    // First coordinator: slow worker, stopped once a checkpoint past step 20 is recorded.
    let records = Arc::new(MemoryJobStore::default());
    let slow = Arc::new(DelayedFactory {
        inner: Arc::new(LinearFactory),
        delay: Duration::from_millis(5),
    });
    let a = coordinator(records.clone(), artifacts.clone(), slow).await;
    let id = client::submit(&a, spec()).await.unwrap();
    let cp = loop {
        let rec = record(&records, &id).await;
        if let Some(cp) = rec.checkpoint.filter(|c| c.step >= 20) {
            break cp;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    a.stop(None);
    assert!(cp.key.starts_with(&format!("checkpoints/{id}/")), "{cp:?}");
    assert!(cp.key.contains(&cp.digest.to_hex()));
    // The record holds the pointer, the store the bytes.
    let bytes = artifacts.load_checkpoint(&cp).await.unwrap();
    assert_eq!(bytes.len() as u64, cp.bytes);
    let mut wrong = cp.clone();
    wrong.digest = tributary_protocol::Digest::of(b"something else");
    let err = artifacts.load_checkpoint(&wrong).await.unwrap_err();
    assert!(err.to_string().contains("hashes to"), "{err}");

    // A second coordinator over the same records and store resumes and finishes.
    let b = coordinator(records.clone(), artifacts.clone(), Arc::new(LinearFactory)).await;
    let got = client::wait(&b, &id, Duration::from_secs(20))
        .await
        .unwrap();
    b.stop(None);
    assert_eq!(got.state, JobState::Succeeded, "{got:?}");
    assert!(
        got.log
            .iter()
            .any(|l| l.msg.starts_with("resumed from the checkpoint at step")),
        "{:?}",
        got.log
    );
    assert_eq!(got.adapter_digest, want.adapter_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_checkpoint_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    resume_from_object_storage(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_checkpoint_on_s3_moto() {
    init_crypto();
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket("checkpoints").unwrap();
    resume_from_object_storage(&moto.url("checkpoints", "jobs")).await;
}
