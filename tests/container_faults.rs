//! Faults across hosts, on a whole cluster in containers (`deploy/local-cluster.sh`): each
//! node has its own address on a private Docker network, so a partition is real packet
//! loss, not a paused process on 127.0.0.1. The jobs train a real LoRA adapter on a tiny
//! Llama model and must end with the same adapter digest as a fault-free `tributary dev`.

mod common;
mod containers;

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

fn status(url: &str, id: &str) -> serde_json::Value {
    let out = common::job(url, &["status", id, "--json"]);
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
        let rec = status(url, id);
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
    let want = {
        let dev = common::Dev::start(tmp.path(), 1);
        common::submit_and_wait(&dev.url(), &long_spec(tmp.path(), &model, steps, 1))
    };
    assert_eq!(want["state"], "succeeded", "{want}");

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
    let out = common::job(
        &api,
        &[
            "submit",
            long_spec(tmp.path(), &model, steps, 2).to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let id: serde_json::Value = serde_json::from_str(common::stdout(&out).trim()).unwrap();
    let id = id["id"].as_str().unwrap().to_string();
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
    let step = status(&api, &id)["progress"]["step"].as_u64().unwrap_or(0);
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
