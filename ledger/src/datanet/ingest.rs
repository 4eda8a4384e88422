//! Ingest: read and validate an upload (independent of the datanet's state), then merge
//! the valid rows into the current head manifest: quarantine, exact duplicates, near-
//! duplicate clusters. Merging is pure apart from reading existing examples' text to
//! confirm LSH candidates, so it can be re-run against a newer head after losing a publish
//! race.
//!
//! Between the two, [`resolve`] applies the datanet's scanner policy to each row's
//! findings (reject, redact, hold for review) and, when the datanet requires review, sends
//! every remaining row to the review queue instead of the merge.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;

use serde::Serialize;

use super::DatanetError;
use super::identity::Identity;
use super::manifest::{Consent, ContributorStats, Entry, Event, Kind, Manifest, UploadInfo};
use super::minhash::{self, BANDS};
use super::record::{self, Limits, Lines, Row, RowError};
use super::scan::{self, Action, Policy};
use super::text;

/// Quarantine thresholds: a contributor with at least `min_rows` rows whose rejection
/// rate reaches `rate` is quarantined (their rows are refused from then on).
#[derive(Debug, Clone, Copy)]
pub struct QuarantineRule {
    pub rate: f64,
    pub min_rows: u64,
}

impl Default for QuarantineRule {
    fn default() -> Self {
        Self {
            rate: 0.5,
            min_rows: 20,
        }
    }
}

/// A validated upload, before authentication and merging.
#[derive(Debug)]
pub struct ParsedUpload {
    /// BLAKE3 of every byte read (what a signature covers).
    pub digest: [u8; 32],
    pub bytes: u64,
    /// Non-blank lines.
    pub rows: u64,
    pub valid: Vec<Row>,
    /// Rejected rows with the contributor named by the row, if readable.
    pub rejected: Vec<(RowError, Option<String>)>,
}

/// Reads and validates an upload.
pub fn parse_upload(reader: impl BufRead, limits: &Limits) -> Result<ParsedUpload, DatanetError> {
    let mut lines = Lines::new(reader, limits.max_line_bytes);
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    let mut rows = 0u64;
    while let Some(line) = lines.next_line().map_err(DatanetError::Read)? {
        match record::parse_line(&line, limits) {
            Ok(Some(row)) => {
                rows += 1;
                valid.push(row);
            }
            Ok(None) => {}
            Err(e) => {
                rows += 1;
                let hint = contributor_hint(&line.bytes);
                rejected.push((e, hint));
            }
        }
    }
    Ok(ParsedUpload {
        digest: *lines.hasher.finalize().as_bytes(),
        bytes: lines.total_bytes,
        rows,
        valid,
        rejected,
    })
}

fn contributor_hint(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let c = v.get("contributor")?.as_str()?;
    record::valid_contributor(c).then(|| c.to_string())
}

/// A row ready to merge.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub line: u64,
    pub contributor: String,
    pub messages: Vec<(String, String)>,
    pub id: String,
    pub shingles: HashSet<u64>,
    pub bands: [u32; BANDS],
    /// The terms record the row was contributed under.
    pub terms: u64,
}

impl Candidate {
    /// Builds a candidate from (possibly redacted) messages.
    pub fn new(
        line: u64,
        contributor: String,
        messages: Vec<(String, String)>,
        terms: u64,
    ) -> Self {
        let normalized = text::normalized(&messages);
        let id = blake3::hash(normalized.as_bytes()).to_hex().to_string();
        let body: Vec<&str> = normalized.lines().collect();
        let shingles = minhash::shingles(&body.join(" "));
        let bands = minhash::band_keys(&shingles);
        Candidate {
            line,
            contributor,
            messages,
            id,
            shingles,
            bands,
            terms,
        }
    }
}

/// One scanner finding as reported to the uploader: never the matched text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub line: u64,
    pub field: String,
    pub kind: scan::Kind,
    /// Span in characters within the field.
    pub start: usize,
    pub end: usize,
    pub action: Action,
}

/// A row sent to the owner's review queue.
#[derive(Debug, Clone)]
pub struct HeldRow {
    pub candidate: Candidate,
    /// Why it is held (review required, or scanner kinds and spans).
    pub reasons: Vec<String>,
}

