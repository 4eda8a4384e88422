//! SIGTERM (or Ctrl-C) as state that every part of a cluster process can read: from the
//! moment it arrives `/readyz` answers 503 "shutting down", so a load balancer that polls
//! readiness stops sending new work, while the HTTP server keeps serving for
//! `--shutdown-delay-secs` before it closes gracefully. (Kubernetes takes a terminating pod
//! out of its Services by itself; the chart's preStop sleep covers the same window there.)

use std::time::Duration;

use tokio::sync::watch;
use tributary_gateway::Readiness;

/// Whether this process has been asked to stop; cheap to clone.
#[derive(Clone)]
pub struct Termination {
    signalled: watch::Receiver<bool>,
}

impl Termination {
    /// Starts listening for SIGTERM and Ctrl-C (needs a running tokio runtime).
    pub fn listen() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            super::cluster::terminate().await;
            tracing::info!("SIGTERM: /readyz now answers 503 (shutting down)");
            let _ = tx.send(true);
        });
        Self { signalled: rx }
    }

    /// True once SIGTERM or Ctrl-C arrived.
    pub fn is_signalled(&self) -> bool {
        *self.signalled.borrow()
    }

    /// Resolves when SIGTERM or Ctrl-C arrives (at once if it already has).
    pub async fn signalled(&self) {
        let mut rx = self.signalled.clone();
        // An error means the listener is gone, which happens only with the runtime.
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Resolves `delay` after the signal: when the HTTP server should close.
    pub async fn then_after(self, delay: Duration) {
        self.signalled().await;
        tokio::time::sleep(delay).await;
    }

    /// `ready`, except that it answers "shutting down" once the signal arrived.
    pub fn guard(&self, ready: Readiness) -> Readiness {
        let this = self.clone();
        std::sync::Arc::new(move || {
            if this.is_signalled() {
                return Box::pin(async { Err("shutting down (SIGTERM received)".to_string()) });
            }
            ready()
        })
    }
}
