//! Admission control: a bounded number of inference requests in flight per gateway. A
//! request beyond the bound is refused at once (429 with `Retry-After`), never queued
//! without bound; the slot is held until the request's last byte is sent (or its client
//! goes away), so a streaming answer counts for as long as it streams.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The gateway's in-flight bound.
#[derive(Debug, Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    limit: usize,
    retry_after_ms: u64,
}

/// One admitted request's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(m) = crate::openai::metrics::metrics() {
            m.in_flight.dec();
        }
    }
}

impl Admission {
    /// At most `limit` requests in flight (at least 1); refusals ask clients to retry after
    /// `retry_after_ms`.
    pub fn new(limit: usize, retry_after_ms: u64) -> Self {
        let limit = limit.max(1);
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            retry_after_ms,
        }
    }

    /// Takes a slot, or refuses at once.
    pub fn admit(&self) -> Result<Slot, ApiError> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(m) = crate::openai::metrics::metrics() {
                    m.in_flight.inc();
                }
                Ok(Slot { _permit: permit })
            }
            Err(_) => {
                crate::openai::metrics::rejected("overloaded");
                Err(ApiError::Overloaded {
                    retry_after_ms: self.retry_after_ms,
                    message: format!(
                        "the gateway has {} requests in flight, its limit; retry after {} ms",
                        self.limit, self.retry_after_ms
                    ),
                })
            }
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_refuses_at_once_and_frees_on_drop() {
        let a = Admission::new(2, 1000);
        let s1 = a.admit().unwrap();
        let _s2 = a.admit().unwrap();
        assert_eq!(a.in_flight(), 2);
        let e = a.admit().unwrap_err();
        assert_eq!(e.status().as_u16(), 429);
        assert!(e.to_string().contains("2 requests in flight"), "{e}");
        drop(s1);
        assert_eq!(a.in_flight(), 1);
        assert!(a.admit().is_ok());
    }
}
