//! The cluster on an etcd that serves clients over TLS and requires their certificates
//! (`--client-cert-auth`), as production etcd does: real etcd, real `tributary` processes
//! given `--etcd-ca/--etcd-cert/--etcd-key` (here through their environment variables), the
//! node certificates of `tributary certs`. And what an operator gets wrong is refused with an
//! error that names the flag.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

#[path = "common/process_cluster.rs"]
mod process_cluster;

use std::time::Duration;

use process_cluster::*;
use tributary_coordinator::JobState;
use tributary_coordinator::etcd::{connect, submit_job};
use tributary_coordinator::etcd_tls::{EtcdTls, connect_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_an_etcd_requiring_client_certificates_trains_the_job() {
    let want = embedded_digest(spec(20)).await;
    let mut c = Cluster::with_etcd_tls();
    assert!(c.etcd.url().starts_with("https://"));
    c.worker("w1", 0);
    c.worker("w2", 0);
    c.coordinator("coord-a");
    let etcd = c.etcd_client().await;
    let id = submit_job(&etcd, spec(20)).await.unwrap();
    let r = wait_for(&c, &etcd, &id, "success", 60, |r| r.state.is_terminal()).await;
    assert_eq!(r.state, JobState::Succeeded, "{r:?}\n{}", c.dump_logs());
    assert_eq!(r.workers.len(), 2, "{r:?}");
    assert_eq!(r.adapter_digest, Some(want), "over TLS etcd != embedded");
    assert!(log_has(&c, "coord-a", "leader with fencing token"));
}

/// Connects and writes one key; the error (or a timeout) when etcd does not accept us.
async fn try_put(url: &str, tls: &EtcdTls) -> Result<(), String> {
    let attempt = async {
        let mut client = connect_with(url, Some(tls))
            .await
            .map_err(|e| e.to_string())?;
        client
            .put("/tributary/tls-probe", "x", None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 15 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_clients_without_a_certificate_or_trusting_another_ca() {
    let c = Cluster::with_etcd_tls();
    let url = c.etcd.url();
    let good = c.etcd_tls_for("coord-a");
    try_put(&url, &good).await.unwrap();

    // Plain-text settings for an https:// endpoint: refused before connecting.
    let Err(e) = connect(&url).await else {
        panic!("connected to an https:// endpoint without TLS settings");
    };
    let e = e.to_string();
    assert!(e.contains("--etcd-ca"), "{e}");

    // The right CA but no client certificate: etcd's --client-cert-auth refuses us.
    let anonymous = EtcdTls {
        ca: good.ca.clone(),
        identity: None,
    };
    assert!(
        try_put(&url, &anonymous).await.is_err(),
        "etcd accepted a client without a certificate"
    );

    // A certificate from another CA, and trusting that CA: etcd's certificate is not trusted.
    let other = c.dir.path().join("other");
    let other_s = other.to_str().unwrap();
    run_ok(&["certs", "init", "--out", other_s]);
    run_ok(&["certs", "issue", "--name", "coord-a", "--dir", other_s]);
    let stranger = EtcdTls {
        ca: other.join("ca.pem"),
        identity: Some((other.join("coord-a.pem"), other.join("coord-a.key"))),
    };
    assert!(
        try_put(&url, &stranger).await.is_err(),
        "a client of another CA got in"
    );
}

#[test]
fn a_process_given_an_https_endpoint_without_a_ca_says_which_flag_is_missing() {
    let c = Cluster::with_etcd_tls();
    let certs = c.dir.path().join("certs");
    let out = std::process::Command::new(bin())
        .args(["coordinator", "--name", "coord-a", "--store"])
        .arg(&c.store)
        .arg("--certs")
        .arg(&certs)
        .arg("--etcd")
        .arg(c.etcd.url())
        .env_remove("TRIBUTARY_ETCD_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--etcd-ca"), "{err}");

    let out = std::process::Command::new(bin())
        .args([
            "worker",
            "--name",
            "w1",
            "--listen",
            "127.0.0.1:0",
            "--certs",
        ])
        .arg(&certs)
        .arg("--etcd")
        .arg(c.etcd.url())
        .arg("--etcd-ca")
        .arg(certs.join("ca.pem"))
        .arg("--etcd-cert")
        .arg(certs.join("w1.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--etcd-key"), "{err}");
}
