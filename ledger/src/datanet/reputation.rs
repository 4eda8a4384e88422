//! Contributor reputation per datanet: accepted, rejected, duplicate, near-duplicate,
//! withdrawn and pending counts and the acceptance rate, read from the head manifest's
//! cumulative statistics (and the review queue for pending rows). Quarantine uses the same
//! numbers ([`crosses`]): rows rejected at ingestion or by review, and entries removed by
//! an admin's takedown, count against a contributor; withdrawing one's own examples does
//! not.

use std::collections::BTreeMap;

use serde::Serialize;

use super::ingest::QuarantineRule;
use super::manifest::ContributorStats;
use super::{DatanetError, Datanets};

/// Whether a contributor with `stats` so far, plus `rows` new rows of which `bad` were
/// rejected, reaches the quarantine rule.
pub fn crosses(rule: &QuarantineRule, stats: &ContributorStats, rows: u64, bad: u64) -> bool {
    let total = stats.rows() + rows;
    let bad = stats.rejected + stats.removed + bad;
    total >= rule.min_rows && bad as f64 >= rule.rate * total as f64
}

/// One contributor's standing in one datanet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reputation {
    pub contributor: String,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub near_duplicates: u64,
    pub withdrawn: u64,
    /// Withdrawn by an admin (counted against the contributor).
    pub removed: u64,
    /// Rows waiting in the review queue.
    pub pending: u64,
    /// accepted / (accepted + rejected + duplicates + near-duplicates); 0 with no rows.
    pub acceptance_rate: f64,
    pub quarantined: bool,
}

impl Reputation {
    pub fn of(contributor: &str, s: &ContributorStats, pending: u64) -> Self {
        let rows = s.rows();
        Reputation {
            contributor: contributor.to_string(),
            accepted: s.accepted,
            rejected: s.rejected,
            duplicates: s.duplicates,
            near_duplicates: s.near_duplicates,
            withdrawn: s.withdrawn,
            removed: s.removed,
            pending,
            acceptance_rate: if rows == 0 {
                0.0
            } else {
                s.accepted as f64 / rows as f64
            },
            quarantined: s.quarantined,
        }
    }
}

/// Orders a leaderboard: most accepted (net of withdrawals) first, then the higher
/// acceptance rate, then the id.
pub fn rank(list: &mut [Reputation]) {
    list.sort_by(|a, b| {
        let net = |r: &Reputation| r.accepted.saturating_sub(r.withdrawn);
        net(b)
            .cmp(&net(a))
            .then(b.acceptance_rate.total_cmp(&a.acceptance_rate))
            .then(a.contributor.cmp(&b.contributor))
    });
}

impl Datanets {
    /// Every contributor's reputation in `name` (head version plus the review queue).
    pub async fn reputations(&self, name: &str) -> Result<Vec<Reputation>, DatanetError> {
        self.meta(name).await?;
        let stats: BTreeMap<String, ContributorStats> = match self.head(name).await? {
            Some((_, v)) => self.manifest(name, &v).await?.contributors,
            None => BTreeMap::new(),
        };
        let mut pending: BTreeMap<String, u64> = BTreeMap::new();
        for item in self.pending_all(name).await? {
            *pending.entry(item.contributor).or_default() += 1;
        }
        let mut out: Vec<Reputation> = stats
            .iter()
            .map(|(c, s)| Reputation::of(c, s, pending.get(c).copied().unwrap_or(0)))
            .collect();
        for (c, n) in &pending {
            if !stats.contains_key(c) {
                out.push(Reputation::of(c, &ContributorStats::default(), *n));
            }
        }
        Ok(out)
    }

    /// One contributor's reputation (zeros if they never contributed).
    pub async fn reputation(
        &self,
        name: &str,
        contributor: &str,
    ) -> Result<Reputation, DatanetError> {
        Ok(self
            .reputations(name)
            .await?
            .into_iter()
            .find(|r| r.contributor == contributor)
            .unwrap_or_else(|| Reputation::of(contributor, &ContributorStats::default(), 0)))
    }

    /// The leaderboard: ranked by [`rank`], at most `limit` entries.
    pub async fn leaderboard(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<Reputation>, DatanetError> {
        let mut all = self.reputations(name).await?;
        rank(&mut all);
        all.truncate(limit);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_count_against_quarantine_but_own_withdrawals_do_not() {
        let rule = QuarantineRule::default();
        let s = ContributorStats {
            accepted: 20,
            withdrawn: 20,
            ..Default::default()
        };
        assert!(!crosses(&rule, &s, 0, 0));
        let s = ContributorStats {
            accepted: 20,
            withdrawn: 10,
            removed: 10,
            ..Default::default()
        };
        assert!(crosses(&rule, &s, 0, 0));
        let r = Reputation::of(
            "a",
            &ContributorStats {
                accepted: 3,
                rejected: 1,
                ..Default::default()
            },
            2,
        );
        assert_eq!(r.acceptance_rate, 0.75);
        let mut list = vec![
            Reputation::of(
                "low",
                &ContributorStats {
                    accepted: 1,
                    ..Default::default()
                },
                0,
            ),
            r,
            Reputation::of(
                "top",
                &ContributorStats {
                    accepted: 3,
                    ..Default::default()
                },
                0,
            ),
        ];
        rank(&mut list);
        let order: Vec<&str> = list.iter().map(|r| r.contributor.as_str()).collect();
        assert_eq!(order, vec!["top", "a", "low"]);
    }
}
