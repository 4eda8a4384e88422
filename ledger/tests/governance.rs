//! Datanet governance against real stores (a local directory, and moto's S3 API on
//! 127.0.0.1): licences, terms and consent; the scanner's policies end to end; the owner's
//! review queue and reputation; bad input (unknown licence id, someone else's key, not the
//! owner). Takedown is in takedown.rs.
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

use common::govern::{chat, lines, op, register, upload};
use common::{Backend, both_backends};
use tributary_ledger::Store;
use tributary_ledger::adapters::AdapterRegistry;
use tributary_ledger::datanet::identity::{self, KeyRing, Uploader};
use tributary_ledger::datanet::license::{self, License, TermsChange};
use tributary_ledger::datanet::scan::{Action, Kind, Policy};
use tributary_ledger::datanet::{Actor, DatanetError, Datanets, Scope};

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
