//! Helpers for the datanet governance tests (governance.rs, takedown.rs).

use std::io::BufReader;

use bytes::Bytes;
use tributary_ledger::Store;
use tributary_ledger::adapters::{AdapterFile, AdapterRegistry, Provenance};
use tributary_ledger::datanet::identity::Uploader;
use tributary_ledger::datanet::text::content_id;
use tributary_ledger::datanet::{Datanets, UploadReport};

pub fn chat(q: &str, a: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        .to_string()
}

pub fn id_of(q: &str, a: &str) -> String {
    content_id(&[("user".into(), q.into()), ("assistant".into(), a.into())])
}

pub fn op(who: &str) -> Uploader {
    Uploader::Operator(Some(who.to_string()))
}

pub fn lines(rows: &[(&str, &str)]) -> String {
    rows.iter().map(|(q, a)| chat(q, a) + "\n").collect()
}

pub async fn upload(d: &Datanets, name: &str, body: &str, who: &Uploader) -> UploadReport {
    d.upload(name, BufReader::new(body.as_bytes()), who, None)
        .await
        .unwrap()
}

pub async fn register(store: &Store, data_digest: &str, weights: &[u8]) -> String {
    let reg = AdapterRegistry::new(store.clone());
    let files = vec![AdapterFile {
        name: "adapter_model.safetensors".into(),
        bytes: Bytes::copy_from_slice(weights),
    }];
    reg.register(
        &files,
        Provenance {
            base_model_digest: "b".repeat(64),
            data_digest: data_digest.to_string(),
            job_id: format!("job-{}", weights.len()),
            spec: serde_json::json!({}),
            created_unix_ms: 1,
        },
    )
    .await
    .unwrap()
    .adapter_digest
}
