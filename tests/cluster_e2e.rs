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
#[path = "common/process_cluster.rs"]
mod process_cluster;

use std::time::{Duration, Instant};

use process_cluster::*;
use tributary_coordinator::JobState;
use tributary_coordinator::etcd::{connect, submit_job};
use tributary_protocol::{JobSpec, NodeId};

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

#[test]
fn sigterm_turns_readyz_503_while_the_http_server_serves_out_its_shutdown_delay() {
    let mut c = Cluster::new();
    let port = common::free_tcp_port();
    c.spawn(
        "coord-a",
        &[
            "coordinator",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--insecure-no-auth",
            "--shutdown-delay-secs",
            "3",
        ],
    );
    common::wait_ready(port, "/readyz", 30, &|| c.dump_logs());
    c.signal("coord-a", "-TERM");
    let t0 = Instant::now();
    // Within a moment /readyz says why it is not ready, and /healthz still answers.
    let readyz = loop {
        let (status, body) = common::http_get(port, "/readyz").unwrap();
        if status == 503 {
            break body;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "/readyz still {status} 2 s after SIGTERM\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(readyz.contains("shutting down"), "{readyz}");
    assert_eq!(common::http_get(port, "/healthz").unwrap().0, 200);
    // The process exits once the delay is served, not before.
    let status = loop {
        if let Some(s) = c.proc("coord-a").child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let served = t0.elapsed();
    assert!(status.success(), "{status}\n{}", c.dump_logs());
    assert!(
        served >= Duration::from_millis(2500),
        "exited {served:?} after SIGTERM, before its 3 s shutdown delay"
    );
}
