//! Rolling restart of a whole cluster under serving load, with real processes (see
//! `tests/common/process_cluster.rs`): etcd over mutual TLS, two coordinators, two serving
//! workers (`tributary worker --base-model`, the tiny fixture model) and two gateways, all
//! QUIC with mutual TLS on loopback, certificates from `tributary certs`.
//!
//! A load generator sends OpenAI chat requests (streamed and not) without pause from four
//! clients through a load balancer that does what a Kubernetes Service does: it polls each
//! gateway's `/readyz` and sends new requests only to the ready ones. Meanwhile each gateway
//! is restarted in turn (SIGTERM: its `/readyz` answers 503 at once, the balancer stops
//! sending to it, the HTTP server serves out `--shutdown-delay-secs` and the requests in
//! flight, the process exits 0, a new one starts and becomes ready), then each worker (SIGTERM
//! while it has answers running: it leaves membership and drains them), then each
//! coordinator while a training job runs (the standby takes over; the job finishes with the
//! adapter a fault-free run trains). Not one request may fail; the served requests are
//! counted per phase.
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
#[path = "common/rolling_load.rs"]
mod rolling_load;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use process_cluster::*;
use rolling_load::{CLIENTS, GatewayControl, Load, MIN_SERVED, PHASES, in_flight_on, metrics};
use tributary_coordinator::JobState;
use tributary_coordinator::etcd::submit_job;

/// Seconds a gateway keeps serving after SIGTERM (its `/readyz` is 503 meanwhile): longer
/// than the balancer's poll period, as a preStop sleep must exceed the readiness probe's.
const SHUTDOWN_DELAY_SECS: &str = "1";
/// How long a worker lets running answers finish after SIGTERM.
const DRAIN_TIMEOUT_SECS: &str = "20";
/// Steps of the training job run across the coordinators' restarts.
const JOB_STEPS: u64 = 250;

/// The serving address of a worker's latest run, from its log.
fn new_serve_addr(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("for inference on "))
        .and_then(|l| l.rsplit("for inference on ").next())
        .expect("a serving worker logs its inference address")
        .trim()
        .to_string()
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_until(secs: u64, what: &str, c: &Cluster, ok: &dyn Fn() -> bool) -> Duration {
    rolling_load::wait_until(secs, what, &|| c.dump_logs(), ok)
}

fn gateway_args(port: u16) -> Vec<String> {
    [
        "gateway",
        "--http",
        &format!("127.0.0.1:{port}"),
        "--shutdown-delay-secs",
        SHUTDOWN_DELAY_SECS,
    ]
    .map(String::from)
    .to_vec()
}

