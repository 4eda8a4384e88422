//! Faults across hosts, on a whole cluster in containers (`deploy/local-cluster.sh`): each
//! node has its own address on a private Docker network, so a partition is real packet
//! loss, not a paused process on 127.0.0.1. The jobs train a real LoRA adapter on a tiny
//! Llama model and must end with the same adapter digest as a fault-free `tributary dev`.
//! The rolling restart under serving load is in `tests/containers/rolling.rs`.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;
mod containers;
#[path = "containers/rolling.rs"]
mod rolling;
#[path = "common/rolling_load.rs"]
mod rolling_load;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containers::{ContainerCluster, TTL, docker_or_skip};

/// A LoRA job long enough to cut the cluster mid-way.
fn long_spec(dir: &Path, model: &Path, steps: u32, workers: u32) -> PathBuf {
    let spec = dir.join(format!("spec-{steps}-{workers}.toml"));
    std::fs::write(
        &spec,
        format!(
            "base_model = {:?}\ndata = {:?}\nworkers = {workers}\n\
             [lora]\nrank = 4\nalpha = 8.0\ndropout = 0.0\ntarget_modules = [\"q_proj\", \"v_proj\"]\n\
             [train]\nsteps = {steps}\nbatch_size = 4\ngrad_accum = 2\nlr = 1e-3\nseed = 11\ncheckpoint_every = 10\n",
            model.display().to_string(),
            dir.join("train.jsonl").display().to_string(),
        ),
    )
    .unwrap();
    spec
}

/// A temporary directory the containers' user (uid 10001) can read, holding the tiny
/// model and the demo data.
fn shared_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_model(tmp.path());
    std::fs::copy(
        common::repo().join("assets/demo/train.jsonl"),
        tmp.path().join("train.jsonl"),
    )
    .unwrap();
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(status.success());
    (tmp, model)
}

/// `tributary job ARGS` against `url` with the cluster's admin key.
fn job(c: &ContainerCluster, url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .arg("job")
        .args(args)
        .env("TRIBUTARY_COORDINATOR", url)
        .env("TRIBUTARY_API_KEY", c.api_key())
        .output()
        .unwrap()
}

fn status(c: &ContainerCluster, url: &str, id: &str) -> serde_json::Value {
    let out = job(c, url, &["status", id, "--json"]);
    serde_json::from_str(common::stdout(&out).trim()).unwrap_or(serde_json::Value::Null)
}

