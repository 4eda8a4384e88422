//! The reward actor over in-memory stores: a leader pays what the workers left pending, and
//! a new leader (a higher token) re-sending a reward whose receipt was lost pays nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use tributary_attribution::Projection;
use tributary_attribution::fees::{FeeConfig, FeeSplit};
use tributary_ledger::rewards::verify;

use super::*;
use crate::attribution::record::{Bits, ChoiceRecord, FORMAT, Params, PendingMarker};

fn record(rid: &str) -> AttributionRecord {
    AttributionRecord {
        format: FORMAT,
        request_id: rid.into(),
        answered_ms: 1,
        adapter: "00".repeat(32),
        base_model: String::new(),
        data: String::new(),
        data_version: String::new(),
        builder: "bob".into(),
        requester: None,
        method: "tracin_ccos".into(),
        params: Params::default(),
        pricing: FeeConfig {
            price_per_token: 10,
            builder_ppm: 200_000,
        },
        projection: Projection::Exact,
        query_checkpoints: 1,
        choices: vec![ChoiceRecord {
            index: 0,
            prompt_tokens: 1,
            completion_tokens: 5,
            finish: "stop".into(),
            answer: String::new(),
            features_key: String::new(),
            features_blake3: String::new(),
            bits: Bits {
                top: vec![],
                shares: BTreeMap::from([("alice".to_string(), 1_000_000)]),
                fee: FeeSplit {
                    total: 50,
                    builder: 10,
                    contributors: BTreeMap::from([("alice".to_string(), 40)]),
                    unattributed: false,
                },
                withdrawn: vec![],
            },
            evidence: vec![],
        }],
        seconds: 0.0,
    }
}

async fn put_json(store: &Store, key: String, v: &impl serde::Serialize) {
    let b = serde_json::to_vec(v).unwrap();
    store.put(&Key::from(key), Bytes::from(b)).await.unwrap();
}

async fn receipt(store: &Store, rid: &str) -> RewardReceipt {
    for _ in 0..500 {
        if let Some(b) = store.get(&Key::from(receipt_key(rid))).await.unwrap() {
            return serde_json::from_slice(&b).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no receipt for {rid}");
}

async fn marker_gone(store: &Store, rid: &str) -> bool {
    for _ in 0..200 {
        if store
            .get(&Key::from(pending_key(rid)))
            .await
            .unwrap()
            .is_none()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_leader_pays_pending_records_and_a_new_leader_does_not_pay_them_again() {
    let store = Store::open("memory://reward-actor-test").unwrap();
    let replicas = Replicas::open(&["memory://reward-actor-test-log".to_string()]).unwrap();
    let window = Duration::from_millis(20);
    for rid in ["cmpl-a", "cmpl-b"] {
        put_json(&store, record_key(rid), &record(rid)).await;
        let marker = PendingMarker {
            request_id: rid.into(),
            answered_ms: 1,
        };
        put_json(&store, pending_key(rid), &marker).await;
    }
    let first = spawn_leader(replicas.clone(), store.clone(), 10, window)
        .await
        .unwrap();
    for rid in ["cmpl-a", "cmpl-b"] {
        let r = receipt(&store, rid).await;
        assert_eq!(r.total, 50);
        assert_eq!(r.shares["alice"], 40);
        assert_eq!(r.shares["bob"], 10);
        assert!(r.seq.is_some(), "{r:?}");
        assert!(marker_gone(&store, rid).await, "{rid}: the marker stays");
    }
    let report = verify(&replicas).await.unwrap();
    assert!(report.ok);
    assert_eq!(report.records, 2);
    first.stop();

    // The first leader appended cmpl-a and died before its receipt: its marker is back.
    store
        .delete(&Key::from(receipt_key("cmpl-a")))
        .await
        .unwrap();
    let marker = PendingMarker {
        request_id: "cmpl-a".into(),
        answered_ms: 1,
    };
    put_json(&store, pending_key("cmpl-a"), &marker).await;
    let second = spawn_leader(replicas.clone(), store.clone(), 20, window)
        .await
        .unwrap();
    let r = receipt(&store, "cmpl-a").await;
    assert!(r.seq.is_none(), "already in the log: {r:?}");
    assert!(marker_gone(&store, "cmpl-a").await);
    let report = verify(&replicas).await.unwrap();
    assert!(report.ok);
    assert_eq!(report.records, 2, "paid once: {report:?}");
    second.stop();
}

#[test]
fn leader_epochs_order_leaders_first_and_attempts_second() {
    assert_eq!(leader_epoch(3, 0), Some(3 << 16));
    assert!(leader_epoch(3, 65_535).unwrap() < leader_epoch(4, 0).unwrap());
    assert!(leader_epoch(3, 1).unwrap() > leader_epoch(3, 0).unwrap());
    assert_eq!(leader_epoch(3, 1 << 16), None);
    assert_eq!(leader_epoch(u64::MAX, 0), None);
}
