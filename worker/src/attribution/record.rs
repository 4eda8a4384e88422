//! The attribution record of one answer, its reward receipt, where both live in object
//! storage, and the pure step from an answer's features to scores, shares and fees that the
//! online path and `tributary attribution rerun` share (so a rerun gives the same bits).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tributary_attribution::fees::{FeeConfig, FeeSplit, split_fee};
use tributary_attribution::shares::shares;
use tributary_attribution::verbatim::Span;
use tributary_attribution::{AttributionIndex, Candidate, ScoreParams, ShareParams};
use tributary_ledger::datanet::takedown::WithdrawnIndex;
use tributary_ledger::rewards::{RewardRecord, Share};

/// Current record format.
pub const FORMAT: u32 = 1;

/// `attribution/index/<adapter>/attribution.index`: the adapter's index.
pub fn index_key(adapter: &str) -> String {
    format!("attribution/index/{adapter}/attribution.index")
}
/// `attribution/index/<adapter>/attribution.json`: its size and cost.
pub fn index_summary_key(adapter: &str) -> String {
    format!("attribution/index/{adapter}/attribution.json")
}
/// `attribution/records/<request id>.json`.
pub fn record_key(request_id: &str) -> String {
    format!("attribution/records/{request_id}.json")
}
/// `attribution/features/<request id>/<choice>.f32`: an answer's stored features.
pub fn features_key(request_id: &str, choice: u32) -> String {
    format!("attribution/features/{request_id}/{choice}.f32")
}
/// `attribution/rewards/<request id>.json`: the receipt of an acknowledged reward entry.
pub fn receipt_key(request_id: &str) -> String {
    format!("attribution/rewards/{request_id}.json")
}
/// The durable backlog of `tributary dev`: `attribution/backlog/<request id>.json`.
pub const DEV_BACKLOG: &str = "attribution/backlog";

/// The durable backlog of a cluster's serving worker `node`:
/// `attribution/backlog/<node>/<request id>.json`. Each worker takes up only its own (the
/// answers it served), so two workers never attribute the same answer.
pub fn worker_backlog(node: &str) -> String {
    format!("{DEV_BACKLOG}/{node}")
}

/// `<backlog>/<request id>.json`: an answer waiting for attribution (durable; taken up
/// when the queue drains, when its retry is due, and after a restart).
pub fn backlog_key(backlog: &str, request_id: &str) -> String {
    format!("{backlog}/{request_id}.json")
}

/// `attribution/pending/<request id>.json`: a stored record whose reward the log has not
/// acknowledged yet. Written after the record, deleted after the receipt: the reward actor
/// (in `dev`, or the coordinator leader's in a cluster) lists this prefix every window, so
/// nothing scans every record or receipt.
pub fn pending_key(request_id: &str) -> String {
    format!("attribution/pending/{request_id}.json")
}
/// `attribution/failed/<request id>.json`: an answer whose attribution failed every attempt.
pub fn failed_key(request_id: &str) -> String {
    format!("attribution/failed/{request_id}.json")
}

/// The marker under [`pending_key`] (the record itself is the truth; this only says where
/// to look).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingMarker {
    pub request_id: String,
    pub answered_ms: u64,
}

/// An answer whose attribution failed on every attempt (kept under [`failed_key`] and shown
/// by `GET /v1/attributions/{request_id}`): not attributed, not billed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedAttribution {
    pub request_id: String,
    pub adapter: String,
    /// The API key that asked (who may read this).
    pub requester: Option<String>,
    pub answered_ms: u64,
    /// Attempts made (the first and the retries).
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// When it was given up (ms since the Unix epoch).
    pub failed_ms: u64,
}

/// Whether `id` can be a request id in an object key (the gateway's `chatcmpl-…`/`cmpl-…`).
pub fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What the data says about each indexed example, in index order: who is credited, its
/// acceptance order, its duplicate cluster; and which withdrawals apply.
#[derive(Debug, Clone, Default)]
pub struct DataContext {
    pub contributors: Vec<String>,
    pub order: Vec<u64>,
    pub dup_key: Vec<Option<String>>,
    pub withdrawn: WithdrawnIndex,
}

