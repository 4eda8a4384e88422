//! Takedown that erases, against real stores (a local directory, and moto's S3 API on
//! 127.0.0.1): erasure from every version with tombstones, lineage to adapters, the reward
//! log and every verifier still green, an edited log entry caught, a crashed takedown
//! completed, concurrent takedowns and uploads; bad input (an unknown id, someone else's
//! example, no reason).
// Test code fails loudly (unwrap, expect, panic, indexing) and reads the real clock.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

mod common;

use std::io::BufReader;

use bytes::Bytes;
use common::govern::{chat, id_of, lines, op, register, upload};
use common::{Backend, both_backends};
use object_store::path::Path;
use tributary_ledger::Store;
use tributary_ledger::datanet::license::TermsChange;
use tributary_ledger::datanet::takedown::{adapter_marks, tombstone};
use tributary_ledger::datanet::{Actor, DatanetError, Datanets, Scope};
use tributary_ledger::rewards::{LogWriter, Replicas, WriterOptions, verify};

both_backends!(takedown_erases_every_version_and_everything_still_verifies);
async fn takedown_erases_every_version_and_everything_still_verifies(b: Backend) {
    let store = Store::open(&b.url(0)).unwrap();
    let d = Datanets::new(store.clone());
    d.create_governed("td", "", None, TermsChange::default())
        .await
        .unwrap();
    let (q1, a1) = (
        "My neighbour Jane Roe lives at 12 Elm Street, what now?",
        "Do not share addresses.",
    );
    let (q2, a2) = ("What is the capital of Peru?", "Lima.");
    let (q3, a3) = ("How many legs does a spider have?", "Eight.");
    let r1 = upload(
        &d,
        "td",
        &lines(&[(q1, a1), (q2, a2), (q3, a3)]),
        &op("alice"),
    )
    .await;
    // Bob copies q2 (a duplicate) and adds his own.
    let (q4, a4) = (
        "What is the boiling point of ethanol?",
        "About 78 degrees Celsius.",
    );
    let r2 = upload(&d, "td", &lines(&[(q2, a2), (q4, a4)]), &op("bob")).await;
    let (e1, e2, e4) = (id_of(q1, a1), id_of(q2, a2), id_of(q4, a4));
    // Adapters trained on version 1 and 2, and one on an unrelated file.
    let ad1 = register(&store, &r1.version, b"a").await;
    let ad2 = register(&store, &r2.version, b"bb").await;
    let other = register(&store, &"e".repeat(64), b"ccc").await;
    // A reward log in the same store, written before the takedown.
    let urls = vec![b.url(0)];
    let mut w = LogWriter::open(Replicas::open(&urls).unwrap(), WriterOptions::default())
        .await
        .unwrap();
    w.append(vec![common::record("req-1", &[("alice", 7), ("bob", 3)])])
        .await
        .unwrap();
    drop(w);

    // Bad input: an unknown id, a malformed id, someone else's example, no reason.
    let unknown = "0".repeat(64);
    let e = d
        .takedown(
            "td",
            &Actor::Admin,
            &Scope::Examples(vec![unknown.clone()]),
            "gdpr",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, DatanetError::UnknownExample { .. }) && e.to_string().contains(&unknown),
        "{e}"
    );
    let e = d
        .takedown(
            "td",
            &Actor::Admin,
            &Scope::Examples(vec!["nope".into()]),
            "gdpr",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no example `nope`"), "{e}");
    let e = d
        .takedown(
            "td",
            &Actor::Contributor("bob".into()),
            &Scope::Examples(vec![e1.clone()]),
            "mine now",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, DatanetError::Forbidden(_)) && e.to_string().contains("contributed by `alice`"),
        "{e}"
    );
    let e = d
        .takedown(
            "td",
            &Actor::Contributor("bob".into()),
            &Scope::Contributor("alice".into()),
            "x",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DatanetError::Forbidden(_)), "{e}");
    let e = d
        .takedown("td", &Actor::Admin, &Scope::Examples(vec![e1.clone()]), " ")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs a reason"), "{e}");
    assert!(
        d.takedown_log("td").await.unwrap().is_empty(),
        "refused takedowns log nothing"
    );

    // Admin takedown of e1 (personal data about a third party).
    let before = d.withdrawn_index("td").await.unwrap();
    assert!(before.pays(&e1, "alice", u64::MAX));
    let r = d
        .takedown(
            "td",
            &Actor::Admin,
            &Scope::Examples(vec![e1.clone()]),
            "erasure request from the data subject",
        )
        .await
        .unwrap();
    assert_eq!((r.seq, r.number, r.erased), (1, 3, 1));
    let mut affected: Vec<&str> = r
        .adapters
        .iter()
        .map(|a| a.adapter_digest.as_str())
        .collect();
    affected.sort();
    let mut want = vec![ad1.as_str(), ad2.as_str()];
    want.sort();
    assert_eq!(
        affected, want,
        "adapters on both versions that held e1, not {other}"
    );
    // The text is gone from the store and from exports of every version.
    assert!(
        store
            .get(&Path::from(format!("examples/{e1}.json")))
            .await
            .unwrap()
            .is_none()
    );
    for v in ["1", "2", "3"] {
        let mut out = Vec::new();
        d.export("td", Some(v), true, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("Jane Roe") && !text.contains(&e1),
            "version {v}: {text}"
        );
    }
    let t = tombstone(&store, &e1).await.unwrap().unwrap();
    assert_eq!(
        (t.owner.as_str(), t.seq, t.reason.as_str()),
        ("alice", 1, "erasure request from the data subject")
    );
    // Manifests, digests, the takedown log and the reward log all still verify.
    let audit = d.verify("td").await.unwrap();
    assert!(audit.ok(), "{:?}", audit.faults);
    assert_eq!((audit.versions, audit.erased, audit.takedowns), (3, 1, 1));
    assert!(verify(&Replicas::open(&urls).unwrap()).await.unwrap().ok);
    // Lineage marks on the affected adapters only.
    assert_eq!(adapter_marks(&store, &ad1).await.unwrap().len(), 1);
    assert_eq!(
        adapter_marks(&store, &ad2).await.unwrap()[0].withdrawn_examples,
        1
    );
    assert!(adapter_marks(&store, &other).await.unwrap().is_empty());
    // Attribution stops paying from the takedown on; the past stays.
    let idx = d.withdrawn_index("td").await.unwrap();
    assert!(!idx.pays(&e1, "alice", t.time_ms));
    assert!(idx.pays(&e1, "alice", t.time_ms - 1));
    assert!(idx.pays(&e2, "alice", u64::MAX));
    // The erased text cannot come back.
    let again = upload(&d, "td", &lines(&[(q1, a1)]), &op("mallory")).await;
    assert!(
        again.rejected[0]
            .reason
            .contains("withdrawn and erased by takedown 1"),
        "{:?}",
        again.rejected
    );
    let e = d
        .takedown(
            "td",
            &Actor::Admin,
            &Scope::Examples(vec![e1.clone()]),
            "again",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already withdrawn"), "{e}");

    // Alice withdraws everything of hers: e2's text stays (bob holds a copy, now credited).
    let r = d
        .takedown(
            "td",
            &Actor::Contributor("alice".into()),
            &Scope::Contributor("alice".into()),
            "leaving",
        )
        .await
        .unwrap();
    assert_eq!(r.seq, 2);
    let kept: Vec<(&str, bool)> = r
        .withdrawn
        .iter()
        .map(|w| (w.id.as_str(), w.erased))
        .collect();
    assert!(kept.contains(&(e2.as_str(), false)), "{kept:?}");
    let (_, head) = d.head("td").await.unwrap().unwrap();
    let m = d.manifest("td", &head).await.unwrap();
    let credited: Vec<(&str, &str)> = m
        .examples
        .iter()
        .filter(|e| e.weight > 0)
        .map(|e| (e.id.as_str(), e.contributor.as_str()))
        .collect();
    assert!(
        credited.contains(&(e2.as_str(), "bob")) && credited.contains(&(e4.as_str(), "bob")),
        "{credited:?}"
    );
    assert!(m.examples.iter().all(|e| e.contributor != "alice"));
    assert_eq!(m.contributors["alice"].withdrawn, 3);
    assert_eq!(
        m.contributors["alice"].removed, 1,
        "only the admin's takedown counts against her"
    );
    assert!(d.verify("td").await.unwrap().ok());

    // The log is append-only and verifiable: an edited entry is caught.
    let key = Path::from("datanets/td/takedowns/00000000000000000001.json");
    let bytes = store.get(&key).await.unwrap().unwrap();
    let edited = String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("erasure request", "routine cleanup");
    store.delete(&key).await.unwrap();
    store.put(&key, Bytes::from(edited)).await.unwrap();
    let audit = d.verify("td").await.unwrap();
    assert!(
        audit
            .faults
            .iter()
            .any(|f| f.contains("entry 2 does not hold the digest of entry 1")),
        "{:?}",
        audit.faults
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_takedown_is_completed_by_resume() {
    let b = Backend::local();
    let store = Store::open(&b.url(0)).unwrap();
    let d = Datanets::new(store.clone());
    d.create("crash", "").await.unwrap();
    let (q, a) = ("Delete me later please", "Sure thing, on request.");
    upload(
        &d,
        "crash",
        &lines(&[(q, a), ("keep me", "kept")]),
        &op("alice"),
    )
    .await;
    let id = id_of(q, a);
    d.takedown(
        "crash",
        &Actor::Admin,
        &Scope::Examples(vec![id.clone()]),
        "request",
    )
    .await
    .unwrap();
    // Simulate a crash after the log entry of a second takedown: log entry 2 exists, no
    // version applies it, the text is still there.
    let log = d.takedown_log("crash").await.unwrap();
    let (mut entry, digest) = log[0].clone();
    let keep = id_of("keep me", "kept");
    entry.seq = 2;
    entry.prev = Some(digest);
    entry.withdrawn[0].id = keep.clone();
    store
        .create(
            &Path::from("datanets/crash/takedowns/00000000000000000002.json"),
            Bytes::from(serde_json::to_vec(&entry).unwrap()),
        )
        .await
        .unwrap();
    let audit = d.verify("crash").await.unwrap();
    assert!(
        audit
            .faults
            .iter()
            .any(|f| f.contains("takedown 2 is logged but no version applies it")),
        "{:?}",
        audit.faults
    );
    let r = d.resume_takedown("crash").await.unwrap().unwrap();
    assert_eq!(r.seq, 2);
    assert!(
        store
            .get(&Path::from(format!("examples/{keep}.json")))
            .await
            .unwrap()
            .is_none()
    );
    assert!(d.verify("crash").await.unwrap().ok());
    assert!(d.resume_takedown("crash").await.unwrap().is_none());
}

both_backends!(concurrent_takedowns_and_uploads_serialize);
async fn concurrent_takedowns_and_uploads_serialize(b: Backend) {
    let d = Datanets::new(Store::open(&b.url(0)).unwrap());
    d.create("race", "").await.unwrap();
    let rows: Vec<(String, String)> = (0..6)
        .map(|i| {
            (
                format!("Question number {i} about rivers"),
                format!("Answer {i} about rivers"),
            )
        })
        .collect();
    let body: String = rows.iter().map(|(q, a)| chat(q, a) + "\n").collect();
    upload(&d, "race", &body, &op("alice")).await;
    // Four takedowns of different examples and two uploads, all at once.
    let mut tasks = Vec::new();
    for (q, a) in rows.iter().take(4) {
        let d = d.clone();
        let id = id_of(q, a);
        tasks.push(tokio::spawn(async move {
            d.takedown("race", &Actor::Admin, &Scope::Examples(vec![id]), "request")
                .await
                .map(|r| r.seq)
        }));
    }
    let mut ups = Vec::new();
    for u in 0..2 {
        let d = d.clone();
        ups.push(tokio::spawn(async move {
            let body = lines(&[(
                &format!("Uploader {u} asks about lakes"),
                "Lakes are still water.",
            )]);
            d.upload(
                "race",
                BufReader::new(body.as_bytes()),
                &op(&format!("u{u}")),
                None,
            )
            .await
            .map(|r| r.accepted)
        }));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    for u in ups {
        assert_eq!(u.await.unwrap().unwrap(), 1);
    }
    seqs.sort();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4],
        "each takedown got its own log entry"
    );
    let (number, head) = d.head("race").await.unwrap().unwrap();
    assert_eq!(number, 1 + 4 + 2);
    let m = d.manifest("race", &head).await.unwrap();
    assert_eq!((m.examples.len(), m.withdrawn.len()), (2 + 2, 4));
    let audit = d.verify("race").await.unwrap();
    assert!(audit.ok(), "{:?}", audit.faults);
    assert_eq!((audit.erased, audit.takedowns), (4, 4));
}