fn worker_args(c: &Cluster, name: &str) -> Vec<String> {
    let base = common::fixtures().join("tiny-llama");
    let cache = c.dir.path().join(format!("{name}-cache"));
    [
        "worker",
        "--listen",
        "127.0.0.1:0",
        "--serve-listen",
        "127.0.0.1:0",
        "--base-model",
        base.to_str().unwrap(),
        "--max-in-flight",
        "64",
        "--drain-timeout-secs",
        DRAIN_TIMEOUT_SECS,
        "--micro-batch-delay-ms",
        "5",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_gateways_workers_and_coordinators_fails_no_request() {
    let t0 = Instant::now();
    let want = embedded_digest(spec(JOB_STEPS)).await;
    let mut c = Cluster::with_etcd_tls();
    let certs = c.dir.path().join("certs");
    for n in ["gw1", "gw2"] {
        run_ok(&[
            "certs",
            "issue",
            "--name",
            n,
            "--dir",
            certs.to_str().unwrap(),
        ]);
    }
    let key = {
        let out = std::process::Command::new(bin())
            .args(["keys", "create", "--store", &c.store, "--owner", "load"])
            .args(["--scope", "admin"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    for w in ["w1", "w2"] {
        let args = worker_args(&c, w);
        c.spawn(w, &strs(&args));
    }
    c.coordinator("coord-a");
    wait_log(&c, "coord-a", "leader with fencing token", 30).await;
    c.coordinator("coord-b");
    let ports = [common::free_tcp_port(), common::free_tcp_port()];
    for (name, port) in [("gw1", ports[0]), ("gw2", ports[1])] {
        c.spawn(name, &strs(&gateway_args(port)));
    }
    for port in ports {
        common::wait_ready(port, "/readyz", 60, &|| c.dump_logs());
    }
    for port in ports {
        wait_until(30, "both workers known to every gateway", &c, &|| {
            let m = metrics(local(port));
            in_flight_on(&m, "w1").is_some() && in_flight_on(&m, "w2").is_some()
        });
    }
    eprintln!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());

    let load = Load::new(ports.map(local).to_vec(), &key);
    let threads = load.start(CLIENTS);
    let enter = |phase: usize| load.enter(phase, &PHASES, MIN_SERVED, 20, t0);
    enter(0);

    // Gateways, one at a time: SIGTERM, not ready at once, out of rotation, exits 0 after
    // serving out its delay and the answer in flight, started again, ready, in rotation.
    for (i, name) in ["gw1", "gw2"].into_iter().enumerate() {
        enter(1 + i);
        let port = ports[i];
        let cell = RefCell::new(&mut c);
        rolling_load::restart_gateway(
            &load,
            i,
            name,
            &key,
            GatewayControl {
                terminate: &mut || cell.borrow_mut().signal(name, "-TERM"),
                exited: &mut || {
                    let mut c = cell.borrow_mut();
                    let status = c.wait_exit(name, 30);
                    assert!(
                        status.success(),
                        "{name} exited {status}\n{}",
                        c.dump_logs()
                    );
                },
                start: &mut || {
                    cell.borrow_mut().restart(name, &strs(&gateway_args(port)));
                    local(port)
                },
                logs: &|| cell.borrow().dump_logs(),
            },
        );
    }

    // Workers, one at a time, each while answers run on it: it leaves membership, the
    // gateways route around it, its running answers finish, it exits 0 and comes back.
    for (i, name) in ["w1", "w2"].into_iter().enumerate() {
        enter(3 + i);
        wait_until(10, "answers running on the worker", &c, &|| {
            ports
                .iter()
                .filter_map(|p| in_flight_on(&metrics(local(*p)), name))
                .sum::<f64>()
                >= 1.0
        });
        c.signal(name, "-TERM");
        let status = c.wait_exit(name, 40);
        assert!(
            status.success(),
            "{name} exited {status}\n{}",
            c.dump_logs()
        );
        assert!(
            c.log(name).contains(&format!("{name}: drained in")),
            "{}",
            c.dump_logs()
        );
        let runs = c.log_count(name, &format!("{name}: serving on"));
        let args = worker_args(&c, name);
        c.restart(name, &strs(&args));
        wait_until(60, "the worker registered again", &c, &|| {
            c.log_count(name, &format!("{name}: serving on")) > runs
        });
        // Ready: every gateway routes to the new process (what waiting for a restarted pod's
        // readiness gives a Kubernetes rollout, whose probes are seconds apart; here the
        // next restart follows at once).
        let serve_addr = new_serve_addr(&c.log(name));
        for gw in ["gw1", "gw2"] {
            wait_until(10, "every gateway routing to the new worker", &c, &|| {
                c.log(gw).contains(&serve_addr)
            });
        }
    }

    // Coordinators, one at a time, while a job trains on the workers.
    enter(5);
    let etcd = c.etcd_client().await;
    let id = submit_job(&etcd, spec(JOB_STEPS)).await.unwrap();
    wait_for(&c, &etcd, &id, "the job running", 60, |r| {
        r.progress.step >= 10
    })
    .await;
    for (i, (name, other)) in [("coord-a", "coord-b"), ("coord-b", "coord-a")]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            enter(5 + i);
        }
        let r = record(&etcd, &id).await.unwrap();
        assert!(
            !r.state.is_terminal(),
            "the job ended before {name}'s restart: raise JOB_STEPS: {r:?}"
        );
        let leads = c.log_count(other, "leader with fencing token");
        let termed = Instant::now();
        c.signal(name, "-TERM");
        let status = c.wait_exit(name, 30);
        assert!(
            status.success(),
            "{name} exited {status}\n{}",
            c.dump_logs()
        );
        wait_until(15, "the standby leads", &c, &|| {
            c.log_count(other, "leader with fencing token") > leads
        });
        eprintln!(
            "  {other} leads {:.2} s after {name}'s SIGTERM",
            termed.elapsed().as_secs_f64()
        );
        c.restart(name, &["coordinator"]);
        let at = record(&etcd, &id).await.unwrap().progress.step;
        wait_for(&c, &etcd, &id, "progress under the new leader", 60, |r| {
            r.progress.step > at + 5 || r.state.is_terminal()
        })
        .await;
    }
    let r = wait_for(&c, &etcd, &id, "the job's end", 120, |r| {
        r.state.is_terminal()
    })
    .await;
    wait_until(20, "the last phase served", &c, &|| {
        load.served_in(PHASES.len() - 1) >= MIN_SERVED
    });
    load.finish(threads);
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(
        r.adapter_digest,
        Some(want),
        "the adapter trained across two coordinator restarts != a fault-free run"
    );

    let (requests, failed) = load.report(&PHASES);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed:\n{}\n{}",
        failed.len(),
        requests,
        failed.join("\n"),
        c.dump_logs()
    );
    eprintln!(
        "{} requests, 0 failed; {:.1} s in all",
        requests,
        t0.elapsed().as_secs_f64()
    );
}
