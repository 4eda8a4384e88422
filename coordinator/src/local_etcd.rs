//! A throwaway single-node etcd (Debian's `etcd` binary) on free loopback ports with a
//! temporary data dir; waits until healthy, kills on drop, and can be stopped and restarted
//! on the same ports and data. `tributary bench cluster` runs its cluster on one, and the
//! tests use it for "etcd restarted under the cluster" faults.
//!
//! [`EtcdServer::start_tls`] serves clients over TLS and requires their certificates
//! (`--client-cert-auth`), as a production etcd does. Health is read over plain HTTP on a
//! separate metrics port either way.
//!
//! If no etcd binary is found this returns an error that says how to install one; tests
//! must fail on it, never skip. `TRIBUTARY_ETCD_BIN` overrides the binary.
// Waits in real time for a real etcd process to become healthy.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::CoordError;

/// A running etcd server owned by a test.
#[derive(Debug)]
pub struct EtcdServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    tls: Option<ServerTls>,
    child: Option<Child>,
}

/// The PEM files of a TLS etcd: its server certificate and key, and the CA its clients'
/// certificates must be signed by.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn harness(msg: impl Into<String>) -> CoordError {
    CoordError::Harness(msg.into())
}

/// Finds the etcd binary: `TRIBUTARY_ETCD_BIN`, then `PATH`, then `/usr/bin/etcd`.
pub fn etcd_binary() -> Result<PathBuf, CoordError> {
    if let Ok(p) = std::env::var("TRIBUTARY_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let cand = dir.join("etcd");
        if cand.is_file() {
            return Ok(cand);
        }
    }
    Err(harness(
        "etcd binary not found (tests need a real etcd): run scripts/setup-test-deps.sh \
         (installs Debian's etcd-server) or set TRIBUTARY_ETCD_BIN",
    ))
}

fn free_port() -> Result<u16, CoordError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| harness(format!("bind: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| harness(format!("local_addr: {e}")))
}

impl EtcdServer {
    /// Starts etcd and waits until it reports healthy.
    pub fn start() -> Result<Self, CoordError> {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS with client certificates required.
    pub fn start_tls(tls: ServerTls) -> Result<Self, CoordError> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls>) -> Result<Self, CoordError> {
        let bin = etcd_binary()?;
        let dir = tempfile::tempdir().map_err(|e| harness(format!("temp dir: {e}")))?;
        let mut s = Self {
            bin,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
            metrics_port: free_port()?,
            tls,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> Result<(), CoordError> {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log"))
            .map_err(|e| harness(format!("log file: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| harness(format!("log file: {e}")))?;
        let mut cmd = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port))
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| harness(format!("spawning {}: {e}", self.bin.display())))?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), CoordError> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.healthy() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                return Err(harness(format!("etcd exited with {status}: {log}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(harness(format!(
            "etcd not healthy on {} within {timeout:?}",
            self.url()
        )))
    }

    /// Kills etcd (SIGKILL) and waits for it to exit; data stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir.
    pub fn restart(&mut self) -> Result<(), CoordError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
