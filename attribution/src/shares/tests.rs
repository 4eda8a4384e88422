use super::*;
use crate::splitmix64;

fn cand(example: usize, score: f64, who: &str, order: u64) -> Candidate {
    Candidate {
        example,
        score,
        contributor: who.into(),
        order,
        dup_key: None,
    }
}

fn no_similarity(_: usize, _: usize) -> f64 {
    0.0
}

/// Deterministic pseudo-random f64 in [0, 1).
fn unit(x: &mut u64) -> f64 {
    *x = splitmix64(*x);
    (*x >> 11) as f64 / (1u64 << 53) as f64
}

#[test]
fn negatives_are_clipped_and_shares_sum_exactly() {
    let c = vec![
        cand(0, 3.0, "alice", 0),
        cand(1, -5.0, "bob", 1),
        cand(2, 1.0, "carol", 2),
    ];
    let s = shares(&c, &ShareParams::default(), no_similarity).unwrap();
    assert_eq!(s.by_contributor.get("bob"), None);
    assert_eq!(s.by_contributor["alice"], 750_000);
    assert_eq!(s.by_contributor["carol"], 250_000);
}

#[test]
fn nothing_positive_gives_no_shares() {
    let s = shares(
        &[cand(0, -1.0, "a", 0)],
        &ShareParams::default(),
        no_similarity,
    )
    .unwrap();
    assert!(s.by_contributor.is_empty());
}

#[test]
fn top_k_keeps_the_best_clusters_only() {
    let c: Vec<Candidate> = (0..10)
        .map(|i| cand(i, 10.0 - i as f64, &format!("c{i}"), i as u64))
        .collect();
    let p = ShareParams {
        top_k: 3,
        ..ShareParams::default()
    };
    let s = shares(&c, &p, no_similarity).unwrap();
    assert_eq!(s.by_contributor.len(), 3);
    assert!(s.by_contributor.contains_key("c0") && s.by_contributor.contains_key("c2"));
}

#[test]
fn duplicate_clusters_count_once_for_their_first_owner() {
    let honest = vec![cand(0, 2.0, "alice", 0), cand(1, 2.0, "bob", 1)];
    let base = shares(&honest, &ShareParams::default(), no_similarity).unwrap();
    // mallory re-uploads alice's example (same datanet cluster), scoring a little higher
    let mut copied = honest.clone();
    copied[0].dup_key = Some("x".into());
    copied.push(Candidate {
        dup_key: Some("x".into()),
        ..cand(2, 2.1, "mallory", 5)
    });
    let s = shares(&copied, &ShareParams::default(), no_similarity).unwrap();
    assert_eq!(s.by_contributor.get("mallory"), None);
    assert!(s.fraction("alice") >= base.fraction("alice") - 1e-6);
    assert_eq!(s.credits[0].members, vec![0, 2]);
}

#[test]
fn gradient_near_identical_examples_cluster() {
    let c = vec![
        cand(0, 1.0, "alice", 0),
        cand(1, 1.05, "mallory", 9),
        cand(2, 1.0, "bob", 1),
    ];
    let sim = |a: usize, b: usize| {
        if a.min(b) == 0 && a.max(b) == 1 {
            0.99
        } else {
            0.1
        }
    };
    let s = shares(&c, &ShareParams::default(), sim).unwrap();
    assert_eq!(s.by_contributor.get("mallory"), None);
    assert_eq!(s.by_contributor["alice"], 512_195); // 1.05 / 2.05
    let off = ShareParams {
        cosine_threshold: None,
        ..ShareParams::default()
    };
    let s = shares(&c, &off, sim).unwrap();
    assert!(s.by_contributor["mallory"] > 0);
}

