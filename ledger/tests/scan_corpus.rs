//! Precision and recall of the personal-data and secrets scanner on the labelled corpora
//! kept in the repo: `ledger/data/scan-corpus.jsonl` (written by
//! `scripts/gen-scan-corpus.py`; the rules were tuned on it) and `scan-heldout.jsonl`
//! (`scripts/gen-scan-heldout.py`, written afterwards and never used for tuning). Per kind,
//! a finding is a true positive when it overlaps a labelled value of the same kind;
//! findings on unlabelled text (versions, dates, hashes, code, checksum-invalid
//! look-alikes) are false positives. Prints the tables reported in docs/benchmarks.md
//! (`cargo test --workspace -p tributary-ledger --test scan_corpus -- --nocapture
//! --test-threads 1`).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::collections::BTreeMap;

use tributary_ledger::datanet::scan::{self, Kind};

#[derive(Default)]
struct Counts {
    tp: u64,
    fp: u64,
    fn_: u64,
}

/// (kind, precision, recall).
type KindScore = (Kind, f64, f64);

/// Scans every row of a corpus; prints the table; returns (kind, precision, recall) and
/// the micro-averaged (precision, recall).
fn evaluate(file: &str) -> (Vec<KindScore>, (f64, f64)) {
    let path = format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut counts: BTreeMap<Kind, Counts> =
        Kind::ALL.iter().map(|k| (*k, Counts::default())).collect();
    let mut rows = 0;
    let mut negatives = 0;
    let started = std::time::Instant::now();
    let mut chars = 0usize;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        rows += 1;
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let t = row["text"].as_str().unwrap();
        chars += t.chars().count();
        let mut labels: Vec<(Kind, usize, usize, bool)> = Vec::new();
        for l in row["labels"].as_array().unwrap() {
            let kind = Kind::parse(l["kind"].as_str().unwrap()).unwrap();
            let v = l["value"].as_str().unwrap();
            let byte = t.find(v).unwrap();
            let start = t[..byte].chars().count();
            labels.push((kind, start, start + v.chars().count(), false));
        }
        if labels.is_empty() {
            negatives += 1;
        }
        for f in scan::scan(t) {
            let hit = labels
                .iter_mut()
                .find(|(k, s, e, _)| *k == f.kind && f.start < *e && *s < f.end);
            let c = counts.get_mut(&f.kind).unwrap();
            match hit {
                Some(l) => {
                    if !l.3 {
                        c.tp += 1;
                    }
                    l.3 = true;
                }
                None => {
                    c.fp += 1;
                    eprintln!("false positive {:?} in {t:?}", f.kind);
                }
            }
        }
        for (k, _, _, found) in labels {
            if !found {
                counts.get_mut(&k).unwrap().fn_ += 1;
                eprintln!("missed {k:?} in {t:?}");
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{file}: {rows} rows ({negatives} without personal data), {chars} characters, scanned in {:.1} ms",
        secs * 1e3
    );
    println!("| kind | labelled | found | false positives | precision | recall |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut out = Vec::new();
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (k, c) in &counts {
        let precision = if c.tp + c.fp == 0 {
            1.0
        } else {
            c.tp as f64 / (c.tp + c.fp) as f64
        };
        let recall = if c.tp + c.fn_ == 0 {
            1.0
        } else {
            c.tp as f64 / (c.tp + c.fn_) as f64
        };
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} |",
            k.name(),
            c.tp + c.fn_,
            c.tp,
            c.fp,
            precision,
            recall
        );
        out.push((*k, precision, recall));
        tp += c.tp;
        fp += c.fp;
        fn_ += c.fn_;
    }
    let micro = (tp as f64 / (tp + fp) as f64, tp as f64 / (tp + fn_) as f64);
    println!(
        "| all (micro) | {} | {tp} | {fp} | {:.3} | {:.3} |",
        tp + fn_,
        micro.0,
        micro.1
    );
    (out, micro)
}

#[test]
fn scanner_precision_and_recall_per_kind_on_the_tuning_corpus() {
    let (per_kind, _) = evaluate("scan-corpus.jsonl");
    let bad: Vec<String> = per_kind
        .iter()
        .filter(|(_, p, r)| *p < 0.9 || *r < 0.9)
        .map(|(k, p, r)| format!("{}: precision {p:.3}, recall {r:.3}", k.name()))
        .collect();
    assert!(bad.is_empty(), "under 0.9: {bad:?}");
}

#[test]
fn scanner_precision_and_recall_on_the_held_out_corpus() {
    // Never tuned on: the figures are reported as measured; this guards against collapse.
    let (_, (precision, recall)) = evaluate("scan-heldout.jsonl");
    assert!(
        precision >= 0.75 && recall >= 0.75,
        "precision {precision:.3}, recall {recall:.3}"
    );
}

/// The scanner's share of ingestion: parses a JSONL file (`TRIBUTARY_SCAN_BENCH_FILE`,
/// e.g. from `ledger/scripts/gen_rows.py`) with `parse_upload` (validation + scanning),
/// then times the scanner alone over the same texts. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn scanner_share_of_ingestion() {
    use tributary_ledger::datanet::ingest::parse_upload;
    use tributary_ledger::datanet::record::Limits;
    let Ok(path) = std::env::var("TRIBUTARY_SCAN_BENCH_FILE") else {
        panic!("set TRIBUTARY_SCAN_BENCH_FILE to a JSONL file");
    };
    let bytes = std::fs::read(&path).unwrap();
    let t0 = std::time::Instant::now();
    let parsed = parse_upload(std::io::BufReader::new(&bytes[..]), &Limits::default()).unwrap();
    let parse = t0.elapsed().as_secs_f64();
    let texts: Vec<&str> = parsed
        .valid
        .iter()
        .flat_map(|r| r.messages.iter().map(|(_, c)| c.as_str()))
        .collect();
    let chars: usize = texts.iter().map(|t| t.len()).sum();
    let t1 = std::time::Instant::now();
    let found: usize = texts.iter().map(|t| scan::scan(t).len()).sum();
    let scan_s = t1.elapsed().as_secs_f64();
    println!(
        "{} rows, {:.1} MB of text: parse_upload {:.2} s ({:.0} rows/s); scanner alone {:.2} s ({:.1} MB/s, {:.0}% of parse_upload); {found} findings",
        parsed.rows,
        chars as f64 / 1e6,
        parse,
        parsed.rows as f64 / parse,
        scan_s,
        chars as f64 / 1e6 / scan_s,
        100.0 * scan_s / parse
    );
}
