//! Placement: which workers run which queued jobs. A pure function of the queue (oldest
//! first) and the workers' free slots; deterministic whatever order its inputs come in.
//!
//! Rules: jobs are considered oldest first; a job takes distinct workers, preferring those
//! with the most free slots (ties by name), one slot on each; a job that asks for a fixed
//! count and cannot get it blocks every younger job (no backfill past it), so a large job is
//! never starved by a stream of small ones; `auto` jobs take at least one worker and at most
//! an equal share of the free workers among the jobs still waiting, so they do not crowd out
//! the jobs behind them.
//!
//! A job with `resources.gpu` ([`Demand::gpu`]) takes only workers that advertise a hardware
//! GPU. While fewer such workers are members than it needs, it cannot be placed however long
//! it waits, so it is passed over (it blocks no one) and stays queued with the reason from
//! [`waiting_reason`]; once enough are members, it blocks younger jobs like any other.

use std::collections::{BTreeMap, BTreeSet};

use tributary_protocol::{JobId, NodeId};

/// A queued job's demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub job: JobId,
    /// Fewest workers it can run on.
    pub min: u32,
    /// Most workers it can use (its micro-batch count, or its fixed count).
    pub max: u32,
    /// Whether it runs only on workers with a hardware GPU (`resources.gpu`).
    pub gpu: bool,
}

/// A job placed on workers (rank order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    pub workers: Vec<NodeId>,
}

/// Places as many of `queue` (oldest first) as the free slots allow, on workers without
/// GPUs (see [`place_on`]).
pub fn place(queue: &[Demand], free: &BTreeMap<NodeId, u32>) -> Vec<Placement> {
    place_on(queue, free, &BTreeSet::new())
}

/// Places as many of `queue` (oldest first) as the free slots allow. `free` has every member
/// (with 0 for a busy one); `gpus` are the members that advertise a hardware GPU.
pub fn place_on(
    queue: &[Demand],
    free: &BTreeMap<NodeId, u32>,
    gpus: &BTreeSet<NodeId>,
) -> Vec<Placement> {
    let gpu_members = free.keys().filter(|n| gpus.contains(*n)).count() as u32;
    let mut free: BTreeMap<NodeId, u32> = free.clone();
    let mut out = Vec::new();
    for (i, d) in queue.iter().enumerate() {
        let min = d.min.max(1);
        if d.gpu && gpu_members < min {
            // Not placeable until GPU workers join: waiting, but blocking no one.
            continue;
        }
        let mut avail: Vec<(&NodeId, u32)> = free
            .iter()
            .filter(|(n, s)| **s > 0 && (!d.gpu || gpus.contains(*n)))
            .map(|(n, s)| (n, *s))
            .collect();
        // Most free slots first; BTreeMap order breaks ties by name.
        avail.sort_by_key(|a| std::cmp::Reverse(a.1));
        let n_avail = avail.len() as u32;
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

/// Why a queued job that [`place_on`] did not place is waiting, for its record: `members`
/// is every member with its free slots, `gpus` those with a hardware GPU.
pub fn waiting_reason(
    d: &Demand,
    members: &BTreeMap<NodeId, u32>,
    gpus: &BTreeSet<NodeId>,
) -> String {
    let min = d.min.max(1);
    let plural = |n: u32| if n == 1 { "" } else { "s" };
    if d.gpu {
        let have = members.keys().filter(|n| gpus.contains(*n)).count() as u32;
        if have == 0 {
            return "waiting for a worker with a GPU (resources.gpu): no worker advertises a \
                    hardware GPU"
                .into();
        }
        if have < min {
            return format!(
                "waiting for {min} workers with a GPU (resources.gpu): {have} advertise{} one",
                if have == 1 { "s" } else { "" }
            );
        }
        return format!("waiting for {min} free worker{} with a GPU", plural(min));
    }
    format!("waiting for {min} free worker{}", plural(min))
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
        gpu: rec.spec.resources.needs_gpu(),
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
            gpu: false,
        }
    }

    fn gpu_job(n: &str, min: u32, max: u32) -> Demand {
        Demand {
            gpu: true,
            ..job(n, min, max)
        }
    }

    fn gpus(ws: &[&str]) -> BTreeSet<NodeId> {
        ws.iter().map(|n| NodeId::new(*n).unwrap()).collect()
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

    #[test]
    fn gpu_jobs_go_only_to_workers_advertising_a_gpu() {
        let f = free(&[("cpu1", 4), ("cpu2", 4), ("h100", 1)]);
        let p = place_on(&[gpu_job("g", 1, 4), job("c", 1, 1)], &f, &gpus(&["h100"]));
        assert_eq!(
            names(&p[0]),
            ["h100"],
            "only the GPU worker, though CPUs have more slots"
        );
        assert_eq!(p[1].job.as_str(), "c");
        assert_eq!(names(&p[1]), ["cpu1"]);
    }

    #[test]
    fn without_gpu_workers_a_gpu_job_waits_with_a_reason_and_blocks_no_one() {
        let f = free(&[("cpu1", 1), ("cpu2", 1)]);
        let none = BTreeSet::new();
        let queue = [gpu_job("g", 1, 1), job("c", 1, 1)];
        let p = place_on(&queue, &f, &none);
        assert_eq!(p.len(), 1, "the GPU job is not placed on CPU workers");
        assert_eq!(
            p[0].job.as_str(),
            "c",
            "and does not block the CPU job behind it"
        );
        let why = waiting_reason(&queue[0], &f, &none);
        assert!(why.starts_with("waiting for a worker with a GPU"), "{why}");
        // The same job with `place` (no GPUs known) is never placed either.
        assert!(place(&queue[..1], &f).is_empty());
    }

    #[test]
    fn a_gpu_job_with_enough_gpu_members_but_busy_ones_blocks_younger_jobs() {
        let f = free(&[("cpu1", 1), ("gpu1", 0)]);
        let p = place_on(&[gpu_job("g", 1, 1), job("c", 1, 1)], &f, &gpus(&["gpu1"]));
        assert!(
            p.is_empty(),
            "head-of-line: the GPU exists, the job waits for it"
        );
        let why = waiting_reason(&gpu_job("g", 1, 1), &f, &gpus(&["gpu1"]));
        assert_eq!(why, "waiting for 1 free worker with a GPU");
        let why = waiting_reason(&gpu_job("g", 2, 2), &f, &gpus(&["gpu1"]));
        assert_eq!(
            why,
            "waiting for 2 workers with a GPU (resources.gpu): 1 advertises one"
        );
        assert_eq!(
            waiting_reason(&job("c", 2, 2), &f, &gpus(&[])),
            "waiting for 2 free workers"
        );
    }
}