/// How answers are scored, shared and priced (recorded with every attribution).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub score: ScoreParams,
    pub shares: ShareParams,
    /// Shortest verbatim span reported, in tokens.
    pub verbatim_min_tokens: usize,
    /// Top examples kept in the record.
    pub top_examples: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            score: ScoreParams {
                method: tributary_attribution::Method::TracinCcos,
            },
            shares: ShareParams::default(),
            verbatim_min_tokens: 4,
            top_examples: 10,
        }
    }
}

/// One highly scored training example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopExample {
    pub id: String,
    pub contributor: String,
    pub score: f64,
    /// `score`'s IEEE-754 bits (JSON does not round-trip every f64 exactly; reruns
    /// compare these).
    pub score_bits: u64,
    /// Whether it may be paid (false: withdrawn before the answer).
    pub paid: bool,
}

/// A verbatim span of the answer found in training examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The span's text.
    pub text: String,
    /// First answer token and length in tokens.
    pub start: usize,
    pub tokens: usize,
    /// Example ids and token offsets where it occurs.
    pub examples: Vec<(String, usize)>,
}

/// The computed part of a choice's attribution: what a rerun must reproduce bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bits {
    pub top: Vec<TopExample>,
    /// Integer shares by contributor (units of `Params::shares.units`).
    pub shares: BTreeMap<String, u64>,
    pub fee: FeeSplit,
    /// Example ids left out because they were withdrawn at or before the answer.
    pub withdrawn: Vec<String>,
}

impl Bits {
    /// Whether `other` has the same bits: every field, scores by their IEEE-754 bits.
    pub fn same_bits(&self, other: &Bits) -> bool {
        let strip = |b: &Bits| {
            let mut b = b.clone();
            for t in &mut b.top {
                t.score = 0.0;
            }
            b
        };
        strip(self) == strip(other)
    }
}

/// One choice of an answer (`n > 1` attributes and bills each choice as its own answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceRecord {
    pub index: u32,
    pub prompt_tokens: usize,
    /// Tokens billed: the generated tokens sent (for a cancelled stream, those sent before
    /// the cancel).
    pub completion_tokens: u64,
    /// `stop`, `length`, or `cancelled`.
    pub finish: String,
    pub answer: String,
    /// Object key and BLAKE3 of the stored features (f32 little-endian).
    pub features_key: String,
    pub features_blake3: String,
    pub bits: Bits,
    pub evidence: Vec<Evidence>,
}

/// An answer's attribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributionRecord {
    pub format: u32,
    pub request_id: String,
    /// When the answer was finished (ms since the Unix epoch): withdrawals at or before it
    /// apply.
    pub answered_ms: u64,
    pub adapter: String,
    pub base_model: String,
    /// The data the adapter was trained on (`datanet://NAME@VERSION` or a path) and its
    /// digest (the datanet version's digest).
    pub data: String,
    pub data_version: String,
    /// The identity that submitted the adapter's job (paid the builder's part).
    pub builder: String,
    /// The API key that asked (who may read this record).
    pub requester: Option<String>,
    pub method: String,
    pub params: Params,
    pub pricing: FeeConfig,
    /// Projection of the answer's gradient (as the index's) and checkpoints used (1: the
    /// served adapter's gradient stands for every checkpoint).
    pub projection: tributary_attribution::Projection,
    pub query_checkpoints: usize,
    pub choices: Vec<ChoiceRecord>,
    /// Seconds computing this record (gradients, scores, evidence).
    pub seconds: f64,
}

/// Why attributing failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("attribution math: {0}")]
    Math(#[from] tributary_attribution::AttributionError),
    #[error("data context: expected {expected} examples (the index), found {found}")]
    Context { expected: usize, found: usize },
}

