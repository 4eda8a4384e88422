//! Datanets against real stores (a local directory, and moto's S3 API on 127.0.0.1):
//! every bad row kind, a 100 MB line, an empty file, dedup across contributors, near-dup
//! clusters, quarantine, signed and API-key uploads, concurrent uploads, diff and export.
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::io::{BufReader, Write};

use common::{Backend, both_backends};
use object_store::path::Path;
use tributary_ledger::Store;
use tributary_ledger::datanet::identity::{self, KeyRing, Uploader};
use tributary_ledger::datanet::{DatanetError, Datanets};

fn operator(who: &str) -> Uploader {
    Uploader::Operator(Some(who.to_string()))
}

async fn fresh(b: &Backend, name: &str) -> Datanets {
    let d = Datanets::new(Store::open(&b.url(0)).unwrap());
    d.create(name, "test").await.unwrap();
    d
}

fn chat(q: &str, a: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        .to_string()
}

const LONG: &str = "Photosynthesis converts light energy into chemical energy stored in \
    glucose; chlorophyll in the chloroplasts absorbs mostly blue and red light while the \
    Calvin cycle fixes carbon dioxide from the air into sugars that the plant uses to grow \
    and to store energy for the night and for winter";

both_backends!(bad_rows_are_reported_by_line_and_field_and_good_rows_published);
async fn bad_rows_are_reported_by_line_and_field_and_good_rows_published(b: Backend) {
    let d = fresh(&b, "mixed").await;
    let mut input: Vec<u8> = Vec::new();
    let lines: Vec<Vec<u8>> = vec![
        br#"{"instruction":"Name the capital of France","output":"Paris"}"#.to_vec(), // 1 ok
        b"{broken".to_vec(),                                                          // 2
        br#"{"prompt":"only a prompt"}"#.to_vec(),                                    // 3
        br#"{"prompt":42,"completion":"x"}"#.to_vec(),                                // 4
        br#"{"prompt":"   ","completion":"x"}"#.to_vec(),                             // 5
        b"{\"prompt\":\"bad \xff utf8\",\"completion\":\"x\"}".to_vec(),              // 6
        br#"{"prompt":"nul \u0000 here","completion":"x"}"#.to_vec(),                 // 7
        format!(
            r#"{{"prompt":"spam","completion":"{}"}}"#,
            "win ".repeat(60)
        )
        .into_bytes(), // 8
        format!(
            r#"{{"prompt":"{}","completion":"x"}}"#,
            "long ".repeat(7000)
        )
        .into_bytes(), // 9
        br#"{"prompt":"What is 2+2?","completion":"4"}"#.to_vec(),                    // 10 ok
        chat("Translate 'cat' to German", "Katze").into_bytes(),                      // 11 ok
    ];
    for l in &lines {
        input.extend_from_slice(l);
        input.push(b'\n');
    }
    let r = d
        .upload(
            "mixed",
            BufReader::new(&input[..]),
            &operator("alice"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.accepted, 3);
    let got: Vec<(u64, &str)> = r
        .rejected
        .iter()
        .map(|e| (e.line, e.field.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, ""),
            (3, "completion"),
            (4, "prompt"),
            (5, "prompt"),
            (6, ""),
            (7, "prompt"),
            (8, "completion"),
            (9, "prompt"),
        ]
    );
    assert!(r.rejected[0].reason.starts_with("invalid JSON"));
    assert!(r.rejected[5].reason.contains("NUL"));
    assert!(r.rejected[7].reason.contains("over the limit"));
    // Published: the head is this version and it lists exactly the accepted examples.
    assert_eq!(d.head("mixed").await.unwrap(), Some((1, r.version.clone())));
    let m = d.manifest("mixed", &r.version).await.unwrap();
    assert_eq!(m.examples.len(), 3);
    assert!(
        m.examples
            .iter()
            .all(|e| e.contributor == "alice" && e.weight == 1)
    );
    assert_eq!(m.contributors["alice"].rejected, 8);
}

