//! Near-duplicate detection: MinHash signatures over word 3-shingles, banded for LSH.
//!
//! **Threshold: Jaccard similarity ≥ 0.8 over lowercased word 3-shingles**, confirmed on the
//! exact shingle sets after an LSH candidate match. Why 0.8: copies gamed by changing a few
//! words (synonym swaps, an added sentence, reordered clauses) of a 40–200-word example stay
//! above 0.8, while different examples built on one template ("Translate … to French:")
//! share their template shingles but rarely exceed 0.5. Setting it lower starts merging
//! legitimately distinct examples; higher lets trivially edited copies earn twice.
//!
//! LSH: 128 MinHash values in 16 bands of 8 rows. The chance that a pair becomes a
//! candidate is `1 - (1 - J^8)^16`: 95% at J = 0.8, 99.9% at J = 0.9, 6% at J = 0.5, so few
//! candidates need the exact check and most pairs at the threshold are found.

use std::collections::HashSet;

/// MinHash values per signature.
pub const PERMUTATIONS: usize = 128;
/// Bands (16 × 8 rows = 128).
pub const BANDS: usize = 16;
const ROWS: usize = PERMUTATIONS / BANDS;
/// Word n-gram size of a shingle.
pub const SHINGLE_WORDS: usize = 3;
/// Near-duplicate threshold on exact Jaccard similarity.
pub const THRESHOLD: f64 = 0.8;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hashes of the lowercased word 3-shingles of `text` (texts under three words give one
/// shingle of all their words). Stable across builds: BLAKE3-derived.
pub fn shingles(text: &str) -> HashSet<u64> {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    let mut out = HashSet::new();
    let hash = |ws: &[String]| {
        let joined = ws.join(" ");
        let h = blake3::hash(joined.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        u64::from_le_bytes(b)
    };
    if words.len() < SHINGLE_WORDS {
        if !words.is_empty() {
            out.insert(hash(&words));
        }
        return out;
    }
    for w in words.windows(SHINGLE_WORDS) {
        out.insert(hash(w));
    }
    out
}

/// Exact Jaccard similarity of two shingle sets.
pub fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(b).count();
    let union = a.len() + b.len() - inter;
    inter as f64 / union as f64
}

/// The LSH band keys of a shingle set (32-bit each).
pub fn band_keys(shingles: &HashSet<u64>) -> [u32; BANDS] {
    let mut sig = [u64::MAX; PERMUTATIONS];
    for &s in shingles {
        for (i, slot) in sig.iter_mut().enumerate() {
            let v = splitmix(s ^ splitmix(i as u64 + 1));
            if v < *slot {
                *slot = v;
            }
        }
    }
    let mut keys = [0u32; BANDS];
    for (b, key) in keys.iter_mut().enumerate() {
        let mut h = b as u64;
        for v in sig.iter().skip(b * ROWS).take(ROWS) {
            h = splitmix(h ^ v);
        }
        *key = (h >> 32) as u32;
    }
    keys
}

/// Band keys as 128 hex characters (how manifests store them).
pub fn encode_keys(keys: &[u32; BANDS]) -> String {
    keys.iter().map(|k| format!("{k:08x}")).collect()
}

/// Parses [`encode_keys`] output.
pub fn decode_keys(s: &str) -> Option<[u32; BANDS]> {
    if s.len() != BANDS * 8 || !s.is_ascii() {
        return None;
    }
    let mut keys = [0u32; BANDS];
    for (i, k) in keys.iter_mut().enumerate() {
        *k = u32::from_str_radix(&s[i * 8..(i + 1) * 8], 16).ok()?;
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "Photosynthesis converts light energy into chemical energy stored in \
        glucose; chlorophyll in the chloroplasts absorbs mostly blue and red light while the \
        Calvin cycle fixes carbon dioxide from the air into sugars that the plant uses to grow \
        and to store energy for the night and for winter";

    #[test]
    fn a_lightly_edited_copy_is_a_candidate_and_above_the_threshold() {
        let edited = BASE.replace("mostly", "largely");
        let (a, b) = (shingles(BASE), shingles(&edited));
        assert!(jaccard(&a, &b) >= THRESHOLD, "{}", jaccard(&a, &b));
        let (ka, kb) = (band_keys(&a), band_keys(&b));
        assert!(ka.iter().zip(&kb).any(|(x, y)| x == y));
    }

    #[test]
    fn unrelated_texts_are_below_the_threshold() {
        let other = "The French Revolution began in 1789 with the storming of the Bastille and \
            ended with the rise of Napoleon, reshaping European politics for a century";
        let (a, b) = (shingles(BASE), shingles(other));
        assert!(jaccard(&a, &b) < 0.1);
        let (ka, kb) = (band_keys(&a), band_keys(&b));
        assert!(ka.iter().zip(&kb).all(|(x, y)| x != y));
    }

    #[test]
    fn keys_round_trip_and_are_deterministic() {
        let k = band_keys(&shingles(BASE));
        assert_eq!(decode_keys(&encode_keys(&k)), Some(k));
        assert_eq!(k, band_keys(&shingles(BASE)));
        assert_eq!(decode_keys("zz"), None);
    }
}
