//! Rolling restart of the container cluster under serving load (part of
//! `tests/container_faults.rs`): `deploy/local-cluster.sh up --base-model … --gateways 2`
//! (etcd ×3 over TLS, S3, two coordinators, two workers serving the tiny fixture model, two
//! gateways), each restarted in turn with `docker stop --time GRACE` (SIGTERM, then the
//! chart's terminationGracePeriodSeconds) and `docker start`. The load of
//! `tests/common/rolling_load.rs` (four clients behind a balancer polling each gateway's
//! `/readyz`) runs throughout; a LoRA job trains on the serving workers across the
//! coordinators' restarts. Not one request may fail; the job ends with the adapter of a
//! fault-free run. `tests/rolling_restart.rs` runs the same on processes.

use std::cell::RefCell;
use std::path::Path;
use std::time::Instant;

use super::containers::{ContainerCluster, docker_or_skip};
use super::rolling_load::{
    self, CLIENTS, GatewayControl, Load, MIN_SERVED, PHASES, in_flight_on, metrics,
};
use super::{common, fault_free, shared_dir, status, submit, terminal, wait_job};

/// Seconds a gateway keeps serving after SIGTERM while its `/readyz` answers 503: what the
/// chart's preStop sleep gives a Service (10 s there, against probes 5 s apart). Here the
/// balancer polls every 200 ms, but on two loaded cores with eight containers a poll can
/// lag by seconds, and a gateway that exits before the balancer saw its 503 would fail the
/// requests sent to it meanwhile: 5 s keeps that margin at 25 polls.
const SHUTDOWN_DELAY_SECS: &str = "5";
/// How long a worker lets running answers finish after SIGTERM.
const DRAIN_TIMEOUT_SECS: &str = "20";
/// `docker stop --time`: the chart's terminationGracePeriodSeconds.
const GRACE_GATEWAY: u64 = 60;
const GRACE_WORKER: u64 = 60;
const GRACE_COORDINATOR: u64 = 30;
/// Steps of the LoRA job run across the coordinators' restarts.
const JOB_STEPS: u32 = 200;
/// Milliseconds each training micro-batch waits on the workers (`--micro-batch-delay-ms`):
/// the tiny model trains 150 steps in ~4 s, faster than two coordinator restarts on loaded
/// cores, so the job is paced to outlast them (~16 s at 200 steps) whatever the machine.
const MICRO_BATCH_DELAY_MS: &str = "50";

fn step(rec: &serde_json::Value) -> u64 {
    rec["progress"]["step"].as_u64().unwrap_or(0)
}

