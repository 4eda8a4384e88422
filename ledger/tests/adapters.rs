//! The adapter registry on a local directory and on a real S3 API server (moto): files under
//! their content address, immutable entries, a second registration returning the first,
//! tampering detected on read, bad file names refused.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use bytes::Bytes;
use common::Backend;
use tributary_ledger::Store;
use tributary_ledger::adapters::{
    AdapterError, AdapterFile, AdapterRegistry, Provenance, adapter_digest,
};

fn files(weights: &[u8]) -> Vec<AdapterFile> {
    vec![
        AdapterFile {
            name: "adapter_model.safetensors".into(),
            bytes: Bytes::copy_from_slice(weights),
        },
        AdapterFile {
            name: "adapter_config.json".into(),
            bytes: Bytes::from_static(br#"{"r": 4, "peft_type": "LORA"}"#),
        },
    ]
}

fn prov(job: &str, at: u64) -> Provenance {
    Provenance {
        base_model_digest: "b".repeat(64),
        data_digest: "d".repeat(64),
        job_id: job.into(),
        spec: serde_json::json!({"train": {"steps": 4}}),
        created_unix_ms: at,
    }
}

async fn registry_round_trip(backend: Backend) {
    let store = Store::open(&backend.url(0)).unwrap();
    let reg = AdapterRegistry::new(store.clone());
    let a = files(b"weights-a");
    let entry = reg.register(&a, prov("job-1", 1)).await.unwrap();
    assert_eq!(entry.adapter_digest, adapter_digest(&a));
    assert_eq!(
        entry.files,
        vec!["adapter_config.json", "adapter_model.safetensors"]
    );
    assert!(
        entry
            .location
            .ends_with(&format!("/adapters/{}", entry.adapter_digest))
    );
    assert!(
        !entry.location.contains('?'),
        "no credentials or query in the location"
    );
    // The digest does not depend on the order files are given in.
    let mut reversed = a.clone();
    reversed.reverse();
    assert_eq!(adapter_digest(&reversed), entry.adapter_digest);

    // Registering the same adapter again (another job) returns the first entry unchanged.
    let again = reg.register(&a, prov("job-2", 2)).await.unwrap();
    assert_eq!(again, entry);
    // Another adapter gets its own entry.
    let b = reg
        .register(&files(b"weights-b"), prov("job-3", 3))
        .await
        .unwrap();
    assert_ne!(b.adapter_digest, entry.adapter_digest);
    let listed = reg.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        reg.get(&entry.adapter_digest).await.unwrap().as_ref(),
        Some(&entry)
    );
    assert_eq!(reg.get(&"0".repeat(64)).await.unwrap(), None);
    let read = reg.files(&entry).await.unwrap();
    assert_eq!(adapter_digest(&read), entry.adapter_digest);

    // Tampering with a stored file is caught on read.
    let key = object_store::path::Path::from(format!(
        "adapters/{}/adapter_model.safetensors",
        entry.adapter_digest
    ));
    store.put(&key, Bytes::from_static(b"evil")).await.unwrap();
    let err = reg.files(&entry).await.unwrap_err();
    assert!(matches!(err, AdapterError::DigestMismatch { .. }), "{err}");
    // Re-registering the original over the tampered file is refused, not overwritten.
    let err = reg.register(&a, prov("job-4", 4)).await.unwrap_err();
    assert!(matches!(err, AdapterError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn registry_on_a_local_directory() {
    registry_round_trip(Backend::local()).await;
}

#[tokio::test]
async fn registry_on_s3_moto() {
    registry_round_trip(Backend::moto()).await;
}

#[tokio::test]
async fn bad_file_names_and_empty_adapters_are_refused() {
    let backend = Backend::local();
    let reg = AdapterRegistry::new(Store::open(&backend.url(0)).unwrap());
    for name in ["../x", "a/b", ".hidden", ""] {
        let f = vec![AdapterFile {
            name: name.into(),
            bytes: Bytes::from_static(b"x"),
        }];
        let err = reg.register(&f, prov("job-1", 1)).await.unwrap_err();
        assert!(
            matches!(err, AdapterError::BadFileName { .. }),
            "{name:?}: {err}"
        );
        assert!(err.to_string().contains("file name"), "{err}");
    }
    let err = reg.register(&[], prov("job-1", 1)).await.unwrap_err();
    assert!(matches!(err, AdapterError::NoFiles));
    assert!(reg.list().await.unwrap().is_empty(), "nothing half-written");
}
