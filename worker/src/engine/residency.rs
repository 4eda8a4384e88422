//! The engine loop's adapter residency: loading on a miss (on the loader thread), making a
//! loaded adapter resident (or parking it until there is room), failing the requests of
//! one that cannot be served, and unloading.

use std::sync::Arc;

use tributary_protocol::ids::Digest;
use tributary_protocol::inference::{InferenceError, ModelChoice};

use super::Runner;
use crate::engine::adapter_cache::Inserted;
use crate::engine::loader::Loaded;
use crate::engine::metrics as m;

impl Runner {
    pub(super) fn request_load(&mut self, d: Digest) {
        if self.cache.contains(&d) || self.loading.contains(&d) || self.parked.contains_key(&d) {
            return;
        }
        self.loading.insert(d);
        self.load_backlog.push_back(d);
        self.flush_loads();
    }

    pub(super) fn flush_loads(&mut self) {
        while let Some(d) = self.load_backlog.pop_front() {
            if let Err(e) = self.load_tx.try_send(d) {
                if let std::sync::mpsc::TrySendError::Full(d) = e {
                    self.load_backlog.push_front(d);
                }
                return;
            }
        }
    }

    pub(super) fn loaded(&mut self, d: Digest, result: Result<Loaded, InferenceError>) {
        self.loading.remove(&d);
        match result {
            Ok(l) => {
                m::ADAPTER_LOAD_SECONDS.observe(l.seconds);
                tracing::info!(adapter = %d, bytes = l.bytes, seconds = l.seconds, "adapter loaded");
                self.install(d, l);
            }
            Err(e) => {
                tracing::warn!(adapter = %d, error = %e, "adapter load failed");
                self.pins.remove(&d);
                self.fail_waiting_for(d, e);
            }
        }
    }

    /// Makes a loaded adapter resident if there is room, else parks it.
    pub(super) fn install(&mut self, d: Digest, l: Loaded) {
        let bytes = l.bytes;
        let (outcome, back) = self.cache.insert(d, Arc::clone(&l.adapter), bytes);
        match outcome {
            Inserted::Resident { evicted } => {
                for e in evicted {
                    m::ADAPTER_EVICTIONS.inc();
                    let _ = m::ADAPTER_RESIDENT.remove_label_values(&[&e.to_hex(), &self.worker]);
                    tracing::info!(adapter = %e, "adapter evicted");
                }
                m::ADAPTER_RESIDENT
                    .with_label_values(&[&d.to_hex(), &self.worker])
                    .set(1);
                if self.pins.remove(&d) {
                    self.cache.set_pinned(&d, true);
                }
                for r in self.requests.values_mut() {
                    if !r.ready && r.model == ModelChoice::Adapter(d) && self.cache.acquire(&d) {
                        r.ready = true;
                    }
                }
            }
            Inserted::NoRoomNow => {
                drop(back);
                self.parked.insert(d, l);
            }
            Inserted::TooLarge { bytes, room } => {
                drop(back);
                self.pins.remove(&d);
                self.fail_waiting_for(
                    d,
                    InferenceError::Unavailable(format!(
                        "adapter {d} takes {bytes} bytes; the adapter cache has {room} bytes besides pinned adapters"
                    )),
                );
            }
        }
        m::ADAPTER_CACHE_BYTES.set(self.cache.used().min(i64::MAX as u64) as i64);
    }

    pub(super) fn retry_parked(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let parked: Vec<Digest> = self.parked.keys().copied().collect();
        for d in parked {
            if let Some(l) = self.parked.remove(&d) {
                let waiting = self
                    .requests
                    .values()
                    .any(|r| !r.ready && r.model == ModelChoice::Adapter(d));
                if waiting || self.pins.contains(&d) {
                    self.install(d, l);
                }
            }
        }
    }

    pub(super) fn fail_waiting_for(&mut self, d: Digest, e: InferenceError) {
        let keys: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| !r.ready && r.model == ModelChoice::Adapter(d))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.fail(k, e.clone());
        }
    }

    /// Drops a resident adapter nobody uses and nobody pinned; false otherwise.
    pub(super) fn drop_adapter(&mut self, d: Digest) -> bool {
        let dropped = self.cache.contains(&d) && self.cache.remove(&d);
        if dropped {
            let _ = m::ADAPTER_RESIDENT.remove_label_values(&[&d.to_hex(), &self.worker]);
            m::ADAPTER_CACHE_BYTES.set(self.cache.used().min(i64::MAX as u64) as i64);
            tracing::info!(adapter = %d, "adapter unloaded");
        }
        dropped
    }
}
