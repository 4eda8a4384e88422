//! Child processes of a bench: each started with its stderr in a log file, killed by name
//! (SIGKILL, as a crash would), and all killed when the set is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::cluster::ClusterBenchError;

fn setup(e: impl std::fmt::Display) -> ClusterBenchError {
    ClusterBenchError::Setup(e.to_string())
}

/// Child processes of the bench, killed when dropped.
#[derive(Default)]
pub struct Processes {
    children: Vec<(String, Child, PathBuf)>,
}

impl Processes {
    /// Starts `exe args`, its stderr (with `RUST_LOG=info`) to `dir/NAME.log`.
    pub fn spawn(
        &mut self,
        exe: &Path,
        name: &str,
        args: &[String],
        dir: &Path,
    ) -> Result<(), ClusterBenchError> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(setup)?;
        let child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .map_err(|e| setup(format!("spawning {} {name}: {e}", exe.display())))?;
        self.children.push((name.to_string(), child, log));
        Ok(())
    }

    /// What the process has logged so far.
    pub fn log(&self, name: &str) -> String {
        self.children
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, _, log)| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, name: &str) -> Result<(), ClusterBenchError> {
        let (_, child, _) = self
            .children
            .iter_mut()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| ClusterBenchError::Cluster(format!("no process {name}")))?;
        child
            .kill()
            .map_err(|e| ClusterBenchError::Cluster(e.to_string()))?;
        child
            .wait()
            .map_err(|e| ClusterBenchError::Cluster(e.to_string()))?;
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free UDP port on 127.0.0.1 (for a QUIC listener).
pub fn free_udp_port() -> Result<u16, ClusterBenchError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(setup)
}