/// Scores, shares and fee of one answer from its features: the deterministic part.
#[allow(clippy::too_many_arguments)]
pub fn compute_bits(
    index: &AttributionIndex,
    centered: &AttributionIndex,
    ctx: &DataContext,
    query: &[Vec<f32>],
    params: &Params,
    pricing: &FeeConfig,
    billed_tokens: u64,
    at_ms: u64,
) -> Result<Bits, RecordError> {
    let n = index.len();
    if ctx.contributors.len() != n || ctx.order.len() != n || ctx.dup_key.len() != n {
        return Err(RecordError::Context {
            expected: n,
            found: ctx.contributors.len(),
        });
    }
    let scores = tributary_attribution::score::scores(index, query, params.score.method)?;
    let ids = &index.header.example_ids;
    let pays = |i: usize| ctx.withdrawn.pays(&ids[i], &ctx.contributors[i], at_ms);
    let mut withdrawn = Vec::new();
    let mut candidates = Vec::with_capacity(n);
    for (i, &s) in scores.iter().enumerate() {
        if !pays(i) {
            withdrawn.push(ids[i].clone());
            continue;
        }
        candidates.push(Candidate {
            example: i,
            score: s,
            contributor: ctx.contributors[i].clone(),
            order: ctx.order[i],
            dup_key: ctx.dup_key[i].clone(),
        });
    }
    let sh = shares(&candidates, &params.shares, |a, b| centered.cosine(a, b))?;
    let fee = split_fee(billed_tokens, pricing, &sh.by_contributor)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let top = order
        .into_iter()
        .take(params.top_examples)
        .map(|i| TopExample {
            id: ids[i].clone(),
            contributor: ctx.contributors[i].clone(),
            score: scores[i],
            score_bits: scores[i].to_bits(),
            paid: pays(i),
        })
        .collect();
    Ok(Bits {
        top,
        shares: sh.by_contributor,
        fee,
        withdrawn,
    })
}

/// The reward-log record of an attribution: every choice's fee, the builder's part and the
/// contributors' parts summed per identity, sorted.
pub fn reward_record(rec: &AttributionRecord, record_bytes: &[u8]) -> RewardRecord {
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    for c in &rec.choices {
        total = total.saturating_add(c.bits.fee.total);
        if c.bits.fee.builder > 0 {
            *by.entry(rec.builder.clone()).or_default() += c.bits.fee.builder;
        }
        for (who, amount) in &c.bits.fee.contributors {
            *by.entry(who.clone()).or_default() += *amount;
        }
    }
    let mut adapter = [0u8; 32];
    if let Ok(d) = rec.adapter.parse::<tributary_protocol::Digest>() {
        adapter = d.0;
    }
    RewardRecord {
        request_id: rec.request_id.clone(),
        adapter,
        attribution: *blake3::hash(record_bytes).as_bytes(),
        time_ms: rec.answered_ms,
        total,
        shares: by
            .into_iter()
            .filter(|(_, a)| *a > 0)
            .map(|(contributor, amount)| Share {
                contributor,
                amount,
            })
            .collect(),
    }
}

/// What the reward log acknowledged for one request id, kept for the read APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardReceipt {
    pub request_id: String,
    pub adapter: String,
    pub builder: String,
    pub time_ms: u64,
    pub total: u64,
    /// Identity → amount (the builder's part included).
    pub shares: BTreeMap<String, u64>,
    /// The log entry holding it, when this writer appended it (`None`: the log already
    /// held the request id, e.g. after a retry whose first outcome was unknown).
    pub seq: Option<u64>,
    /// When the log acknowledged it (ms since the Unix epoch).
    pub acknowledged_ms: u64,
}

/// f32 features as little-endian bytes (one vector per checkpoint used, concatenated).
pub fn features_to_bytes(q: &[Vec<f32>]) -> Vec<u8> {
    q.iter()
        .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
        .collect()
}

/// The inverse of [`features_to_bytes`] for vectors of `dims`.
pub fn features_from_bytes(bytes: &[u8], dims: usize) -> Option<Vec<Vec<f32>>> {
    if dims == 0 || !bytes.len().is_multiple_of(dims * 4) {
        return None;
    }
    let flat: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(flat.chunks(dims).map(<[f32]>::to_vec).collect())
}