/// Rows with contributors resolved against the uploader's identity.
#[derive(Debug)]
pub struct Resolved {
    pub candidates: Vec<Candidate>,
    /// (row error, contributor charged with it).
    pub rejected: Vec<(RowError, Option<String>)>,
    /// Rows for the review queue.
    pub held: Vec<HeldRow>,
    /// Every scanner finding with the action taken.
    pub scan: Vec<ScanReport>,
}

/// How [`resolve`] treats rows: the scanner policy, whether review is required, and the
/// terms record in force.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub policy: Policy,
    pub review: bool,
    pub terms: u64,
}

fn spans(findings: &[&record::RowFinding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "{} at {} chars {}..{}",
                f.kind.name(),
                f.field,
                f.start,
                f.end
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies the uploader's identity (rows get the uploader's contributor unless they name
/// one; only the operator may name someone else), then the scanner policy and the review
/// setting.
pub fn resolve(parsed: ParsedUpload, who: &Identity, gate: &Gate) -> Resolved {
    let mut rejected: Vec<(RowError, Option<String>)> = parsed
        .rejected
        .into_iter()
        .map(|(e, hint)| {
            let charged = if who.may_name_others {
                hint.or_else(|| who.contributor.clone())
            } else {
                who.contributor.clone()
            };
            (e, charged)
        })
        .collect();
    let mut candidates = Vec::with_capacity(parsed.valid.len());
    let mut held_rows = Vec::new();
    let mut scan_report = Vec::new();
    for row in parsed.valid {
        let contributor = match (&row.contributor, &who.contributor) {
            (Some(c), Some(u)) if c != u && !who.may_name_others => {
                rejected.push((
                    RowError {
                        line: row.line,
                        field: "contributor".into(),
                        reason: format!("`{c}` does not match the uploader's contributor id `{u}`"),
                    },
                    Some(u.clone()),
                ));
                continue;
            }
            (Some(c), _) => c.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => {
                rejected.push((
                    RowError {
                        line: row.line,
                        field: "contributor".into(),
                        reason: "missing: the row has no `contributor` and the upload names \
                                 none (--contributor)"
                            .into(),
                    },
                    None,
                ));
                continue;
            }
        };
        let action_of = |f: &record::RowFinding| gate.policy.action(f.kind);
        for f in &row.findings {
            scan_report.push(ScanReport {
                line: row.line,
                field: f.field.clone(),
                kind: f.kind,
                start: f.start,
                end: f.end,
                action: action_of(f),
            });
        }
        let worst = row.findings.iter().map(action_of).max();
        if worst == Some(Action::Reject) {
            let bad: Vec<&record::RowFinding> = row
                .findings
                .iter()
                .filter(|f| action_of(f) == Action::Reject)
                .collect();
            rejected.push((
                RowError {
                    line: row.line,
                    field: bad.first().map(|f| f.field.clone()).unwrap_or_default(),
                    reason: format!("personal data or secret ({}); policy: reject", spans(&bad)),
                },
                Some(contributor),
            ));
            continue;
        }
        let mut messages = row.messages;
        for (mi, (_, content)) in messages.iter_mut().enumerate() {
            let here: Vec<scan::Finding> = row
                .findings
                .iter()
                .filter(|f| f.message == mi && action_of(f) == Action::Redact)
                .map(|f| scan::Finding {
                    kind: f.kind,
                    start: f.message_start,
                    end: f.message_end,
                })
                .collect();
            if !here.is_empty() {
                *content = scan::redact(content, &here, |_| true);
            }
        }
        let candidate = Candidate::new(row.line, contributor, messages, gate.terms);
        let held: Vec<&record::RowFinding> = row
            .findings
            .iter()
            .filter(|f| action_of(f) == Action::Hold)
            .collect();
        let mut reasons = Vec::new();
        if !held.is_empty() {
            reasons.push(format!("held by the scanner policy: {}", spans(&held)));
        }
        if gate.review {
            reasons.push("the datanet requires review".to_string());
        }
        if reasons.is_empty() {
            candidates.push(candidate);
        } else {
            held_rows.push(HeldRow { candidate, reasons });
        }
    }
    rejected.sort_by_key(|(e, _)| e.line);
    Resolved {
        candidates,
        rejected,
        held: held_rows,
        scan: scan_report,
    }
}

/// Reads the shingles of an existing example (by content id) for a candidate check.
pub trait ExampleSource {
    fn shingles(
        &self,
        id: &str,
    ) -> impl std::future::Future<Output = Result<HashSet<u64>, DatanetError>> + Send;
}

/// The outcome of a merge.
#[derive(Debug)]
pub struct Merged {
    pub manifest: Manifest,
    /// Candidates whose example objects must exist before publishing (originals and
    /// near-duplicates new to the datanet).
    pub new_examples: Vec<usize>,
    pub accepted: u64,
    pub duplicates: u64,
    pub near_duplicates: u64,
    pub rejected: Vec<RowError>,
    pub quarantined: Vec<String>,
}

/// Everything a merge needs besides the head and the examples.
pub struct MergeInput<'a> {
    pub datanet: &'a str,
    pub resolved: &'a Resolved,
    pub digest: [u8; 32],
    pub rows: u64,
    pub who: &'a Identity,
    pub rule: QuarantineRule,
    pub now_ms: u64,
    /// The terms in force and the upload's consent to them.
    pub terms: u64,
    pub consent: Option<Consent>,
    /// Set for versions made by review decisions.
    pub event: Option<Event>,
    /// Review items this merge applies.
    pub reviewed: &'a [String],
}

/// Merges resolved rows into `base` (the current head, if any).
pub async fn merge(
    input: &MergeInput<'_>,
    base: Option<(&Manifest, &str)>,
    source: &impl ExampleSource,
) -> Result<Merged, DatanetError> {
    let mut contributors: BTreeMap<String, ContributorStats> = base
        .map(|(m, _)| m.contributors.clone())
        .unwrap_or_default();
    let mut examples: Vec<Entry> = base.map(|(m, _)| m.examples.clone()).unwrap_or_default();
    let withdrawn: HashMap<&str, u64> = base
        .map(|(m, _)| {
            m.withdrawn
                .iter()
                .filter(|w| w.erased)
                .map(|w| (w.id.as_str(), w.seq))
                .collect()
        })
        .unwrap_or_default();
    let mut rejected: Vec<RowError> = Vec::new();
    // Quarantine first, from validation results alone, so it never depends on merge order.
    let mut this_rows: HashMap<&str, (u64, u64)> = HashMap::new();
    for (_, c) in &input.resolved.rejected {
        if let Some(c) = c {
            let e = this_rows.entry(c.as_str()).or_default();
            e.0 += 1;
            e.1 += 1;
        }
    }
    for c in &input.resolved.candidates {
        this_rows.entry(c.contributor.as_str()).or_default().0 += 1;
    }
    let mut quarantined_now: Vec<String> = Vec::new();
    let mut blocked: HashSet<String> = HashSet::new();
    for (c, (rows, rej)) in &this_rows {
        let stats = contributors.entry(c.to_string()).or_default();
        if stats.quarantined {
            blocked.insert(c.to_string());
            continue;
        }
        if super::reputation::crosses(&input.rule, stats, *rows, *rej) {
            stats.quarantined = true;
            quarantined_now.push(c.to_string());
            blocked.insert(c.to_string());
        }
    }
    quarantined_now.sort();
    for (e, c) in &input.resolved.rejected {
        if let Some(c) = c {
            contributors.entry(c.clone()).or_default().rejected += 1;
        }
        rejected.push(e.clone());
    }
    // Index of the base: ids, and LSH buckets of every non-duplicate entry.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut buckets: HashMap<(usize, u32), Vec<usize>> = HashMap::new();
    for (i, e) in examples.iter().enumerate() {
        ids.entry(e.id.clone()).or_insert_with(|| e.cluster.clone());
        if let Some(keys) = minhash::decode_keys(&e.lsh) {
            for (b, k) in keys.iter().enumerate() {
                buckets.entry((b, *k)).or_default().push(i);
            }
        }
    }
    let mut local: HashMap<String, &HashSet<u64>> = HashMap::new();
    let mut fetched: HashMap<String, HashSet<u64>> = HashMap::new();
    let (mut accepted, mut duplicates, mut near) = (0u64, 0u64, 0u64);
    let mut new_examples = Vec::new();
    for (ci, c) in input.resolved.candidates.iter().enumerate() {
        if blocked.contains(&c.contributor) {
            let stats = contributors.entry(c.contributor.clone()).or_default();
            stats.rejected += 1;
            rejected.push(RowError {
                line: c.line,
                field: "contributor".into(),
                reason: format!(
                    "contributor `{}` is quarantined: {} of {} rows rejected (limit {:.0}% over at least {} rows)",
                    c.contributor,
                    stats.rejected,
                    stats.rows(),
                    input.rule.rate * 100.0,
                    input.rule.min_rows
                ),
            });
            continue;
        }
        let stats = contributors.entry(c.contributor.clone()).or_default();
        if let Some(seq) = withdrawn.get(c.id.as_str()) {
            stats.rejected += 1;
            rejected.push(RowError {
                line: c.line,
                field: String::new(),
                reason: format!(
                    "this example was withdrawn and erased by takedown {seq}; it may not be uploaded again"
                ),
            });
            continue;
        }
        if let Some(cluster) = ids.get(&c.id) {
            stats.duplicates += 1;
            duplicates += 1;
            examples.push(Entry {
                id: c.id.clone(),
                contributor: c.contributor.clone(),
                weight: 0,
                kind: Kind::Duplicate,
                cluster: cluster.clone(),
                lsh: String::new(),
                terms: c.terms,
            });
            continue;
        }
        let mut seen: HashSet<usize> = HashSet::new();
        let mut cluster_of: Option<String> = None;
        'bands: for (b, k) in c.bands.iter().enumerate() {
            let Some(list) = buckets.get(&(b, *k)) else {
                continue;
            };
            for &i in list {
                if !seen.insert(i) {
                    continue;
                }
                let Some(other) = examples.get(i) else {
                    continue;
                };
                let sim = if let Some(s) = local.get(&other.id) {
                    minhash::jaccard(&c.shingles, s)
                } else {
                    if !fetched.contains_key(&other.id) {
                        let s = source.shingles(&other.id).await?;
                        fetched.insert(other.id.clone(), s);
                    }
                    match fetched.get(&other.id) {
                        Some(s) => minhash::jaccard(&c.shingles, s),
                        None => 0.0,
                    }
                };
                if sim >= minhash::THRESHOLD {
                    cluster_of = Some(other.cluster.clone());
                    break 'bands;
                }
            }
        }
        let index = examples.len();
        let (kind, weight, cluster) = match cluster_of {
            Some(cl) => {
                stats.near_duplicates += 1;
                near += 1;
                (Kind::NearDuplicate, 0, cl)
            }
            None => {
                stats.accepted += 1;
                accepted += 1;
                (Kind::Original, 1, c.id.clone())
            }
        };
        examples.push(Entry {
            id: c.id.clone(),
            contributor: c.contributor.clone(),
            weight,
            kind,
            cluster: cluster.clone(),
            lsh: minhash::encode_keys(&c.bands),
            terms: c.terms,
        });
        for (b, k) in c.bands.iter().enumerate() {
            buckets.entry((b, *k)).or_default().push(index);
        }
        ids.insert(c.id.clone(), cluster);
        local.insert(c.id.clone(), &c.shingles);
        new_examples.push(ci);
    }
    rejected.sort_by_key(|e| e.line);
    let manifest = Manifest {
        format: super::manifest::FORMAT,
        datanet: input.datanet.to_string(),
        parent: base.map(|(_, name)| name.to_string()),
        number: base.map(|(m, _)| m.number).unwrap_or(0) + 1,
        created_ms: input.now_ms,
        upload: UploadInfo {
            digest: blake3::Hash::from(input.digest).to_hex().to_string(),
            uploader: input.who.contributor.clone(),
            signed: input.who.signed,
            rows: input.rows,
            accepted,
            duplicates,
            near_duplicates: near,
            rejected: rejected.len() as u64,
            consent: input.consent.clone(),
        },
        examples,
        contributors,
        terms: input.terms,
        event: input.event.clone(),
        withdrawn: base.map(|(m, _)| m.withdrawn.clone()).unwrap_or_default(),
        reviewed: {
            let mut r: Vec<String> = base.map(|(m, _)| m.reviewed.clone()).unwrap_or_default();
            r.extend(input.reviewed.iter().cloned());
            r.sort();
            r.dedup();
            r
        },
    };
    Ok(Merged {
        manifest,
        new_examples,
        accepted,
        duplicates,
        near_duplicates: near,
        rejected,
        quarantined: quarantined_now,
    })
}
