//! The pure parts of a takedown: planning it against a head (who may withdraw what, which
//! texts can be erased), the manifest without the withdrawn entries, and the index
//! attribution uses to stop paying for withdrawn examples.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{LogEntry, Scope, Withdrawn};
use crate::datanet::DatanetError;
use crate::datanet::identity::Actor;
use crate::datanet::ingest::QuarantineRule;
use crate::datanet::manifest::{Entry, Event, Kind, Manifest, UploadInfo, Withdrawal};
use crate::datanet::reputation::crosses;

/// Which entries attribution may still pay: built from a datanet's head. An entry stops
/// earning from its withdrawal time on; rewards paid before stay as they were.
#[derive(Debug, Clone, Default)]
pub struct WithdrawnIndex {
    /// id → (contributor, withdrawal time, erased).
    by_id: HashMap<String, Vec<(String, u64, bool)>>,
}

impl WithdrawnIndex {
    pub fn from_manifest(m: &Manifest) -> Self {
        let mut by_id: HashMap<String, Vec<(String, u64, bool)>> = HashMap::new();
        for w in &m.withdrawn {
            by_id.entry(w.id.clone()).or_default().push((
                w.contributor.clone(),
                w.time_ms,
                w.erased,
            ));
        }
        Self { by_id }
    }

    /// Whether `contributor` may be paid for example `id` for a request at `at_ms`: false
    /// once their entry was withdrawn, or the text erased, at or before `at_ms`.
    pub fn pays(&self, id: &str, contributor: &str, at_ms: u64) -> bool {
        !self.by_id.get(id).is_some_and(|ws| {
            ws.iter()
                .any(|(c, t, erased)| *t <= at_ms && (*erased || c == contributor))
        })
    }

