//! Placement: which workers run which queued jobs. A pure function of the queue (oldest
//! first) and the workers' free slots; deterministic whatever order its inputs come in.
//!
//! Rules: jobs are considered oldest first; a job takes distinct workers, preferring those
//! with the most free slots (ties by name), one slot on each; a job that asks for a fixed
//! count and cannot get it blocks every younger job (no backfill past it), so a large job is
//! never starved by a stream of small ones; `auto` jobs take at least one worker and at most
//! an equal share of the free workers among the jobs still waiting, so they do not crowd out
//! the jobs behind them.

use std::collections::BTreeMap;

use tributary_protocol::{JobId, NodeId};

/// A queued job's demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub job: JobId,
    /// Fewest workers it can run on.
    pub min: u32,
    /// Most workers it can use (its micro-batch count, or its fixed count).
    pub max: u32,
}

/// A job placed on workers (rank order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    pub workers: Vec<NodeId>,
}

/// Places as many of `queue` (oldest first) as the free slots allow.
pub fn place(queue: &[Demand], free: &BTreeMap<NodeId, u32>) -> Vec<Placement> {
    let mut free: BTreeMap<NodeId, u32> = free.clone();
    let mut out = Vec::new();
    for (i, d) in queue.iter().enumerate() {
        let mut avail: Vec<(&NodeId, u32)> = free
            .iter()
            .filter(|(_, s)| **s > 0)
            .map(|(n, s)| (n, *s))
            .collect();
        // Most free slots first; BTreeMap order breaks ties by name.
        avail.sort_by_key(|a| std::cmp::Reverse(a.1));
        let n_avail = avail.len() as u32;
        let min = d.min.max(1);
        if n_avail < min {
            // Head-of-line blocking: younger jobs wait until this one fits.
            break;
        }
        let waiting = (queue.len() - i) as u32;
        let take = if d.min == d.max {
            min
        } else {
            (n_avail / waiting).max(min).min(d.max.max(min))
        };
        let workers: Vec<NodeId> = avail
            .iter()
            .take(take as usize)
            .map(|(n, _)| (*n).clone())
            .collect();
        for w in &workers {
            if let Some(s) = free.get_mut(w) {
                *s -= 1;
            }
        }
        out.push(Placement {
            job: d.job.clone(),
            workers,
        });
    }
    out
}

/// How many workers a spec wants, as a placement demand.
pub fn demand(rec: &crate::store::JobRecord) -> Demand {
    let micro = rec.spec.micro_batches().max(1);
    let (min, max) = match rec.spec.workers {
        tributary_protocol::spec::Workers::Count(n) => (n.min(micro), n.min(micro)),
        tributary_protocol::spec::Workers::Auto => (1, micro),
    };
    Demand {
        job: rec.id.clone(),
        min,
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: &str, min: u32, max: u32) -> Demand {
        Demand {
            job: JobId::new(n).unwrap(),
            min,
            max,
        }
    }

    fn free(ws: &[(&str, u32)]) -> BTreeMap<NodeId, u32> {
        ws.iter()
            .map(|(n, s)| (NodeId::new(*n).unwrap(), *s))
            .collect()
    }

    fn names(p: &Placement) -> Vec<&str> {
        p.workers.iter().map(NodeId::as_str).collect()
    }

    #[test]
    fn prefers_workers_with_most_free_slots() {
        let p = place(&[job("a", 2, 2)], &free(&[("w1", 1), ("w2", 3), ("w3", 2)]));
        assert_eq!(names(&p[0]), ["w2", "w3"]);
        let p = place(&[job("a", 2, 2)], &free(&[("w3", 1), ("w1", 1), ("w2", 1)]));
        assert_eq!(names(&p[0]), ["w1", "w2"], "ties broken by name");
    }

    #[test]
    fn a_job_that_does_not_fit_blocks_younger_ones() {
        let p = place(
            &[job("small", 1, 1), job("big", 3, 3), job("small2", 1, 1)],
            &free(&[("w1", 1), ("w2", 1), ("w3", 1)]),
        );
        assert_eq!(
            p.len(),
            1,
            "big needs 3, only 2 left: small2 must not backfill"
        );
        assert_eq!(p[0].job.as_str(), "small");
    }

    #[test]
    fn auto_jobs_share_free_workers() {
        let p = place(
            &[job("a", 1, 8), job("b", 1, 8)],
            &free(&[("w1", 1), ("w2", 1), ("w3", 1), ("w4", 1)]),
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].workers.len(), 2);
        assert_eq!(p[1].workers.len(), 2);
        let p = place(
            &[job("a", 1, 3)],
            &free(&[("w1", 1), ("w2", 1), ("w3", 1), ("w4", 1)]),
        );
        assert_eq!(p[0].workers.len(), 3, "capped at its micro-batches");
    }

    #[test]
    fn no_job_starves_under_a_stream_of_small_jobs() {
        // Three single-slot workers; every round a small job arrives and running jobs finish
        // after two rounds. A 3-worker job queued early must start within a few rounds.
        let mut queue: Vec<Demand> = vec![job("s0", 1, 1), job("big", 3, 3)];
        let mut running: Vec<(Placement, u32)> = Vec::new();
        let mut started_big = None;
        for round in 0..50u32 {
            queue.push(job(&format!("s{}", round + 1), 1, 1));
            running.retain(|(_, end)| *end > round);
            let mut f = free(&[("w1", 1), ("w2", 1), ("w3", 1)]);
            for (p, _) in &running {
                for w in &p.workers {
                    *f.get_mut(w).unwrap() -= 1;
                }
            }
            for p in place(&queue, &f) {
                if p.job.as_str() == "big" && started_big.is_none() {
                    started_big = Some(round);
                }
                queue.retain(|d| d.job != p.job);
                running.push((p, round + 2));
            }
        }
        let r = started_big.expect("the big job starved");
        assert!(r <= 3, "big job waited {r} rounds");
        assert!(queue.len() < 5, "queue keeps draining: {}", queue.len());
    }
}