fn wait_job(
    c: &ContainerCluster,
    url: &str,
    id: &str,
    what: &str,
    secs: u64,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let rec = status(c, url, id);
        if done(&rec) {
            return rec;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "job {id}: no {what} within {secs} s; last record {rec}\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The adapter a fault-free `tributary dev` run of the same job trains: the reference.
fn fault_free(dir: &Path, model: &Path, steps: u32) -> serde_json::Value {
    let dev = common::Dev::start(dir, 1);
    let want = common::submit_and_wait(&dev.url(), &long_spec(dir, model, steps, 1));
    assert_eq!(want["state"], "succeeded", "{want}");
    want
}

/// Submits the two-worker job to the coordinator at `api`; returns its id.
fn submit(c: &ContainerCluster, api: &str, dir: &Path, model: &Path, steps: u32) -> String {
    let spec = long_spec(dir, model, steps, 2);
    let out = job(c, api, &["submit", spec.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let id: serde_json::Value = serde_json::from_str(common::stdout(&out).trim()).unwrap();
    id["id"].as_str().unwrap().to_string()
}

fn terminal(rec: &serde_json::Value) -> bool {
    matches!(
        rec["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

#[test]
fn leader_partitioned_from_etcd_loses_to_the_standby_and_the_job_ends_with_the_same_adapter() {
    if !docker_or_skip("leader_partitioned_from_etcd") {
        return;
    }
    let (tmp, model) = shared_dir();
    let steps = 200;
    // The reference: a fault-free run in one process.
    let want = fault_free(tmp.path(), &model, steps);

    let c = ContainerCluster::up(tmp.path(), 2);
    // coord-a starts first; wait until one of the two leads.
    let started = Instant::now();
    let (leader, standby) = loop {
        if c.logs("coord-a").contains("leader with fencing token") {
            break ("coord-a", "coord-b");
        }
        if c.logs("coord-b").contains("leader with fencing token") {
            break ("coord-b", "coord-a");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no leader\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let api = c.url(standby);
    let id = submit(&c, &api, tmp.path(), &model, steps);
    let at = wait_job(&c, &api, &id, "step 20", 120, |r| {
        r["progress"]["step"].as_u64().unwrap_or(0) >= 20 || terminal(r)
    });
    assert!(!terminal(&at), "the job ended before the partition: {at}");

    // Cut the leader off: etcd, the workers and the standby no longer hear it.
    c.partition(leader);
    let took = c.wait_log(standby, "leader with fencing token", TTL + 20);
    assert!(
        took <= Duration::from_secs(TTL + 5),
        "failover took {took:?} (lease TTL {TTL} s)"
    );
    // The new leader makes progress before the old one comes back.
    let step = status(&c, &api, &id)["progress"]["step"]
        .as_u64()
        .unwrap_or(0);
    wait_job(&c, &api, &id, "progress under the new leader", 60, |r| {
        r["progress"]["step"].as_u64().unwrap_or(0) > step + 5 || terminal(r)
    });
    c.heal(leader);
    // The old leader finds it was deposed and stops, having changed nothing: it exits, or
    // logs that it lost leadership / was fenced out.
    let start = Instant::now();
    loop {
        let log = c.logs(leader);
        if log.contains("leadership lost") || log.contains("fenced out") || !c.running(leader) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the partitioned leader neither stepped down nor stopped\n{}",
            c.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rec = wait_job(&c, &api, &id, "the end", 180, terminal);
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", c.dump_logs());
    assert_eq!(
        rec["adapter_digest"], want["adapter_digest"],
        "the partitioned run's adapter differs from the fault-free one"
    );
}

#[test]
fn a_worker_partitioned_mid_job_is_dropped_and_the_job_ends_with_the_same_adapter() {
    if !docker_or_skip("worker_partitioned") {
        return;
    }
    let (tmp, model) = shared_dir();
    let steps = 200;
    let want = fault_free(tmp.path(), &model, steps);
    let c = ContainerCluster::up(tmp.path(), 2);
    let api = c.url("coord-a");
    let id = submit(&c, &api, tmp.path(), &model, steps);
    let at = wait_job(&c, &api, &id, "two workers at step 20", 120, |r| {
        (r["progress"]["step"].as_u64().unwrap_or(0) >= 20
            && r["workers"].as_array().is_some_and(|w| w.len() == 2))
            || terminal(r)
    });
    assert!(!terminal(&at), "the job ended before the partition: {at}");
    c.partition("w2");
    // The job goes on without w2, then w2 comes back while it still runs.
    let step = status(&c, &api, &id)["progress"]["step"]
        .as_u64()
        .unwrap_or(0);
    wait_job(&c, &api, &id, "progress without w2", 90, |r| {
        r["progress"]["step"].as_u64().unwrap_or(0) > step + 10 || terminal(r)
    });
    c.heal("w2");
    let rec = wait_job(&c, &api, &id, "the end", 180, terminal);
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", c.dump_logs());
    // Nothing was applied twice or lost: the same adapter as the fault-free run.
    assert_eq!(
        rec["adapter_digest"], want["adapter_digest"],
        "the run with a partitioned worker differs from the fault-free one"
    );
    let logs = job(&c, &api, &["logs", &id]);
    let logs = common::stdout(&logs);
    assert!(
        logs.contains("w2") && (logs.contains("lost") || logs.contains("dropped")),
        "the job's log does not show w2 being dropped:\n{logs}"
    );
}

#[test]
fn etcd_survives_one_member_lost_and_stops_safely_without_quorum() {
    if !docker_or_skip("etcd_quorum") {
        return;
    }
    let (tmp, model) = shared_dir();
    let steps = 300;
    let want = fault_free(tmp.path(), &model, steps);
    let c = ContainerCluster::up(tmp.path(), 2);
    let api = c.url("coord-a");
    let id = submit(&c, &api, tmp.path(), &model, steps);
    wait_job(&c, &api, &id, "step 10", 120, |r| {
        r["progress"]["step"].as_u64().unwrap_or(0) >= 10 || terminal(r)
    });
    // One member of three lost: the job keeps making progress.
    c.kill("etcd-3");
    let step = status(&c, &api, &id)["progress"]["step"]
        .as_u64()
        .unwrap_or(0);
    let rec = wait_job(
        &c,
        &api,
        &id,
        "progress with 2 of 3 etcd members",
        60,
        |r| r["progress"]["step"].as_u64().unwrap_or(0) > step + 10 || terminal(r),
    );
    assert!(!terminal(&rec) || rec["state"] == "succeeded", "{rec}");
    // Two lost: no quorum. The job record cannot move (the API answers 503 or an old
    // record, never a second leader's progress).
    c.kill("etcd-2");
    std::thread::sleep(Duration::from_secs(TTL + 3));
    let frozen = status(&c, &api, &id)["progress"]["step"].as_u64();
    std::thread::sleep(Duration::from_secs(3));
    let later = status(&c, &api, &id)["progress"]["step"].as_u64();
    assert!(
        frozen.is_none() || later.is_none() || frozen == later,
        "the job moved without an etcd quorum: {frozen:?} -> {later:?}"
    );
    // Both come back: the cluster recovers and the job finishes with the same adapter.
    c.start("etcd-2");
    c.start("etcd-3");
    let rec = wait_job(
        &c,
        &api,
        &id,
        "the end after quorum returned",
        240,
        terminal,
    );
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", c.dump_logs());
    assert_eq!(rec["adapter_digest"], want["adapter_digest"]);
    // Never two leaders at once: every fencing token logged is distinct.
    let mut tokens: Vec<String> = ["coord-a", "coord-b"]
        .iter()
        .flat_map(|n| {
            c.logs(n)
                .lines()
                .filter_map(|l| {
                    l.split("leader with fencing token")
                        .nth(1)
                        .map(|t| t.trim().to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let n = tokens.len();
    tokens.sort();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        n,
        "a fencing token was used twice: {tokens:?}"
    );
}

#[test]
fn reward_log_appends_go_on_with_a_replica_partitioned_and_repair_catches_it_up() {
    if !docker_or_skip("reward_log_partition") {
        return;
    }
    let s3 = containers::S3Replicas::up(3);
    let replicas = (0..3).map(|i| s3.url(i)).collect::<Vec<_>>().join(",");
    let ledger = |args: &[&str]| {
        std::process::Command::new(common::bin())
            .arg("ledger")
            .args(args)
            .env("TRIBUTARY_LEDGER_REPLICAS", &replicas)
            .env("AWS_ACCESS_KEY_ID", "tributary")
            .env("AWS_SECRET_ACCESS_KEY", "tributary")
            .output()
            .unwrap()
    };
    let append = |i: usize| {
        let out = ledger(&[
            "append",
            "--request-id",
            &format!("chatcmpl-{i}"),
            "--share",
            &format!("alice={}", 10 + i),
            "--share",
            "bob=5",
        ]);
        assert!(out.status.success(), "append {i}: {}", common::stderr(&out));
    };
    for i in 0..3 {
        append(i);
    }
    s3.partition(2);
    // A majority (2 of 3) still acknowledges: appends go on, and the silent replica costs
    // each one a grace period and the background write's timeout (15–32 s measured, the
    // upper end with the whole suite running), not a wait on every request to it in turn
    // (74–75 s per append before `Replicas::on_every`).
    for i in 3..5 {
        let start = Instant::now();
        append(i);
        assert!(
            start.elapsed() < Duration::from_secs(50),
            "append {i} with a partitioned replica took {:?}",
            start.elapsed()
        );
    }
    let out = ledger(&["verify"]);
    assert!(
        !out.status.success(),
        "verify passed with a replica unreachable:\n{}",
        common::stdout(&out)
    );
    s3.heal(2);
    let out = ledger(&["repair"]);
    assert!(out.status.success(), "repair: {}", common::stderr(&out));
    let out = ledger(&["verify", "--json"]);
    assert!(
        out.status.success(),
        "verify after repair:\n{}\n{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    let out = ledger(&["balances", "--json"]);
    let text = common::stdout(&out);
    // alice: 10+11+…+14 = 60, bob: 5 × 5 = 25, on every replica after the repair.
    assert!(
        text.contains("60") && text.contains("25"),
        "balances after repair: {text}"
    );
}