both_backends!(a_100_mb_line_and_an_empty_file_are_refused_clearly);
async fn a_100_mb_line_and_an_empty_file_are_refused_clearly(b: Backend) {
    let d = fresh(&b, "big").await;
    let mut f = tempfile::tempfile().unwrap();
    writeln!(f, "{}", chat("first question here", "first answer")).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    f.write_all(b"{\"prompt\":\"").unwrap();
    for _ in 0..100 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\",\"completion\":\"x\"}\n").unwrap();
    writeln!(f, "{}", chat("last question here", "last answer")).unwrap();
    use std::io::Seek;
    f.rewind().unwrap();
    let r = d
        .upload("big", BufReader::new(f), &operator("alice"), None)
        .await
        .unwrap();
    assert_eq!(r.accepted, 2);
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].line, 2);
    assert!(
        r.rejected[0]
            .reason
            .contains("104857630 bytes, over the limit of 1048576 bytes"),
        "{}",
        r.rejected[0].reason
    );
    // An empty file (and one with only blank lines) publishes nothing.
    for empty in [&b""[..], &b"\n  \n"[..]] {
        let e = d
            .upload("big", BufReader::new(empty), &operator("alice"), None)
            .await
            .unwrap_err();
        assert!(matches!(e, DatanetError::EmptyUpload { .. }), "{e}");
        assert!(e.to_string().contains("nothing was published"));
    }
    assert_eq!(d.head("big").await.unwrap().unwrap().0, 1);
}

both_backends!(copies_earn_nothing_and_near_duplicates_are_credited_once);
async fn copies_earn_nothing_and_near_duplicates_are_credited_once(b: Backend) {
    let d = fresh(&b, "dedup").await;
    let first = format!(
        "{}\n{}\n",
        chat("Explain photosynthesis", LONG),
        chat("Hi", "Hello")
    );
    let a = d
        .upload(
            "dedup",
            BufReader::new(first.as_bytes()),
            &operator("alice"),
            None,
        )
        .await
        .unwrap();
    assert_eq!((a.accepted, a.duplicates, a.near_duplicates), (2, 0, 0));
    // Bob: an exact copy up to Unicode spacing, a lightly edited copy, and a new one.
    let spaced = LONG.replace(' ', "  ");
    let edited = LONG.replace("mostly", "largely");
    let second = format!(
        "{}\n{}\n{}\n",
        chat("Explain  photosynthesis", &spaced),
        chat("Explain photosynthesis", &edited),
        chat(
            "What is the boiling point of water at sea level?",
            "100 degrees Celsius"
        )
    );
    let r = d
        .upload(
            "dedup",
            BufReader::new(second.as_bytes()),
            &operator("bob"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (r.accepted, r.duplicates, r.near_duplicates),
        (1, 1, 1),
        "{r:?}"
    );
    let m = d.manifest("dedup", &r.version).await.unwrap();
    let alice_long = &m.examples[0];
    assert_eq!(
        (alice_long.contributor.as_str(), alice_long.weight),
        ("alice", 1)
    );
    let dup = &m.examples[2];
    assert_eq!(
        (dup.contributor.as_str(), dup.weight, dup.id.as_str()),
        ("bob", 0, alice_long.id.as_str())
    );
    let near = &m.examples[3];
    assert_eq!((near.contributor.as_str(), near.weight), ("bob", 0));
    assert_eq!(near.cluster, alice_long.id);
    assert_eq!(m.weighted(), 3);
    // diff and export
    let diff = d.diff("dedup", "1", "2").await.unwrap();
    assert_eq!(diff.added.len(), 3);
    assert!(diff.removed.is_empty());
    let mut out = Vec::new();
    assert_eq!(d.export("dedup", None, false, &mut out).await.unwrap(), 3);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\"contributor\":\"alice\"") && text.contains("boiling"));
    let mut all = Vec::new();
    assert_eq!(
        d.export("dedup", Some("2"), true, &mut all).await.unwrap(),
        5
    );
}

