//! Against a real etcd started by the test (Debian's `etcd` on loopback, temp data dir):
//! membership with leases and watch, leader election with fencing tokens, job records that
//! a new leader resumes, and an etcd restart under a running job. Workers here are real
//! worker actors reached in-process; the QUIC path is covered by the end-to-end tests.
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

use tributary_coordinator::etcd::{
    EtcdJobStore, EtcdMembership, campaign, connect, list_jobs, register_worker, submit_job,
};
use tributary_coordinator::local_etcd::EtcdServer;
use tributary_coordinator::{
    CoordError, CoordinatorConfig, EtcdJobs, JobApi, JobRecord, JobState, JobStore, Membership,
    StaticMembership, spawn_coordinator,
};
use tributary_protocol::{JobId, JobSpec, NodeId, ShutdownController, WorkerInfo};
use tributary_worker::toy::{DelayedFactory, LinearFactory};
use tributary_worker::{ExecutorFactory, LocalLinkFactory, WorkerCore, spawn_worker};

fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("{e}"))
}

fn info(n: &str) -> WorkerInfo {
    WorkerInfo {
        node: NodeId::new(n).unwrap(),
        addr: "127.0.0.1:1".into(),
        device: "cpu".into(),
        gpu: false,
        cores: 2,
        memory_bytes: 1 << 30,
        slots: 1,
        free_slots: 1,
        serving: None,
    }
}