    /// When example `id` was erased, if it was.
    pub fn erased_at(&self, id: &str) -> Option<u64> {
        self.by_id
            .get(id)?
            .iter()
            .filter(|(_, _, e)| *e)
            .map(|(_, t, _)| *t)
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The plan of a takedown against one head.
pub(super) struct Plan {
    pub(super) withdrawn: Vec<Withdrawn>,
    /// id → credited owner (for tombstones).
    pub(super) owners: BTreeMap<String, String>,
}

pub(super) fn plan(
    name: &str,
    m: &Manifest,
    actor: &Actor,
    scope: &Scope,
    elsewhere: &BTreeSet<String>,
) -> Result<Plan, DatanetError> {
    let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
    match scope {
        Scope::Examples(ids) => {
            if ids.is_empty() {
                return Err(DatanetError::BadRequest("no example ids given".into()));
            }
            for id in ids {
                let here: Vec<&Entry> = m.examples.iter().filter(|e| &e.id == id).collect();
                if here.is_empty() {
                    if let Some(w) = m.withdrawn.iter().find(|w| &w.id == id) {
                        return Err(DatanetError::BadRequest(format!(
                            "example `{id}` was already withdrawn from `{name}` by takedown {}",
                            w.seq
                        )));
                    }
                    return Err(DatanetError::UnknownExample {
                        name: name.to_string(),
                        id: id.clone(),
                    });
                }
                match actor {
                    Actor::Admin => {
                        pairs.extend(here.iter().map(|e| (e.id.clone(), e.contributor.clone())));
                    }
                    Actor::Contributor(c) => {
                        if !here.iter().any(|e| &e.contributor == c) {
                            let owner = here
                                .iter()
                                .find(|e| e.weight > 0)
                                .or(here.first())
                                .map(|e| e.contributor.clone())
                                .unwrap_or_default();
                            return Err(DatanetError::Forbidden(format!(
                                "example `{id}` in `{name}` was contributed by `{owner}`, not `{c}`; \
                                 only its contributor or an admin may take it down"
                            )));
                        }
                        pairs.insert((id.clone(), c.clone()));
                    }
                }
            }
        }
        Scope::Contributor(who) => {
            if let Actor::Contributor(c) = actor
                && c != who
            {
                return Err(DatanetError::Forbidden(format!(
                    "`{c}` may not take down the examples of `{who}`; only they or an admin may"
                )));
            }
            pairs.extend(
                m.examples
                    .iter()
                    .filter(|e| &e.contributor == who)
                    .map(|e| (e.id.clone(), e.contributor.clone())),
            );
            if pairs.is_empty() {
                return Err(DatanetError::BadRequest(format!(
                    "contributor `{who}` has no examples in the head of `{name}`"
                )));
            }
        }
    }
    let remaining: BTreeSet<&str> = m
        .examples
        .iter()
        .filter(|e| !pairs.contains(&(e.id.clone(), e.contributor.clone())))
        .map(|e| e.id.as_str())
        .collect();
    let mut owners = BTreeMap::new();
    for e in m.examples.iter() {
        if pairs.contains(&(e.id.clone(), e.contributor.clone())) {
            let o = owners
                .entry(e.id.clone())
                .or_insert_with(|| e.contributor.clone());
            if e.weight > 0 {
                *o = e.contributor.clone();
            }
        }
    }
    let withdrawn = pairs
        .into_iter()
        .map(|(id, contributor)| Withdrawn {
            erased: !remaining.contains(id.as_str()) && !elsewhere.contains(&id),
            id,
            contributor,
        })
        .collect();
    Ok(Plan { withdrawn, owners })
}

/// The head manifest with the withdrawn entries removed (clusters re-credited).
/// An admin's removals count against the contributor, so they can reach quarantine.
pub(super) fn without(
    m: &Manifest,
    entry: &LogEntry,
    now_ms: u64,
    rule: &QuarantineRule,
) -> Manifest {
    // The planned entries, and any entry of an erased text that landed since the plan.
    let erased: BTreeSet<&str> = entry
        .withdrawn
        .iter()
        .filter(|w| w.erased)
        .map(|w| w.id.as_str())
        .collect();
    let mut withdrawn = entry.withdrawn.clone();
    for e in &m.examples {
        if erased.contains(e.id.as_str())
            && !withdrawn
                .iter()
                .any(|w| w.id == e.id && w.contributor == e.contributor)
        {
            withdrawn.push(Withdrawn {
                id: e.id.clone(),
                contributor: e.contributor.clone(),
                erased: true,
            });
        }
    }
    let gone: BTreeSet<(&str, &str)> = withdrawn
        .iter()
        .map(|w| (w.id.as_str(), w.contributor.as_str()))
        .collect();
    let mut next = m.clone();
    next.examples
        .retain(|e| !gone.contains(&(e.id.as_str(), e.contributor.as_str())));
    // A cluster whose credited entry left is credited to its earliest remaining member.
    let credited: BTreeSet<String> = next
        .examples
        .iter()
        .filter(|e| e.weight > 0)
        .map(|e| e.cluster.clone())
        .collect();
    let mut promoted: BTreeSet<String> = BTreeSet::new();
    for e in next.examples.iter_mut() {
        if !credited.contains(&e.cluster) && !promoted.contains(&e.cluster) {
            promoted.insert(e.cluster.clone());
            e.weight = 1;
            e.kind = Kind::Original;
        }
    }
    let admin = entry.by_admin;
    for w in &withdrawn {
        let s = next.contributors.entry(w.contributor.clone()).or_default();
        s.withdrawn += 1;
        if admin {
            s.removed += 1;
            if crosses(rule, s, 0, 0) {
                s.quarantined = true;
            }
        }
        next.withdrawn.push(Withdrawal {
            id: w.id.clone(),
            contributor: w.contributor.clone(),
            time_ms: entry.time_ms,
            seq: entry.seq,
            erased: w.erased,
        });
    }
    next.parent = None;
    next.number = m.number + 1;
    next.created_ms = now_ms;
    next.upload = UploadInfo::default();
    next.event = Some(Event::Takedown { seq: entry.seq });
    next
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::datanet::manifest::ContributorStats;

    fn entry(id: &str, who: &str, weight: u32, cluster: &str) -> Entry {
        Entry {
            id: id.repeat(64),
            contributor: who.into(),
            weight,
            kind: if weight > 0 {
                Kind::Original
            } else {
                Kind::NearDuplicate
            },
            cluster: cluster.repeat(64),
            lsh: String::new(),
            terms: 0,
        }
    }

    fn manifest(examples: Vec<Entry>, stats: &[(&str, u64)]) -> Manifest {
        Manifest {
            format: 1,
            datanet: "d".into(),
            parent: None,
            number: 1,
            created_ms: 0,
            upload: UploadInfo::default(),
            examples,
            contributors: stats
                .iter()
                .map(|(c, n)| {
                    (
                        c.to_string(),
                        ContributorStats {
                            accepted: *n,
                            ..Default::default()
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            terms: 0,
            event: None,
            withdrawn: Vec::new(),
            reviewed: Vec::new(),
        }
    }

    fn log(actor: &str, p: &Plan) -> LogEntry {
        LogEntry {
            seq: 1,
            prev: None,
            datanet: "d".into(),
            time_ms: 5,
            actor: actor.into(),
            by_admin: actor == "admin",
            scope: Scope::Examples(vec![]),
            reason: "r".into(),
            based_on: None,
            withdrawn: p.withdrawn.clone(),
            adapters: vec![],
        }
    }

    #[test]
    fn a_cluster_is_recredited_and_admin_removals_can_quarantine() {
        // alice owns cluster a; bob's near-duplicate b joins it.
        let m = manifest(
            vec![entry("a", "alice", 1, "a"), entry("b", "bob", 0, "a")],
            &[("alice", 20), ("bob", 1)],
        );
        let p = plan(
            "d",
            &m,
            &Actor::Admin,
            &Scope::Contributor("alice".into()),
            &BTreeSet::new(),
        )
        .unwrap();
        assert!(p.withdrawn.iter().all(|w| w.erased));
        let next = without(&m, &log("admin", &p), 9, &QuarantineRule::default());
        assert_eq!(next.examples.len(), 1);
        assert_eq!(
            (next.examples[0].weight, next.examples[0].kind),
            (1, Kind::Original),
            "bob's near-duplicate is credited once alice's original is gone"
        );
        assert_eq!(next.withdrawn.len(), 1);
        assert_eq!(next.contributors["alice"].removed, 1);
        assert!(
            !next.contributors["alice"].quarantined,
            "1 of 20 is under the rate"
        );
        // The same by alice herself is not a removal.
        let own = without(&m, &log("alice", &p), 9, &QuarantineRule::default());
        assert_eq!(own.contributors["alice"].removed, 0);
        // Ten admin removals out of twenty rows reach the 50% rule.
        let many: Vec<Entry> = (0..10)
            .map(|i| entry(&format!("{i:x}"), "carol", 1, &format!("{i:x}")))
            .collect();
        let m = manifest(many, &[("carol", 20)]);
        let p = plan(
            "d",
            &m,
            &Actor::Admin,
            &Scope::Contributor("carol".into()),
            &BTreeSet::new(),
        )
        .unwrap();
        let next = without(&m, &log("admin", &p), 9, &QuarantineRule::default());
        assert!(next.contributors["carol"].quarantined);
        // Text another datanet still references is not erased.
        let m = manifest(vec![entry("a", "alice", 1, "a")], &[("alice", 1)]);
        let elsewhere: BTreeSet<String> = ["a".repeat(64)].into();
        let p = plan(
            "d",
            &m,
            &Actor::Contributor("alice".into()),
            &Scope::Examples(vec!["a".repeat(64)]),
            &elsewhere,
        )
        .unwrap();
        assert!(!p.withdrawn[0].erased);
    }

    #[test]
    fn the_index_stops_payment_from_the_withdrawal_on() {
        let mut m = manifest(vec![], &[]);
        m.withdrawn = vec![
            Withdrawal {
                id: "x".into(),
                contributor: "alice".into(),
                time_ms: 100,
                seq: 1,
                erased: false,
            },
            Withdrawal {
                id: "y".into(),
                contributor: "bob".into(),
                time_ms: 200,
                seq: 2,
                erased: true,
            },
        ];
        let idx = WithdrawnIndex::from_manifest(&m);
        assert!(idx.pays("x", "alice", 99) && !idx.pays("x", "alice", 100));
        assert!(
            idx.pays("x", "bob", 1000),
            "only alice's entry of x was withdrawn"
        );
        assert!(!idx.pays("y", "carol", 200), "an erased text pays no one");
        assert_eq!(idx.erased_at("y"), Some(200));
        assert_eq!(idx.erased_at("x"), None);
    }
}
