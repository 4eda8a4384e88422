//! Datanet governance against real stores (a local directory, and moto's S3 API on
//! 127.0.0.1): licences, terms and consent; the scanner's policies end to end; takedown
//! that erases from every version with lineage, tombstones and an append-only log that
//! verifies; the owner's review queue; reputation; and bad input (unknown licence id,
//! takedown of an unknown id, a takedown by someone else's key).

mod common;

use std::io::BufReader;

use bytes::Bytes;
use common::{Backend, both_backends};
use object_store::path::Path;
use tributary_ledger::Store;
use tributary_ledger::adapters::{AdapterFile, AdapterRegistry, Provenance};
use tributary_ledger::datanet::identity::{self, KeyRing, Uploader};
use tributary_ledger::datanet::license::{self, License, TermsChange};
use tributary_ledger::datanet::scan::{Action, Kind, Policy};
use tributary_ledger::datanet::takedown::{adapter_marks, tombstone};
use tributary_ledger::datanet::text::content_id;
use tributary_ledger::datanet::{Actor, DatanetError, Datanets, Scope};
use tributary_ledger::rewards::{LogWriter, Replicas, WriterOptions, verify};

fn chat(q: &str, a: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        .to_string()
}

fn id_of(q: &str, a: &str) -> String {
    content_id(&[("user".into(), q.into()), ("assistant".into(), a.into())])
}

fn op(who: &str) -> Uploader {
    Uploader::Operator(Some(who.to_string()))
}

fn lines(rows: &[(&str, &str)]) -> String {
    rows.iter().map(|(q, a)| chat(q, a) + "\n").collect()
}

async fn upload(
    d: &Datanets,
    name: &str,
    body: &str,
    who: &Uploader,
) -> tributary_ledger::datanet::UploadReport {
    d.upload(name, BufReader::new(body.as_bytes()), who, None)
        .await
        .unwrap()
}

