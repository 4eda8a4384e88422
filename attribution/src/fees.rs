//! An answer's fee, and its split between the adapter's builder and the data contributors.
//!
//! All integer arithmetic (u128 intermediates): the fee is `tokens × price`, the builder
//! gets `floor(fee × builder_ppm / 10⁶)`, the contributors the rest, divided in proportion
//! to their integer shares by the largest-remainder method (ties by contributor id). The
//! parts always sum to the fee exactly. When no contributor earned a share (nothing scored
//! positive), the contributors' part goes to the builder and the record says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::AttributionError;

/// Pricing of one adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeConfig {
    /// Price per billed token, in the ledger's smallest unit.
    pub price_per_token: u64,
    /// The builder's part of each fee, in millionths.
    pub builder_ppm: u32,
}

/// One answer's fee, split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeSplit {
    /// The whole fee.
    pub total: u64,
    /// The builder's part (including the contributors' part when nobody scored).
    pub builder: u64,
    /// Each contributor's part.
    pub contributors: BTreeMap<String, u64>,
    /// Whether the contributors' part went to the builder because no share was positive.
    pub unattributed: bool,
}

/// Splits the fee for `tokens` billed tokens by integer `shares` (as from
/// [`crate::shares::shares`]).
pub fn split_fee(
    tokens: u64,
    config: &FeeConfig,
    shares: &BTreeMap<String, u64>,
) -> Result<FeeSplit, AttributionError> {
    if config.builder_ppm > 1_000_000 {
        return Err(AttributionError::invalid(
            "builder_ppm",
            format!("{} exceeds 1000000 (100 %)", config.builder_ppm),
        ));
    }
    let total = u128::from(tokens) * u128::from(config.price_per_token);
    let total = u64::try_from(total)
        .map_err(|_| AttributionError::invalid("fee", "tokens × price overflows u64"))?;
    let builder = (u128::from(total) * u128::from(config.builder_ppm) / 1_000_000) as u64;
    let pool = total - builder;
    let units: u128 = shares.values().map(|&u| u128::from(u)).sum();
    if units == 0 || pool == 0 {
        return Ok(FeeSplit {
            total,
            builder: total,
            contributors: BTreeMap::new(),
            unattributed: units == 0 && pool > 0,
        });
    }
    let mut parts: Vec<(&String, u64, u128)> = shares
        .iter()
        .map(|(k, &u)| {
            let num = u128::from(pool) * u128::from(u);
            (k, (num / units) as u64, num % units)
        })
        .collect();
    let mut left = pool - parts.iter().map(|p| p.1).sum::<u64>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].2.cmp(&parts[a].2).then(parts[a].0.cmp(parts[b].0)));
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        parts[i].1 += 1;
        left -= 1;
    }
    Ok(FeeSplit {
        total,
        builder,
        contributors: parts
            .into_iter()
            .filter(|p| p.1 > 0)
            .map(|(k, v, _)| (k.clone(), v))
            .collect(),
        unattributed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(k, u)| (k.to_string(), *u)).collect()
    }

    #[test]
    fn builder_ratio_and_exact_sum() {
        let cfg = FeeConfig {
            price_per_token: 7,
            builder_ppm: 300_000,
        };
        let s = split_fee(100, &cfg, &shares(&[("a", 1), ("b", 1), ("c", 1)])).unwrap();
        assert_eq!(s.total, 700);
        assert_eq!(s.builder, 210);
        // 490 / 3 = 163 r 1: the one left goes to the lowest id among equal remainders
        assert_eq!(s.contributors["a"], 164);
        assert_eq!(s.contributors["b"], 163);
        assert_eq!(s.builder + s.contributors.values().sum::<u64>(), s.total);
    }

    #[test]
    fn property_parts_always_sum_to_the_fee() {
        let mut x = 99u64;
        for _ in 0..500 {
            x = crate::splitmix64(x);
            let tokens = x % 5000;
            let cfg = FeeConfig {
                price_per_token: (x >> 20) % 1000,
                builder_ppm: ((x >> 40) % 1_000_001) as u32,
            };
            let n = (x >> 8) % 7;
            let sh: BTreeMap<String, u64> = (0..n)
                .map(|i| (format!("c{i}"), crate::splitmix64(x + i) % 1000))
                .collect();
            let s = split_fee(tokens, &cfg, &sh).unwrap();
            assert_eq!(s.builder + s.contributors.values().sum::<u64>(), s.total);
        }
    }

    #[test]
    fn nobody_scored_goes_to_the_builder_and_bad_ratio_is_named() {
        let cfg = FeeConfig {
            price_per_token: 2,
            builder_ppm: 500_000,
        };
        let s = split_fee(10, &cfg, &BTreeMap::new()).unwrap();
        assert_eq!((s.builder, s.unattributed), (20, true));
        let bad = FeeConfig {
            builder_ppm: 1_000_001,
            ..cfg
        };
        assert!(
            split_fee(1, &bad, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("builder_ppm")
        );
    }
}