/// Spans as evidence, with the example ids of `doc_ids` (suffix-index document → example id).
pub fn evidence(
    spans: &[Span],
    doc_ids: &[String],
    text_of: impl Fn(usize, usize) -> String,
) -> Vec<Evidence> {
    spans
        .iter()
        .map(|s| Evidence {
            text: text_of(s.start, s.len),
            start: s.start,
            tokens: s.len,
            examples: s
                .occurrences
                .iter()
                .filter_map(|o| doc_ids.get(o.doc).map(|id| (id.clone(), o.offset)))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_attribution::{BlockLayout, IndexCheckpoint, IndexHeader, Projection};

    fn index() -> AttributionIndex {
        let layout = BlockLayout::new(vec![("l0".into(), 3)]);
        let header = IndexHeader {
            projection: Projection::Exact,
            gradient_layout: layout.clone(),
            feature_layout: layout,
            checkpoints: vec![IndexCheckpoint { step: 1, lr: 1.0 }],
            example_ids: vec!["a".into(), "b".into(), "c".into()],
            provenance: serde_json::Value::Null,
            fit_losses: None,
        };
        AttributionIndex::new(
            header,
            vec![vec![
                vec![1.0, 0.0, 0.0],
                vec![0.0, 1.0, 0.0],
                vec![0.0, 0.0, 1.0],
            ]],
        )
        .unwrap()
    }

    fn ctx() -> DataContext {
        DataContext {
            contributors: vec!["alice".into(), "bob".into(), "carol".into()],
            order: vec![0, 1, 2],
            dup_key: vec![None, None, None],
            withdrawn: WithdrawnIndex::default(),
        }
    }

    fn params() -> Params {
        Params {
            score: ScoreParams {
                method: tributary_attribution::Method::Tracin,
            },
            ..Params::default()
        }
    }

    const PRICE: FeeConfig = FeeConfig {
        price_per_token: 10,
        builder_ppm: 200_000,
    };

    #[test]
    fn shares_and_fee_follow_the_scores_and_reward_sums_per_identity() {
        let idx = index();
        let q = vec![vec![2.0, 1.0, -1.0]];
        let b = compute_bits(&idx, &idx.centered(), &ctx(), &q, &params(), &PRICE, 5, 100).unwrap();
        assert_eq!(b.shares["alice"], 666_667);
        assert_eq!(b.shares["bob"], 333_333);
        assert!(
            !b.shares.contains_key("carol"),
            "a negative score earns nothing"
        );
        assert_eq!(b.fee.total, 50);
        assert_eq!(b.fee.builder, 10);
        assert_eq!(b.top[0].id, "a");
        let rec = AttributionRecord {
            format: FORMAT,
            request_id: "chatcmpl-1".into(),
            answered_ms: 100,
            adapter: "00".repeat(32),
            base_model: String::new(),
            data: String::new(),
            data_version: String::new(),
            builder: "bob".into(),
            requester: None,
            method: "tracin".into(),
            params: params(),
            pricing: PRICE,
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
                bits: b,
                evidence: vec![],
            }],
            seconds: 0.0,
        };
        let r = reward_record(&rec, b"x");
        r.check().unwrap();
        assert_eq!(r.total, 50);
        // bob is the builder (10) and a contributor (40 × 1/3, rounded).
        let bob = r
            .shares
            .iter()
            .find(|s| s.contributor == "bob")
            .unwrap()
            .amount;
        let alice = r
            .shares
            .iter()
            .find(|s| s.contributor == "alice")
            .unwrap()
            .amount;
        assert_eq!(bob + alice, 50);
        assert_eq!(alice, 27);
    }

    #[test]
    fn an_example_withdrawn_before_the_answer_earns_nothing_after_it_does() {
        let idx = index();
        let q = vec![vec![2.0, 1.0, -1.0]];
        let mut c = ctx();
        let m: tributary_ledger::datanet::Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "datanet": "n", "parent": null, "number": 2, "created_ms": 50,
            "upload": tributary_ledger::datanet::manifest::UploadInfo::default(),
            "examples": [], "contributors": {},
            "withdrawn": [{"id": "a", "contributor": "alice", "time_ms": 50, "seq": 1, "erased": false}],
        }))
        .unwrap();
        c.withdrawn = WithdrawnIndex::from_manifest(&m);
        let after = compute_bits(&idx, &idx.centered(), &c, &q, &params(), &PRICE, 5, 100).unwrap();
        assert!(!after.shares.contains_key("alice"), "{after:?}");
        assert_eq!(after.shares["bob"], 1_000_000);
        assert_eq!(after.withdrawn, vec!["a".to_string()]);
        assert!(!after.top[0].paid);
        let before = compute_bits(&idx, &idx.centered(), &c, &q, &params(), &PRICE, 5, 49).unwrap();
        assert!(
            before.shares["alice"] > 0,
            "answers before the takedown keep their shares"
        );
    }

    #[test]
    fn features_round_trip_and_request_ids_are_checked() {
        let q = vec![vec![1.5f32, -2.0], vec![0.25, 8.0]];
        assert_eq!(features_from_bytes(&features_to_bytes(&q), 2).unwrap(), q);
        assert!(features_from_bytes(&[0; 5], 2).is_none());
        assert!(valid_request_id("chatcmpl-abc_1"));
        assert!(!valid_request_id("../x") && !valid_request_id(""));
    }
}
