//! Writer epochs. Each writer claims a unique epoch before it writes: in embedded mode by
//! conditionally creating `epochs/<epoch:020>` (one past the highest seen) on a majority of
//! replicas; in cluster mode the epoch is an external fencing token (the coordinator's etcd
//! leader revision), claimed the same way so a stale or reused token is refused.
//!
//! The epoch objects form a create-only sequence, so this works on stores with conditional
//! create but no compare-and-swap update (object_store's `LocalFileSystem`).

use bytes::Bytes;
use object_store::path::Path;

use super::LogError;
use super::replicas::Replicas;

/// How the writer gets its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// Claim one past the highest epoch on the replicas (embedded mode).
    Embedded,
    /// Use this externally issued, monotonically increasing token (cluster mode).
    Token(u64),
}

const MAX_ATTEMPTS: usize = 32;

pub(crate) fn epoch_key(epoch: u64) -> Path {
    Path::from(format!("epochs/{epoch:020}"))
}

/// The highest epoch claimed on a majority-reachable view of the replicas.
pub(crate) async fn highest_epoch(replicas: &Replicas) -> Result<u64, LogError> {
    let listed = replicas.list_all(&Path::from("epochs")).await;
    let mut max = 0u64;
    let mut ok = 0;
    let mut errors = Vec::new();
    for r in listed {
        match r {
            Ok(names) => {
                ok += 1;
                for n in names {
                    if let Ok(e) = n.parse::<u64>() {
                        max = max.max(e);
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if ok < replicas.majority() {
        return Err(LogError::NoQuorum {
            op: "list epochs",
            seq: None,
            reached: ok,
            needed: replicas.majority(),
            errors,
        });
    }
    Ok(max)
}

/// Claims an epoch on a majority of replicas.
#[tracing::instrument(skip(replicas))]
#[allow(clippy::disallowed_methods)] // a fencing nonce must never repeat across processes
pub(crate) async fn claim(
    replicas: &Replicas,
    fencing: Fencing,
    now_ms: u64,
) -> Result<u64, LogError> {
    let nonce: u64 = rand::random();
    for _ in 0..MAX_ATTEMPTS {
        let current = highest_epoch(replicas).await?;
        let epoch = match fencing {
            Fencing::Embedded => current + 1,
            Fencing::Token(t) if t > current => t,
            Fencing::Token(t) => return Err(LogError::StaleEpoch { token: t, current }),
        };
        let body = Bytes::from(format!(
            "{{\"epoch\":{epoch},\"writer\":\"{nonce:016x}\",\"time_ms\":{now_ms}}}"
        ));
        let r = replicas.create_on_majority(&epoch_key(epoch), &body).await;
        if r.ours.len() >= replicas.majority() {
            tracing::info!(epoch, "claimed writer epoch");
            return Ok(epoch);
        }
        if r.ours.len() + r.theirs.len() < replicas.majority() {
            return Err(LogError::NoQuorum {
                op: "claim epoch",
                seq: None,
                reached: r.ours.len(),
                needed: replicas.majority(),
                errors: r.failed.into_iter().map(|(_, e)| e).collect(),
            });
        }
        if let Fencing::Token(t) = fencing {
            return Err(LogError::StaleEpoch {
                token: t,
                current: t,
            });
        }
        // Another writer claimed the same epoch at the same moment: try the next one.
    }
    Err(LogError::Contended {
        attempts: MAX_ATTEMPTS,
        reason: "claiming a writer epoch".into(),
    })
}

/// The highest epoch above `mine` that any reachable replica shows as claimed, if any.
/// Unreachable replicas are skipped: this is an early warning, the slots are the fence.
pub(crate) async fn newer_than(replicas: &Replicas, mine: u64) -> Option<u64> {
    let prefix = Path::from("epochs");
    let after = format!("{mine:020}");
    let listed = replicas
        .on_every("list", |s| s.list_names_after(&prefix, &after))
        .await;
    listed
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|n| n.parse::<u64>().ok())
        .filter(|e| *e > mine)
        .max()
}