/// The `tiny-llama` fixture (the served model) in `dir`, readable by the containers.
fn serve_model(dir: &Path) -> std::path::PathBuf {
    let to = dir.join(rolling_load::MODEL);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(common::fixtures().join(rolling_load::MODEL)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let status = std::process::Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    to
}

#[test]
fn rolling_restart_of_gateways_workers_and_coordinators_in_containers_fails_no_request() {
    if !docker_or_skip("rolling_restart_in_containers") {
        return;
    }
    let t0 = Instant::now();
    let (tmp, model) = shared_dir();
    let served = serve_model(tmp.path());
    // The reference (a fault-free run in one process) trains while the cluster starts.
    let reference = {
        let (dir, model) = (tmp.path().to_path_buf(), model.clone());
        std::thread::spawn(move || fault_free(&dir, &model, JOB_STEPS))
    };
    let mut c = ContainerCluster::up_serving(
        tmp.path(),
        &served,
        2,
        &[
            ("TRIBUTARY_SHUTDOWN_DELAY_SECS", SHUTDOWN_DELAY_SECS),
            ("TRIBUTARY_DRAIN_TIMEOUT_SECS", DRAIN_TIMEOUT_SECS),
            ("TRIBUTARY_MICRO_BATCH_DELAY_MS", MICRO_BATCH_DELAY_MS),
        ],
    );
    let key = c.api_key();
    let gateways = ["gw1", "gw2"];
    for gw in gateways {
        let addr = c.addr(gw);
        rolling_load::wait_until(
            60,
            "both workers known to every gateway",
            &|| c.dump_logs(),
            &|| {
                let m = metrics(addr);
                in_flight_on(&m, "w1").is_some() && in_flight_on(&m, "w2").is_some()
            },
        );
    }
    eprintln!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());

    let load = Load::new(gateways.map(|g| c.addr(g)).to_vec(), &key);
    let threads = load.start(CLIENTS);
    let enter = |phase: usize| load.enter(phase, &PHASES, MIN_SERVED, 30, t0);
    enter(0);

    // Gateways, one at a time (see `rolling_load::restart_gateway`).
    for (i, name) in gateways.into_iter().enumerate() {
        enter(1 + i);
        let cell = RefCell::new(&mut c);
        let stop = RefCell::new(None);
        rolling_load::restart_gateway(
            &load,
            i,
            name,
            &key,
            GatewayControl {
                terminate: &mut || {
                    *stop.borrow_mut() = Some(cell.borrow().stop(name, GRACE_GATEWAY))
                },
                exited: &mut || {
                    let s = stop.borrow_mut().take().unwrap();
                    cell.borrow().stopped(name, s);
                },
                start: &mut || cell.borrow_mut().restart(name),
                logs: &|| cell.borrow().dump_logs(),
            },
        );
    }

    // Workers, one at a time, each while answers run on it: it leaves membership, the
    // gateways route around it, its running answers finish, it exits 0 and comes back.
    for (i, name) in ["w1", "w2"].into_iter().enumerate() {
        enter(3 + i);
        let addrs = gateways.map(|g| c.addr(g));
        rolling_load::wait_until(
            10,
            "answers running on the worker",
            &|| c.dump_logs(),
            &|| {
                addrs
                    .iter()
                    .filter_map(|a| in_flight_on(&metrics(*a), name))
                    .sum::<f64>()
                    >= 1.0
            },
        );
        // The gateways' log lines saying the worker (at its serving address) joined.
        let joined = |c: &ContainerCluster, gw: &str| {
            let addr = format!("{name}:7451");
            let log = c.logs(gw);
            log.lines()
                .filter(|l| l.contains("serving worker joined") && l.contains(&addr))
                .count()
        };
        let seen = gateways.map(|g| joined(&c, g));
        let runs = c.log_count(name, &format!("{name}: serving on"));
        let termed = Instant::now();
        let stop = c.stop(name, GRACE_WORKER);
        c.stopped(name, stop);
        let drained = c.logs(name);
        assert!(
            drained.contains(&format!("{name}: drained in")),
            "{name} did not drain\n{}",
            c.dump_logs()
        );
        eprintln!(
            "  {name} exited {:.2} s after SIGTERM",
            termed.elapsed().as_secs_f64()
        );
        c.restart(name);
        rolling_load::wait_until(
            60,
            "the worker registered again",
            &|| c.dump_logs(),
            &|| c.log_count(name, &format!("{name}: serving on")) > runs,
        );
        // Ready: every gateway routes to the new process (what waiting for a restarted
        // pod's readiness gives a Kubernetes rollout).
        for (g, gw) in gateways.into_iter().enumerate() {
            rolling_load::wait_until(
                10,
                "every gateway routing to the new worker",
                &|| c.dump_logs(),
                &|| joined(&c, gw) > seen[g],
            );
        }
    }

    // Coordinators, one at a time, while a LoRA job trains on the serving workers: the
    // leader first, then the other (by then the leader).
    enter(5);
    let id = submit(&c, &c.url("coord-a"), tmp.path(), &model, JOB_STEPS);
    // The job API of a gateway stays up while the coordinators restart.
    let api = c.url("gw1");
    let at = wait_job(&c, &api, &id, "step 10 on two workers", 120, |r| {
        (step(r) >= 10 && r["workers"].as_array().is_some_and(|w| w.len() == 2)) || terminal(r)
    });
    assert!(!terminal(&at), "the job ended before the restarts: {at}");
    // coord-a started first and leads; after its restart coord-b does.
    let mut leader = "coord-a";
    assert!(
        c.logs(leader).contains("leader with fencing token"),
        "coord-a does not lead\n{}",
        c.dump_logs()
    );
    for round in 0..2 {
        if round > 0 {
            enter(6);
        }
        let other = if leader == "coord-a" {
            "coord-b"
        } else {
            "coord-a"
        };
        let rec = status(&c, &api, &id);
        assert!(
            !terminal(&rec),
            "the job ended before {leader}'s restart: raise JOB_STEPS: {rec}"
        );
        let leads = c.log_count(other, "leader with fencing token");
        let termed = Instant::now();
        let stop = c.stop(leader, GRACE_COORDINATOR);
        c.stopped(leader, stop);
        rolling_load::wait_until(15, "the standby leads", &|| c.dump_logs(), &|| {
            c.log_count(other, "leader with fencing token") > leads
        });
        eprintln!(
            "  {other} leads {:.2} s after {leader}'s SIGTERM",
            termed.elapsed().as_secs_f64()
        );
        c.restart(leader);
        let at = step(&status(&c, &api, &id));
        wait_job(&c, &api, &id, "progress under the new leader", 60, |r| {
            step(r) > at + 5 || terminal(r)
        });
        leader = other;
    }
    let rec = wait_job(&c, &api, &id, "the end", 180, terminal);
    rolling_load::wait_until(30, "the last phase served", &|| c.dump_logs(), &|| {
        load.served_in(PHASES.len() - 1) >= MIN_SERVED
    });
    load.finish(threads);
    let want = reference.join().unwrap();
    assert_eq!(rec["state"], "succeeded", "{rec}\n{}", c.dump_logs());
    assert_eq!(
        rec["adapter_digest"], want["adapter_digest"],
        "the adapter trained across two coordinator restarts differs from the fault-free one"
    );
    let (requests, failed) = load.report(&PHASES);
    assert!(
        failed.is_empty(),
        "{} of {requests} requests failed:\n{}\n{}",
        failed.len(),
        failed.join("\n"),
        c.dump_logs()
    );
    eprintln!(
        "{requests} requests, 0 failed; {:.1} s in all",
        t0.elapsed().as_secs_f64()
    );
}