async fn eventually<F: AsyncFnMut() -> bool>(what: &str, secs: u64, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn names(m: &EtcdMembership) -> Vec<String> {
    m.workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.node.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_register_under_leases_and_the_watch_follows_them() {
    let server = etcd();
    let client = connect(&server.url()).await.unwrap();
    let ctl = ShutdownController::new();
    let membership = EtcdMembership::start(client.clone(), ctl.subscribe());
    let w1 = ShutdownController::new();
    register_worker(client.clone(), info("w1"), 2, w1.subscribe())
        .await
        .unwrap();
    let w2 = register_worker(client.clone(), info("w2"), 2, ctl.subscribe())
        .await
        .unwrap();
    eventually("both workers", 5, async || {
        names(&membership).await == ["w1", "w2"]
    })
    .await;
    let got = membership.workers().await.unwrap();
    assert_eq!(got[0], info("w1"), "capacity travels with the registration");
    // Kept alive past several TTLs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(names(&membership).await, ["w1", "w2"]);
    // Graceful shutdown revokes the lease at once.
    w1.shutdown().await;
    eventually("w1 gone", 3, async || names(&membership).await == ["w2"]).await;
    // A crashed worker (no keep-alive, no revoke) expires with its lease.
    w2.abort();
    eventually("w2 expired", 8, async || {
        names(&membership).await.is_empty()
    })
    .await;
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_tokens_increase_and_a_deposed_leader_cannot_write() {
    let server = etcd();
    let client = connect(&server.url()).await.unwrap();
    let a_ctl = ShutdownController::new();
    let a = campaign(
        &client,
        &NodeId::new("coord-a").unwrap(),
        2,
        &a_ctl.subscribe(),
    )
    .await
    .unwrap();
    let a_store = EtcdJobStore::new(client.clone(), &a);
    let spec = JobSpec::from_toml_str(
        "base_model = \"builtin:linear\"\ndata = \"d\"\n[train]\nsteps = 1\n",
    )
    .unwrap();
    let rec = JobRecord::queued(JobId::new("job-1").unwrap(), 0, spec);
    a_store.put(&rec).await.unwrap();
    // B campaigns while A leads: it must wait.
    let b_ctl = ShutdownController::new();
    let b_sd = b_ctl.subscribe();
    let b_client = client.clone();
    let b = tokio::spawn(async move {
        campaign(&b_client, &NodeId::new("coord-b").unwrap(), 2, &b_sd).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_finished(), "B became leader while A held the lease");
    // A goes away (its lease is revoked): B takes over with a higher token.
    a_ctl.shutdown().await;
    let b = tokio::time::timeout(Duration::from_secs(5), b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(b.token > a.token, "{} vs {}", b.token, a.token);
    let err = a_store.put(&rec).await.unwrap_err();
    assert!(matches!(err, CoordError::NotLeader(_)), "{err}");
    EtcdJobStore::new(client.clone(), &b)
        .put(&rec)
        .await
        .unwrap();
    assert_eq!(list_jobs(&client).await.unwrap().len(), 1);
    drop(b_ctl);
}

/// The linear executor, slowed down so a test can act mid-job.
fn slow() -> Arc<DelayedFactory> {
    Arc::new(DelayedFactory {
        inner: Arc::new(LinearFactory),
        delay: Duration::from_millis(4),
    })
}

fn job_spec(steps: u64) -> JobSpec {
    JobSpec::from_toml_str(&format!(
        "base_model = \"builtin:linear\"\ndata = \"d\"\nworkers = 2\n[train]\nsteps = {steps}\n\
         batch_size = 8\ngrad_accum = 4\nlr = 0.05\nseed = 3\ncheckpoint_every = 5\n"
    ))
    .unwrap()
}

/// Two local worker actors, their links and static membership.
async fn local_workers(
    factory: Arc<dyn ExecutorFactory>,
) -> (Arc<LocalLinkFactory>, Arc<StaticMembership>) {
    let mut links = LocalLinkFactory::new();
    let mut infos = Vec::new();
    for n in ["w1", "w2"] {
        let node = NodeId::new(n).unwrap();
        let (a, _) = spawn_worker(WorkerCore::new(node.clone(), factory.clone()))
            .await
            .unwrap();
        links.insert(node, a);
        infos.push(info(n));
    }
    (Arc::new(links), Arc::new(StaticMembership::new(infos)))
}

async fn job_state(client: &etcd_client::Client, id: &JobId) -> Option<JobRecord> {
    list_jobs(client)
        .await
        .ok()?
        .into_iter()
        .find(|r| &r.id == id)
}

/// Digest of a fault-free run of `job_spec(steps)` in embedded mode.
async fn reference_digest(steps: u64) -> tributary_protocol::Digest {
    let (links, membership) = local_workers(Arc::new(LinearFactory)).await;
    let store = Arc::new(tributary_coordinator::MemoryJobStore::default());
    let (c, _) = spawn_coordinator(CoordinatorConfig {
        fencing: 1,
        membership,
        store,
        links,
        artifacts: artifacts(),
        tick: Duration::from_millis(20),
    })
    .await
    .unwrap();
    let id = tributary_coordinator::client::submit(&c, job_spec(steps))
        .await
        .unwrap();
    let r = tributary_coordinator::client::wait(&c, &id, Duration::from_secs(20))
        .await
        .unwrap();
    c.stop(None);
    r.adapter_digest.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_resumes_the_job_from_its_checkpoint() {
    let want = reference_digest(60).await;
    let server = etcd();
    let client = connect(&server.url()).await.unwrap();
    let (links, membership) = local_workers(slow()).await;
    let id = submit_job(&client, job_spec(60)).await.unwrap();

    let a_ctl = ShutdownController::new();
    let a = campaign(
        &client,
        &NodeId::new("coord-a").unwrap(),
        2,
        &a_ctl.subscribe(),
    )
    .await
    .unwrap();
    let (coord_a, _) = spawn_coordinator(CoordinatorConfig {
        fencing: a.token,
        membership: membership.clone(),
        store: Arc::new(EtcdJobStore::new(client.clone(), &a)),
        links: links.clone(),
        artifacts: artifacts(),
        tick: Duration::from_millis(50),
    })
    .await
    .unwrap();
    eventually("a checkpoint past step 10", 20, async || {
        job_state(&client, &id)
            .await
            .and_then(|r| r.checkpoint)
            .is_some_and(|c| c.step >= 10)
    })
    .await;
    // Leader A dies: its actor stops and its lease is revoked.
    coord_a.stop(None);
    a_ctl.shutdown().await;

    let b_ctl = ShutdownController::new();
    let b = campaign(
        &client,
        &NodeId::new("coord-b").unwrap(),
        2,
        &b_ctl.subscribe(),
    )
    .await
    .unwrap();
    assert!(b.token > a.token);
    let (_coord_b, _) = spawn_coordinator(CoordinatorConfig {
        fencing: b.token,
        membership,
        store: Arc::new(EtcdJobStore::new(client.clone(), &b)),
        links,
        artifacts: artifacts(),
        tick: Duration::from_millis(50),
    })
    .await
    .unwrap();
    eventually("job finished by leader B", 30, async || {
        job_state(&client, &id)
            .await
            .is_some_and(|r| r.state.is_terminal())
    })
    .await;
    let rec = job_state(&client, &id).await.unwrap();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(
        rec.adapter_digest,
        Some(want),
        "resumed run differs from a fault-free one"
    );
    drop(b_ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_continue_after_etcd_restarts_under_them() {
    let want = reference_digest(80).await;
    let mut server = etcd();
    let client = connect(&server.url()).await.unwrap();
    let (links, membership) = local_workers(slow()).await;
    let id = submit_job(&client, job_spec(80)).await.unwrap();
    let ctl = ShutdownController::new();
    let lead = campaign(
        &client,
        &NodeId::new("coord-a").unwrap(),
        5,
        &ctl.subscribe(),
    )
    .await
    .unwrap();
    let (_coord, _) = spawn_coordinator(CoordinatorConfig {
        fencing: lead.token,
        membership,
        store: Arc::new(EtcdJobStore::new(client.clone(), &lead)),
        links,
        artifacts: artifacts(),
        tick: Duration::from_millis(50),
    })
    .await
    .unwrap();
    eventually("job running", 10, async || {
        job_state(&client, &id)
            .await
            .is_some_and(|r| r.progress.step >= 5)
    })
    .await;
    server.restart().unwrap();
    eventually("job finished after the restart", 45, async || {
        job_state(&client, &id)
            .await
            .is_some_and(|r| r.state.is_terminal())
    })
    .await;
    let rec = job_state(&client, &id).await.unwrap();
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.adapter_digest, Some(want));
    assert!(!*lead.lost.borrow(), "leadership survives an etcd restart");
    drop(ctl);
}

/// The object store for checkpoints and adapters: one per test binary, shared by every
/// leader (as a real deployment shares its bucket); keys are content-addressed.
fn artifacts() -> tributary_coordinator::Artifacts {
    tributary_coordinator::Artifacts::open("memory://etcd-cluster-tests").unwrap()
}

/// `GET /v1/cluster`'s source: the election's candidates (the leader first, each with the
/// fencing token it writes under) and the workers' records with their heartbeat ages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_names_the_leader_its_token_and_live_workers() {
    let server = etcd();
    let client = connect(&server.url()).await.unwrap();
    let jobs = EtcdJobs(client.clone());
    let ctl = ShutdownController::new();
    register_worker(client.clone(), info("w1"), 3, ctl.subscribe())
        .await
        .unwrap();
    let a_ctl = ShutdownController::new();
    let a = campaign(
        &client,
        &NodeId::new("coord-a").unwrap(),
        3,
        &a_ctl.subscribe(),
    )
    .await
    .unwrap();
    let b_ctl = ShutdownController::new();
    let b_sd = b_ctl.subscribe();
    let b_client = client.clone();
    let b = tokio::spawn(async move {
        campaign(&b_client, &NodeId::new("coord-b").unwrap(), 3, &b_sd).await
    });
    let mut seen = None;
    eventually("both candidates listed", 5, async || {
        let v = jobs.cluster().await.unwrap().unwrap();
        let two = v.coordinators.len() == 2;
        seen = Some(v);
        two
    })
    .await;
    let v = seen.unwrap();
    assert_eq!(v.mode, "etcd");
    assert_eq!(v.coordinators[0].name, "coord-a");
    assert!(
        v.coordinators[0].leader && !v.coordinators[1].leader,
        "{v:?}"
    );
    assert_eq!(v.coordinators[0].fencing_token, a.token, "{v:?}");
    assert!(v.coordinators[1].fencing_token > a.token, "{v:?}");
    assert_eq!(v.workers.len(), 1, "{v:?}");
    assert_eq!(v.workers[0].info.node.as_str(), "w1");
    let age = v.workers[0].heartbeat_age_secs.unwrap();
    let left = v.workers[0].lease_expires_in_secs.unwrap();
    assert!((0..=3).contains(&age) && (0..=3).contains(&left), "{v:?}");
    // etcd itself: one member, which leads raft, answered with a version and no alarm.
    let etcd = v.etcd.as_ref().expect("etcd health in etcd mode");
    assert!(etcd.healthy, "{etcd:?}");
    assert_eq!(etcd.members.len(), 1, "{etcd:?}");
    assert!(
        etcd.members[0].leader && !etcd.members[0].learner,
        "{etcd:?}"
    );
    assert_eq!(
        etcd.answered_by.as_deref(),
        Some(etcd.members[0].id.as_str())
    );
    assert!(
        etcd.version.as_deref().is_some_and(|v| v.starts_with('3')),
        "{etcd:?}"
    );
    assert!(etcd.db_size_bytes.is_some_and(|b| b > 0) && etcd.alarms.is_empty());
    // The leader leaves: the standby leads under its own, higher token.
    a_ctl.shutdown().await;
    let b = tokio::time::timeout(Duration::from_secs(5), b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v = jobs.cluster().await.unwrap().unwrap();
    assert_eq!(v.coordinators.len(), 1, "{v:?}");
    assert_eq!(v.coordinators[0].name, "coord-b");
    assert!(v.coordinators[0].leader);
    assert_eq!(v.coordinators[0].fencing_token, b.token);
    // A worker that leaves is gone from the view.
    ctl.shutdown().await;
    let v = jobs.cluster().await.unwrap().unwrap();
    assert!(v.workers.is_empty(), "{v:?}");
    b_ctl.shutdown().await;
}