async fn register(store: &Store, data_digest: &str, weights: &[u8]) -> String {
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

both_backends!(licences_terms_and_consent_are_recorded);
async fn licences_terms_and_consent_are_recorded(b: Backend) {
    let store = Store::open(&b.url(0)).unwrap();
    let d = Datanets::new(store.clone());
    // Unknown licence ids are refused, naming the id; nothing is created.
    let e = License::spdx("MIT-ish").unwrap_err().to_string();
    assert!(e.contains("`MIT-ish` is not an SPDX"), "{e}");
    let change = TermsChange {
        license: Some(License::spdx("mit").unwrap()),
        terms_text: Some(Some("I own what I upload and license it under MIT.".into())),
        ..Default::default()
    };
    d.create_governed("lic", "licensed", Some("olivia"), change)
        .await
        .unwrap();
    let (t1, t1_digest) = d.terms("lic").await.unwrap().unwrap();
    assert_eq!(
        (t1.number, t1.license.clone()),
        (1, License::Spdx("MIT".into()))
    );

    // A signed upload must sign upload digest ‖ terms digest.
    let body = lines(&[(
        "What is a licence?",
        "Permission to use a work under conditions.",
    )]);
    let kp = identity::generate();
    let digest = *blake3::hash(body.as_bytes()).as_bytes();
    let (pk, old_style) = identity::sign_digest(&kp.secret_hex, &digest).unwrap();
    let e = d
        .upload(
            "lic",
            BufReader::new(body.as_bytes()),
            &Uploader::Signed {
                public_key: pk,
                signature: old_style,
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, DatanetError::Auth(_)) && e.to_string().contains("terms digest"),
        "{e}"
    );
    let t: [u8; 32] = identity::parse_hex(&t1_digest, "t").unwrap();
    let (pk, sig) =
        identity::sign_bytes(&kp.secret_hex, &license::consent_message(&digest, &t)).unwrap();
    let r = d
        .upload(
            "lic",
            BufReader::new(body.as_bytes()),
            &Uploader::Signed {
                public_key: pk,
                signature: sig,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((r.accepted, r.terms), (1, 1));
    let m1 = d.manifest("lic", &r.version).await.unwrap();
    let c = m1.upload.consent.clone().unwrap();
    assert_eq!(
        (c.method.as_str(), c.terms, c.terms_digest.as_str()),
        ("signature", 1, t1_digest.as_str())
    );
    assert_eq!(c.signature.as_deref(), Some(identity::hex(&sig).as_str()));

    // An API-key upload records the key's identity, never the key.
    let ring = KeyRing::parse("dave-secret-key-0123456789 dave\n").unwrap();
    let body2 = lines(&[("Can I relicense MIT code?", "Yes, keeping the notice.")]);
    let r2 = d
        .upload(
            "lic",
            BufReader::new(body2.as_bytes()),
            &Uploader::ApiKey("dave-secret-key-0123456789".into()),
            Some(&ring),
        )
        .await
        .unwrap();
    let m2 = d.manifest("lic", &r2.version).await.unwrap();
    let c2 = m2.upload.consent.clone().unwrap();
    assert_eq!(c2.method, "api_key");
    assert_eq!(
        c2.key,
        Some(license::api_key_identity("dave-secret-key-0123456789"))
    );
    let raw = serde_json::to_string(&m2).unwrap();
    assert!(
        !raw.contains("dave-secret-key"),
        "the API key leaked into the manifest"
    );

    // Only the owner (or admin) may change the terms; a change is a new version and
    // leaves earlier entries under their terms.
    let to_apache = TermsChange {
        license: Some(License::spdx("Apache-2.0").unwrap()),
        ..Default::default()
    };
    let e = d
        .amend("lic", &Actor::Contributor("dave".into()), to_apache.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, DatanetError::Forbidden(_)), "{e}");
    let (n, v3) = d
        .amend("lic", &Actor::Contributor("olivia".into()), to_apache)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let m3 = d.manifest("lic", &v3).await.unwrap();
    assert_eq!((m3.number, m3.terms, m3.examples.len()), (3, 2, 2));
    let (t2, _) = d.terms("lic").await.unwrap().unwrap();
    assert_eq!(t2.terms_text, t1.terms_text, "unchanged fields carry over");
    let r4 = upload(
        &d,
        "lic",
        &lines(&[("Is Apache-2.0 permissive?", "Yes, with a patent grant.")]),
        &op("erin"),
    )
    .await;
    let m4 = d.manifest("lic", &r4.version).await.unwrap();
    let terms: Vec<u64> = m4.examples.iter().map(|e| e.terms).collect();
    assert_eq!(terms, vec![1, 1, 2]);
    let lic = d.licenses_of(&m4, &r4.version).await.unwrap();
    let labels: Vec<(&str, u64)> = lic
        .iter()
        .map(|l| (l.license.as_str(), l.examples))
        .collect();
    assert_eq!(labels, vec![("MIT", 2), ("Apache-2.0", 1)]);

    // The adapter registry records the licences of the data version.
    let adapter = register(&store, &r4.version, b"w1").await;
    let entry = AdapterRegistry::new(store.clone())
        .get(&adapter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.data_licenses, lic);
    let plain = register(&store, &"f".repeat(64), b"w22").await;
    let entry = AdapterRegistry::new(store)
        .get(&plain)
        .await
        .unwrap()
        .unwrap();
    assert!(entry.data_licenses.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_policies_reject_redact_and_hold_without_echoing_secrets() {
    let b = Backend::local();
    let d = Datanets::new(Store::open(&b.url(0)).unwrap());
    d.create_governed("pii", "", None, TermsChange::default())
        .await
        .unwrap();
    let card = "4111 1111 1111 1111";
    let secret = "Zx8Qp2LmW9vR4tY7uI1oK3jH6gF5dS0a";
    let body = format!(
        "{}\n{}\n{}\n{}\n",
        serde_json::json!({"instruction": "Who should I email?", "input": "Ask ana.lopez@example.org", "output": "Write to her."}),
        chat("Pay with this card", card),
        chat(
            "Store the webhook secret",
            &format!("It is {secret} for now")
        ),
        chat("Plain question about soup", "Plain answer about soup"),
    );
    let r = upload(&d, "pii", &body, &op("alice")).await;
    assert_eq!(r.accepted, 2);
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(
        (r.rejected[0].line, r.rejected[0].field.as_str()),
        (2, "messages[1].content")
    );
    assert!(
        r.rejected[0]
            .reason
            .contains("card at messages[1].content chars 0..19"),
        "{}",
        r.rejected[0].reason
    );
    let kinds: Vec<(u64, &str, Kind, usize, usize, Action)> = r
        .scan
        .iter()
        .map(|f| (f.line, f.field.as_str(), f.kind, f.start, f.end, f.action))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, "input", Kind::Email, 4, 25, Action::Redact),
            (2, "messages[1].content", Kind::Card, 0, 19, Action::Reject),
            (
                3,
                "messages[1].content",
                Kind::HighEntropy,
                6,
                38,
                Action::Hold
            ),
        ]
    );
    assert_eq!(r.pending.len(), 1);
    assert_eq!(r.pending[0].line, 3);
    let report = serde_json::to_string(&r).unwrap();
    for leaked in ["ana.lopez", card, secret] {
        assert!(!report.contains(leaked), "report echoes {leaked}");
    }
    // The redacted row is stored with its placeholder.
    let mut out = Vec::new();
    d.export("pii", None, false, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("Ask <EMAIL>") && !text.contains("ana.lopez"),
        "{text}"
    );
    // The held row is in the review queue; a policy change applies to later uploads only.
    assert_eq!(d.pending("pii", &Actor::Admin).await.unwrap().len(), 1);
    d.amend(
        "pii",
        &Actor::Admin,
        TermsChange {
            policy: Some(Policy::parse("email=reject,high_entropy=allow").unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = upload(
        &d,
        "pii",
        &lines(&[
            ("mail me", "at bob@example.com"),
            ("token?", &format!("use {secret}")),
        ]),
        &op("bob"),
    )
    .await;
    assert_eq!((r.accepted, r.rejected.len(), r.pending.len()), (1, 1, 0));
    assert!(r.rejected[0].reason.contains("email"));
}

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

both_backends!(review_queue_and_reputation);
async fn review_queue_and_reputation(b: Backend) {
    let d = Datanets::new(Store::open(&b.url(0)).unwrap());
    d.create_governed(
        "rev",
        "",
        Some("olivia"),
        TermsChange {
            review: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = upload(
        &d,
        "rev",
        &lines(&[
            ("Good question one", "Good answer one"),
            ("Weak question", "meh"),
            ("Third question here", "Third answer"),
        ]),
        &op("alice"),
    )
    .await;
    assert!(
        !r.published && r.accepted == 0 && r.pending.len() == 3,
        "{r:?}"
    );
    assert!(
        d.head("rev").await.unwrap().is_none(),
        "only accepted rows enter a version"
    );
    let pending = d.pending("rev", &Actor::Admin).await.unwrap();
    // A contributor sees only their own pending rows; the owner sees all.
    assert!(
        d.pending("rev", &Actor::Contributor("bob".into()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        d.pending("rev", &Actor::Contributor("olivia".into()))
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(pending.len(), 3);
    let items: Vec<String> = pending.iter().map(|p| p.item.clone()).collect();
    // Only the owner or admin reviews; a rejection needs a reason; unknown items are named.
    let e = d
        .review(
            "rev",
            &Actor::Contributor("alice".into()),
            &items[..1],
            true,
            "",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, DatanetError::Forbidden(_)) && e.to_string().contains("not the owner"),
        "{e}"
    );
    let e = d
        .review(
            "rev",
            &Actor::Contributor("olivia".into()),
            &items[1..2],
            false,
            "",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("needs a reason"), "{e}");
    let e = d
        .review("rev", &Actor::Admin, &["f".repeat(32)], true, "")
        .await
        .unwrap_err();
    assert!(matches!(e, DatanetError::UnknownItem { .. }), "{e}");
    // Two owners accept the same item at once: it is applied once.
    let olivia = Actor::Contributor("olivia".into());
    let (x, y) = tokio::join!(
        d.review("rev", &olivia, &items[..1], true, "ok"),
        d.review("rev", &Actor::Admin, &items[..1], true, "ok"),
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|o| **o).count(),
        1,
        "{x:?} {y:?}"
    );
    let rejected = d
        .review(
            "rev",
            &Actor::Contributor("olivia".into()),
            &items[1..2],
            false,
            "too short to be useful",
        )
        .await
        .unwrap();
    assert_eq!(rejected.rejected.len(), 1);
    assert!(rejected.rejected[0].reason.contains("too short"));
    let (_, head) = d.head("rev").await.unwrap().unwrap();
    let m = d.manifest("rev", &head).await.unwrap();
    assert_eq!((m.number, m.examples.len()), (2, 1));
    assert_eq!(d.pending("rev", &Actor::Admin).await.unwrap().len(), 1);
    // The same bytes uploaded again: decided lines are not queued again.
    let again = upload(
        &d,
        "rev",
        &lines(&[
            ("Good question one", "Good answer one"),
            ("Weak question", "meh"),
            ("Third question here", "Third answer"),
        ]),
        &op("alice"),
    )
    .await;
    assert!(
        again.pending[0].reasons[0].starts_with("already reviewed"),
        "{:?}",
        again.pending
    );
    assert!(again.pending[1].reasons[0].starts_with("already reviewed"));
    assert_eq!(
        again.pending[2].item, items[2],
        "the undecided line is the same item"
    );
    assert_eq!(d.pending("rev", &Actor::Admin).await.unwrap().len(), 1);
    // Reputation and the leaderboard.
    upload(
        &d,
        "rev",
        &lines(&[("Bob asks a thing", "Bob answers it")]),
        &op("bob"),
    )
    .await;
    let bob_item = d
        .pending("rev", &Actor::Admin)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.contributor == "bob")
        .unwrap()
        .item;
    d.review("rev", &Actor::Admin, &[bob_item], true, "")
        .await
        .unwrap();
    let alice = d.reputation("rev", "alice").await.unwrap();
    assert_eq!((alice.accepted, alice.rejected, alice.pending), (1, 1, 1));
    assert_eq!(alice.acceptance_rate, 0.5);
    let board = d.leaderboard("rev", 10).await.unwrap();
    let order: Vec<&str> = board.iter().map(|r| r.contributor.as_str()).collect();
    assert_eq!(order, vec!["bob", "alice"]);
    // Alice withdraws everything: her accepted entry leaves the head, her pending row the
    // queue.
    let r = d
        .takedown(
            "rev",
            &Actor::Contributor("alice".into()),
            &Scope::Contributor("alice".into()),
            "leaving",
        )
        .await
        .unwrap();
    assert_eq!((r.withdrawn.len(), r.pending_dropped), (1, 1));
    assert!(
        d.pending("rev", &Actor::Admin)
            .await
            .unwrap()
            .iter()
            .all(|p| p.contributor != "alice")
    );
    let e = d.reputation("nope", "alice").await.unwrap_err();
    assert!(matches!(e, DatanetError::NotFound(_)));
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
