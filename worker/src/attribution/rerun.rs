//! Re-running an answer's attribution from what is stored, without the model: the
//! adapter's attribution index, the datanet version it was trained on (who is credited,
//! acceptance order, duplicate clusters), the withdrawals in force now, and the answer's
//! stored gradient features (checked against the BLAKE3 in the record). The scores, shares
//! and fee split are then recomputed ([`super::record::compute_bits`]) and compared with
//! the stored ones bit for bit: a digest of each side and, when they differ, the first
//! differing field. This is what a disputed record needs (the gateway's
//! `POST /v1/attributions/{id}/rerun` and the dashboard's "Re-run attribution"); recomputing
//! the gradient itself needs the base model (`tributary attribution rerun`).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;
use tributary_attribution::AttributionIndex;
use tributary_ledger::datanet::{Datanets, Manifest, WithdrawnIndex};
use tributary_ledger::store::Store;

use super::AttrError;
use super::record::{
    AttributionRecord, Bits, DataContext, compute_bits, features_from_bytes, index_key,
};

/// Where an index says its data came from: `(data, data digest, datanet (name, version))`.
pub fn data_source(index: &AttributionIndex) -> (String, String, Option<(String, String)>) {
    let prov = &index.header.provenance;
    let data = prov
        .get("data")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let version = prov
        .get("data_digest")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let datanet = data
        .strip_prefix("datanet://")
        .map(|rest| rest.split('@').next().unwrap_or_default().to_string())
        .map(|name| (name, version.clone()));
    (data, version, datanet)
}

/// The data context of an index: contributors from its provenance, then (for a datanet)
/// acceptance order, duplicate clusters and credited owners from the version's manifest.
/// An exact copy has its original's content id: the first entry (acceptance order) is the
/// original, and its owner is credited, never the copier. No withdrawals (see
/// [`withdrawn_now`]).
pub fn data_context(index: &AttributionIndex, manifest: Option<&Manifest>) -> DataContext {
    let n = index.len();
    let mut contributors: Vec<String> = index
        .header
        .provenance
        .get("contributors")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    contributors.resize(n, String::new());
    let mut ctx = DataContext {
        contributors,
        order: (0..n as u64).collect(),
        dup_key: vec![None; n],
        withdrawn: WithdrawnIndex::default(),
    };
    if let Some(m) = manifest {
        let mut pos: HashMap<&str, usize> = HashMap::new();
        for (i, e) in m.examples.iter().enumerate() {
            pos.entry(e.id.as_str()).or_insert(i);
        }
        for (i, id) in index.header.example_ids.iter().enumerate() {
            if let Some(&p) = pos.get(id.as_str()) {
                ctx.order[i] = p as u64;
                ctx.dup_key[i] = Some(m.examples[p].cluster.clone());
                ctx.contributors[i] = m.examples[p].contributor.clone();
            }
        }
    }
    ctx
}

/// Withdrawals in force now (the datanet's head): they apply by answer time.
pub async fn withdrawn_now(store: &Store, datanet: &str) -> Result<WithdrawnIndex, AttrError> {
    let nets = Datanets::new(store.clone());
    let Some((_, digest)) = nets.head(datanet).await.map_err(AttrError::store)? else {
        return Ok(WithdrawnIndex::default());
    };
    let m = nets
        .manifest(datanet, &digest)
        .await
        .map_err(AttrError::store)?;
    Ok(WithdrawnIndex::from_manifest(&m))
}

/// Everything a rerun reads, fetched from the store (the async part).
pub struct RerunInputs {
    pub record: AttributionRecord,
    pub index: AttributionIndex,
    pub ctx: DataContext,
    /// Per choice, its stored features.
    pub features: Vec<Vec<Vec<f32>>>,
}

/// Reads a record's inputs: its adapter's index, the data context with the withdrawals in
/// force now, and each choice's features (whose BLAKE3 must match the record's).
pub async fn rerun_inputs(
    store: &Store,
    record: AttributionRecord,
) -> Result<RerunInputs, AttrError> {
    let get = |key: String| async move {
        store
            .get(&object_store::path::Path::from(key.as_str()))
            .await
            .map_err(AttrError::store)?
            .ok_or_else(|| AttrError::Missing(format!("{key} is missing from the store")))
    };
    let index = AttributionIndex::from_bytes(&get(index_key(&record.adapter)).await?)
        .map_err(AttrError::math)?;
    let (_, _, datanet) = data_source(&index);
    let mut ctx = match &datanet {
        Some((name, version)) => {
            let m = Datanets::new(store.clone())
                .manifest(name, version)
                .await
                .map_err(AttrError::store)?;
            data_context(&index, Some(&m))
        }
        None => data_context(&index, None),
    };
    if let Some((name, _)) = &datanet {
        ctx.withdrawn = withdrawn_now(store, name).await?;
    }
    let dims = index.dims();
    let mut features = Vec::with_capacity(record.choices.len());
    for c in &record.choices {
        let b = get(c.features_key.clone()).await?;
        let found = blake3::hash(&b).to_hex().to_string();
        if found != c.features_blake3 {
            return Err(AttrError::Missing(format!(
                "the stored features {} hash to {found}; the record says {}",
                c.features_key, c.features_blake3
            )));
        }
        features.push(features_from_bytes(&b, dims).ok_or_else(|| {
            AttrError::Missing(format!(
                "{}: not {dims}-dimensional features",
                c.features_key
            ))
        })?);
    }
    Ok(RerunInputs {
        record,
        index,
        ctx,
        features,
    })
}