both_backends!(a_contributor_with_mostly_rejected_rows_is_quarantined);
async fn a_contributor_with_mostly_rejected_rows_is_quarantined(b: Backend) {
    let d = fresh(&b, "quar").await;
    let mut input = String::new();
    for i in 0..5 {
        input.push_str(&chat(&format!("good question number {i}"), "fine answer"));
        input.push('\n');
    }
    for _ in 0..15 {
        input.push_str("{not json\n");
    }
    let r = d
        .upload(
            "quar",
            BufReader::new(input.as_bytes()),
            &operator("mallory"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.quarantined, vec!["mallory".to_string()]);
    assert_eq!(r.accepted, 0);
    assert_eq!(r.rejected.len(), 20);
    let later = chat("a perfectly good question", "and a good answer");
    let r2 = d
        .upload(
            "quar",
            BufReader::new(later.as_bytes()),
            &operator("mallory"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r2.accepted, 0);
    assert!(
        r2.rejected[0].reason.contains("quarantined"),
        "{:?}",
        r2.rejected
    );
    // Others are unaffected.
    let r3 = d
        .upload(
            "quar",
            BufReader::new(later.as_bytes()),
            &operator("carol"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r3.accepted, 1);
}

both_backends!(signed_and_api_key_uploads_identify_the_contributor);
async fn signed_and_api_key_uploads_identify_the_contributor(b: Backend) {
    let d = fresh(&b, "auth").await;
    let body = format!("{}\n", chat("signed question", "signed answer"));
    let kp = identity::generate();
    let digest = *blake3::hash(body.as_bytes()).as_bytes();
    let (pk, sig) = identity::sign_digest(&kp.secret_hex, &digest).unwrap();
    let signed = Uploader::Signed {
        public_key: pk,
        signature: sig,
    };
    let r = d
        .upload("auth", BufReader::new(body.as_bytes()), &signed, None)
        .await
        .unwrap();
    assert!(r.signed);
    assert_eq!(r.uploader.as_deref(), Some(kp.contributor.as_str()));
    // The same signature over different bytes is refused before anything is written.
    let tampered = format!("{}\n", chat("signed question!", "signed answer"));
    let before = Store::open(&b.url(0))
        .unwrap()
        .list_names(&Path::from("examples"))
        .await
        .unwrap();
    let e = d
        .upload("auth", BufReader::new(tampered.as_bytes()), &signed, None)
        .await
        .unwrap_err();
    assert!(matches!(e, DatanetError::Auth(_)), "{e}");
    let after = Store::open(&b.url(0))
        .unwrap()
        .list_names(&Path::from("examples"))
        .await
        .unwrap();
    assert_eq!(before, after);
    // A signed upload may not credit someone else.
    let other = format!(
        "{}\n",
        serde_json::json!({"prompt": "p1 question", "completion": "c", "contributor": "bob"})
    );
    let digest = *blake3::hash(other.as_bytes()).as_bytes();
    let (pk, sig) = identity::sign_digest(&kp.secret_hex, &digest).unwrap();
    let r = d
        .upload(
            "auth",
            BufReader::new(other.as_bytes()),
            &Uploader::Signed {
                public_key: pk,
                signature: sig,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.rejected[0].field, "contributor");
    // API keys.
    let ring = KeyRing::parse("k-0123456789abcdef dave\n").unwrap();
    let body = format!("{}\n", chat("api question", "api answer"));
    let r = d
        .upload(
            "auth",
            BufReader::new(body.as_bytes()),
            &Uploader::ApiKey("k-0123456789abcdef".into()),
            Some(&ring),
        )
        .await
        .unwrap();
    assert_eq!(r.uploader.as_deref(), Some("dave"));
    let e = d
        .upload(
            "auth",
            BufReader::new(body.as_bytes()),
            &Uploader::ApiKey("wrong".into()),
            Some(&ring),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown API key"));
}

both_backends!(concurrent_uploads_to_one_datanet_all_land_once);
async fn concurrent_uploads_to_one_datanet_all_land_once(b: Backend) {
    let d = fresh(&b, "busy").await;
    let n = 8;
    let tasks: Vec<_> = (0..n)
        .map(|u| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut body = String::new();
                for i in 0..10 {
                    body.push_str(&chat(
                        &format!("uploader {u} question {i} about topic {}", i * 31 + u),
                        "an answer",
                    ));
                    body.push('\n');
                }
                // One shared example in every upload: exactly one upload may own it.
                body.push_str(&chat("the shared question everyone sends", "shared answer"));
                body.push('\n');
                d.upload(
                    "busy",
                    BufReader::new(body.as_bytes()),
                    &operator(&format!("c{u}")),
                    None,
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let mut numbers: Vec<u64> = reports.iter().map(|r| r.number).collect();
    numbers.sort();
    assert_eq!(numbers, (1..=n as u64).collect::<Vec<_>>());
    let (_, head) = d.head("busy").await.unwrap().unwrap();
    let m = d.manifest("busy", &head).await.unwrap();
    assert_eq!(m.examples.len(), n * 11);
    assert_eq!(m.weighted(), n * 10 + 1);
    assert_eq!(
        reports.iter().map(|r| r.accepted).sum::<u64>(),
        (n * 10 + 1) as u64
    );
    assert_eq!(
        reports.iter().map(|r| r.duplicates).sum::<u64>(),
        (n - 1) as u64
    );
    let versions = d.versions("busy").await.unwrap();
    assert_eq!(versions.len(), n);
    for w in versions.windows(2) {
        assert_eq!(w[1].parent.as_deref(), Some(w[0].version.as_str()));
    }
}
