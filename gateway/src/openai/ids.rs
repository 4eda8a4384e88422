//! Response ids: `chatcmpl-…` for chat, `cmpl-…` for completions; random and unique (a
//! process-wide counter is mixed in, so two requests in one process never share one). The
//! id is the request's id everywhere after: logs, the engine, attribution and rewards.
// Response ids take fresh entropy and wall time so that they never repeat across restarts.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::validate::Endpoint;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh id for a request to `endpoint`.
pub fn request_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:016x}{:08x}", rand::random::<u64>(), n as u32)
}

/// Seconds since the Unix epoch (`created`).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (records).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_unique() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| request_id(Endpoint::Chat)).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(
            ids.iter()
                .all(|i| i.starts_with("chatcmpl-") && i.len() == 33)
        );
        assert!(request_id(Endpoint::Completion).starts_with("cmpl-"));
    }
}