#[test]
fn largest_remainder_ties_go_to_the_lower_id() {
    let w: BTreeMap<String, f64> = [("b", 1.0), ("a", 1.0), ("c", 1.0)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    let s = largest_remainder(&w, 10);
    assert_eq!((s["a"], s["b"], s["c"]), (4, 3, 3));
}

#[test]
fn bad_parameters_are_named() {
    let p = ShareParams {
        top_k: 0,
        ..ShareParams::default()
    };
    let e = shares(&[], &p, no_similarity).unwrap_err().to_string();
    assert!(e.contains("top_k"), "{e}");
    let e = shares(
        &[cand(0, f64::NAN, "a", 0)],
        &ShareParams::default(),
        no_similarity,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("score"), "{e}");
}

/// Random scores for `n` examples of `k` contributors, some in duplicate clusters.
fn random_case(seed: u64, n: usize, k: usize) -> Vec<Candidate> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            let who = format!("c{}", (unit(&mut x) * k as f64) as usize);
            let score = unit(&mut x) * 2.0 - 0.4;
            let dup = (unit(&mut x) < 0.2).then(|| format!("d{}", (unit(&mut x) * 5.0) as u32));
            Candidate {
                example: i,
                score,
                contributor: who,
                order: i as u64,
                dup_key: dup,
            }
        })
        .collect()
}

#[test]
fn property_shares_always_sum_to_units() {
    for seed in 0..300u64 {
        let mut x = seed;
        let n = 1 + (unit(&mut x) * 60.0) as usize;
        let c = random_case(seed, n, 1 + (unit(&mut x) * 9.0) as usize);
        let p = ShareParams {
            top_k: 1 + (unit(&mut x) * 20.0) as usize,
            units: 1 + (unit(&mut x) * 1e6) as u64,
            ..ShareParams::default()
        };
        let sim = |a: usize, b: usize| if (a + b).is_multiple_of(7) { 0.97 } else { 0.0 };
        let s = shares(&c, &p, sim).unwrap();
        let total: u64 = s.by_contributor.values().sum();
        if c.iter().any(|c| c.score > 0.0) {
            assert_eq!(total, p.units, "seed {seed}");
        } else {
            assert_eq!(total, 0);
        }
    }
}

#[test]
fn property_a_sybil_split_never_gains() {
    // Split one contributor's examples across m identities at random (keeping the order of
    // acceptance, as re-uploading would); with small top-k binding too.
    for seed in 0..300u64 {
        let mut x = seed ^ 0xabc;
        let n = 2 + (unit(&mut x) * 60.0) as usize;
        let honest = random_case(seed, n, 4);
        let m = 2 + (unit(&mut x) * 4.0) as usize;
        let mut split = honest.clone();
        for c in split.iter_mut().filter(|c| c.contributor == "c0") {
            c.contributor = format!("c0-sybil{}", (unit(&mut x) * m as f64) as usize);
        }
        let p = ShareParams {
            top_k: 1 + (unit(&mut x) * 12.0) as usize,
            ..ShareParams::default()
        };
        let sim = |a: usize, b: usize| if (a * b) % 11 == 3 { 0.99 } else { 0.0 };
        let a = shares(&honest, &p, sim).unwrap();
        let b = shares(&split, &p, sim).unwrap();
        let mass_a = a.mass.get("c0").copied().unwrap_or(0.0);
        let mass_b: f64 = b
            .mass
            .iter()
            .filter(|(k, _)| k.starts_with("c0-sybil"))
            .map(|(_, v)| v)
            .sum();
        assert!(
            mass_b <= mass_a + 1e-9 * mass_a.max(1.0),
            "seed {seed}: {mass_b} > {mass_a}"
        );
        let units_a = a.by_contributor.get("c0").copied().unwrap_or(0);
        let units_b: u64 = b
            .by_contributor
            .iter()
            .filter(|(k, _)| k.starts_with("c0-sybil"))
            .map(|(_, v)| v)
            .sum();
        assert!(
            units_b < units_a + m as u64,
            "seed {seed}: {units_b} vs {units_a}"
        );
    }
}