/// One choice's comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceRerun {
    pub index: u32,
    pub bits_match: bool,
    /// BLAKE3 of the stored and of the recomputed bits (scores by their IEEE-754 bits).
    pub stored_digest: String,
    pub recomputed_digest: String,
    /// The first field that differs: `{field, stored, recomputed}`.
    pub first_difference: Option<Value>,
}

/// A rerun's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RerunReport {
    pub request_id: String,
    pub adapter: String,
    pub bits_match: bool,
    pub choices: Vec<ChoiceRerun>,
    /// Examples scored (the index's length).
    pub examples: usize,
}

/// `bits` as JSON with the f64 scores left out (their bits are compared).
fn canonical(bits: &Bits) -> Value {
    let mut b = bits.clone();
    for t in &mut b.top {
        t.score = 0.0;
    }
    serde_json::to_value(&b).unwrap_or(Value::Null)
}

/// BLAKE3 of a choice's bits (canonical JSON, scores by their IEEE-754 bits).
pub fn bits_digest(bits: &Bits) -> String {
    blake3::hash(canonical(bits).to_string().as_bytes())
        .to_hex()
        .to_string()
}

/// The first place two JSON values differ, as `(path, a, b)`.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<(String, Value, Value)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                first_difference(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            let common = x.len().min(y.len());
            (0..common)
                .find_map(|i| first_difference(&format!("{path}[{i}]"), &x[i], &y[i]))
                .or_else(|| {
                    (x.len() != y.len()).then(|| {
                        (
                            format!("{path}.length"),
                            Value::from(x.len()),
                            Value::from(y.len()),
                        )
                    })
                })
        }
        _ => (a != b).then(|| (path.to_string(), a.clone(), b.clone())),
    }
}

/// Recomputes the bits of every choice (CPU: scores over the whole index) and compares.
pub fn rerun(inputs: &RerunInputs) -> Result<RerunReport, AttrError> {
    let rec = &inputs.record;
    let centered = inputs.index.centered();
    let mut choices = Vec::with_capacity(rec.choices.len());
    for (c, q) in rec.choices.iter().zip(&inputs.features) {
        let again = compute_bits(
            &inputs.index,
            &centered,
            &inputs.ctx,
            q,
            &rec.params,
            &rec.pricing,
            c.completion_tokens,
            rec.answered_ms,
        )
        .map_err(AttrError::record)?;
        let (stored, recomputed) = (canonical(&c.bits), canonical(&again));
        let diff = first_difference("", &stored, &recomputed)
            .map(|(field, s, r)| serde_json::json!({"field": field, "stored": s, "recomputed": r}));
        choices.push(ChoiceRerun {
            index: c.index,
            bits_match: c.bits.same_bits(&again) && diff.is_none(),
            stored_digest: bits_digest(&c.bits),
            recomputed_digest: bits_digest(&again),
            first_difference: diff,
        });
    }
    Ok(RerunReport {
        request_id: rec.request_id.clone(),
        adapter: rec.adapter.clone(),
        bits_match: choices.iter().all(|c| c.bits_match),
        choices,
        examples: inputs.index.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_difference_names_the_field() {
        let a = json!({"shares": {"alice": 10, "bob": 5}, "top": [{"id": "x"}, {"id": "y"}]});
        let mut b = a.clone();
        assert_eq!(first_difference("", &a, &b), None);
        b["top"][1]["id"] = json!("z");
        let (path, x, y) = first_difference("", &a, &b).unwrap();
        assert_eq!((path.as_str(), x, y), ("top[1].id", json!("y"), json!("z")));
        b["shares"]["alice"] = json!(11);
        assert_eq!(first_difference("", &a, &b).unwrap().0, "shares.alice");
        let c = json!({"top": [1, 2, 3]});
        let d = json!({"top": [1, 2]});
        assert_eq!(first_difference("", &c, &d).unwrap().0, "top.length");
    }
}
