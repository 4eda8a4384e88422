//! Graceful shutdown, after mini-redis: a broadcast channel tells every task to stop, and
//! each task holds an mpsc sender whose drop tells the owner that the task has finished.

use tokio::sync::{broadcast, mpsc};

/// Listens for the shutdown signal. Cheap to clone via [`Shutdown::resubscribe`].
#[derive(Debug)]
pub struct Shutdown {
    is_shutdown: bool,
    notify: broadcast::Receiver<()>,
    _done: mpsc::Sender<()>,
}

impl Shutdown {
    /// True once the signal has been received.
    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the signal (returns at once if already received).
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        // Closed or lagged both mean: stop.
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }

    /// Another listener for a sub-task; it also keeps the owner waiting until dropped.
    pub fn resubscribe(&self) -> Self {
        Self {
            is_shutdown: self.is_shutdown,
            notify: self.notify.resubscribe(),
            _done: self._done.clone(),
        }
    }
}

/// The owner side: signals shutdown and waits for every listener to drop.
#[derive(Debug)]
pub struct ShutdownController {
    notify: broadcast::Sender<()>,
    done_tx: Option<mpsc::Sender<()>>,
    done_rx: mpsc::Receiver<()>,
}

impl Default for ShutdownController {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownController {
    /// A controller with no listeners yet.
    pub fn new() -> Self {
        let (notify, _) = broadcast::channel(1);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            notify,
            done_tx: Some(done_tx),
            done_rx,
        }
    }

    /// A new listener.
    pub fn subscribe(&self) -> Shutdown {
        let (tx, _) = mpsc::channel(1);
        Shutdown {
            is_shutdown: false,
            notify: self.notify.subscribe(),
            _done: self.done_tx.clone().unwrap_or(tx),
        }
    }

    /// Signals every listener and waits until all of them have been dropped.
    pub async fn shutdown(mut self) {
        let _ = self.notify.send(());
        self.done_tx.take();
        let _ = self.done_rx.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn shutdown_waits_for_tasks_to_finish() {
        let ctl = ShutdownController::new();
        let finished = Arc::new(AtomicBool::new(false));
        let mut sd = ctl.subscribe();
        let f = finished.clone();
        tokio::spawn(async move {
            sd.recv().await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            f.store(true, Ordering::SeqCst);
            drop(sd);
        });
        ctl.shutdown().await;
        assert!(finished.load(Ordering::SeqCst));
    }
}
