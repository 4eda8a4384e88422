//! Per-contributor and per-adapter views of the reward receipts, so the read API
//! (`GET /v1/contributors/{id}/rewards`, `GET /v1/adapters/{id}/contributors`) lists only the
//! receipts it needs instead of every receipt in the store.
//!
//! For each acknowledged reward the reward actor writes, after the receipt itself:
//! - `attribution/by-contributor/<contributor>/<entry>.json`, one per identity in the
//!   receipt's shares ([`ContributorEntry`]: request id, adapter, amount, builder or not);
//! - `attribution/by-adapter/<adapter digest>/<entry>.json`, a copy of the receipt.
//!
//! `<entry>` is `<time_ms, 13 digits>-<request id>` ([`entry_name`]), so a listing is in
//! answer order and a page can start after any entry. The entries are derived data: the
//! receipt is written first and the pending marker is deleted only after every entry is
//! stored, so a crash in between re-writes them (the writes are idempotent). Stores written
//! before these views existed are filled in once by [`backfill`], which the reward actor runs
//! when it starts (a marker object records that it finished).

use bytes::Bytes;
use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};
use tributary_ledger::store::{Store, StoreError};

use super::record::{RewardReceipt, receipt_key};

/// Prefix of the per-contributor entries.
pub const BY_CONTRIBUTOR: &str = "attribution/by-contributor";
/// Prefix of the per-adapter entries.
pub const BY_ADAPTER: &str = "attribution/by-adapter";
/// Written once [`backfill`] has indexed every receipt that existed before the views.
pub const BACKFILLED_MARKER: &str = "attribution/receipt-views-v1.json";

/// One reward of one identity (the row `GET /v1/contributors/{id}/rewards` returns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContributorEntry {
    pub request_id: String,
    pub adapter: String,
    pub amount: u64,
    /// The identity is the adapter's builder (its part of the fee includes the builder's).
    pub as_builder: bool,
    pub time_ms: u64,
    /// The reward log entry holding it (see [`RewardReceipt::seq`]).
    pub seq: Option<u64>,
}

/// A path segment for an identity: the id itself when it is made of `[A-Za-z0-9_.-]` (not
/// starting with `.`), else `=` and its bytes in hex (`=` cannot start a plain id, so the two
/// forms never collide, and a `/` in an id cannot reach into another identity's folder).
pub fn identity_segment(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if plain {
        id.to_string()
    } else {
        let mut s = String::with_capacity(1 + 2 * id.len());
        s.push('=');
        for b in id.bytes() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// `<time_ms, 13 digits>-<request id>`: the entry name of a receipt in either view.
pub fn entry_name(receipt: &RewardReceipt) -> String {
    format!("{:013}-{}", receipt.time_ms, receipt.request_id)
}

/// The folder of `contributor`'s entries.
pub fn contributor_prefix(contributor: &str) -> String {
    format!("{BY_CONTRIBUTOR}/{}", identity_segment(contributor))
}

/// The folder of `adapter`'s entries (`adapter` is a digest).
pub fn adapter_prefix(adapter: &str) -> String {
    format!("{BY_ADAPTER}/{}", identity_segment(adapter))
}

/// Writes both views' entries of `receipt` (idempotent: the same bytes each time).
pub async fn write_entries(store: &Store, receipt: &RewardReceipt) -> Result<(), StoreError> {
    let name = entry_name(receipt);
    for (who, &amount) in &receipt.shares {
        let entry = ContributorEntry {
            request_id: receipt.request_id.clone(),
            adapter: receipt.adapter.clone(),
            amount,
            as_builder: *who == receipt.builder,
            time_ms: receipt.time_ms,
            seq: receipt.seq,
        };
        let key = Key::from(format!("{}/{name}.json", contributor_prefix(who)));
        store.put(&key, Bytes::from(to_json(&entry))).await?;
    }
    let key = Key::from(format!("{}/{name}.json", adapter_prefix(&receipt.adapter)));
    store.put(&key, Bytes::from(to_json(receipt))).await
}

fn to_json(v: &impl Serialize) -> Vec<u8> {
    // Plain structs of strings and integers: serialisation cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// A page of entries under `prefix`: at most `limit` (all when `None`) entry names after
/// `after` (from the start when `None`), in order, with their decoded bodies. Entries that
/// do not decode are skipped (logged).
pub async fn list_entries<T: for<'de> Deserialize<'de>>(
    store: &Store,
    prefix: &str,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<(String, T)>, StoreError> {
    let folder = Key::from(prefix);
    let names = match after {
        Some(a) => {
            store
                .list_names_after(&folder, &format!("{a}.json"))
                .await?
        }
        None => store.list_names(&folder).await?,
    };
    let mut out = Vec::new();
    for name in names {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let Some(entry) = name.strip_suffix(".json") else {
            continue;
        };
        let key = Key::from(format!("{prefix}/{name}"));
        let Some(bytes) = store.get(&key).await? else {
            continue;
        };
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => out.push((entry.to_string(), v)),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "skipping an unreadable receipt view entry")
            }
        }
    }
    Ok(out)
}

/// Indexes every receipt stored before the views existed, once: a no-op when
/// [`BACKFILLED_MARKER`] exists. Returns how many receipts it indexed.
pub async fn backfill(store: &Store) -> Result<usize, StoreError> {
    let marker = Key::from(BACKFILLED_MARKER);
    if store.get(&marker).await?.is_some() {
        return Ok(0);
    }
    let names = store.list_names(&Key::from("attribution/rewards")).await?;
    let mut n = 0;
    for name in names {
        let Some(rid) = name.strip_suffix(".json") else {
            continue;
        };
        let Some(bytes) = store.get(&Key::from(receipt_key(rid))).await? else {
            continue;
        };
        if let Ok(receipt) = serde_json::from_slice::<RewardReceipt>(&bytes) {
            write_entries(store, &receipt).await?;
            n += 1;
        }
    }
    store
        .put(&marker, Bytes::from_static(b"{\"version\":1}"))
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_segments_are_plain_or_hex_and_never_collide() {
        assert_eq!(identity_segment("ana"), "ana");
        assert_eq!(identity_segment("key-1.b_2"), "key-1.b_2");
        assert_eq!(identity_segment("a/b"), "=612f62");
        assert_eq!(identity_segment(".."), "=2e2e");
        assert_eq!(identity_segment(""), "=");
        assert_eq!(identity_segment("é"), "=c3a9");
        // A plain id can never start with `=`, so no plain id equals a hex segment.
        assert_ne!(identity_segment("=612f62"), "=612f62");
    }

    #[test]
    fn entry_names_sort_by_time_then_request_id() {
        let r = |t: u64, id: &str| RewardReceipt {
            request_id: id.into(),
            adapter: "d".into(),
            builder: "b".into(),
            time_ms: t,
            total: 1,
            shares: Default::default(),
            seq: None,
            acknowledged_ms: 0,
        };
        let mut names = vec![
            entry_name(&r(10_000, "chatcmpl-b")),
            entry_name(&r(9_000, "chatcmpl-z")),
            entry_name(&r(10_000, "chatcmpl-a")),
        ];
        names.sort();
        assert_eq!(
            names,
            [
                "0000000009000-chatcmpl-z",
                "0000000010000-chatcmpl-a",
                "0000000010000-chatcmpl-b"
            ]
        );
    }
}
