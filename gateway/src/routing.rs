//! The routing choice for a cluster gateway, as a pure function: which worker gets a request
//! for a given model. Rendezvous (highest-random-weight) hashing with bounded load among the
//! workers that hold the adapter resident, so one adapter's requests keep landing where its
//! weights already are; else the least loaded worker (which then loads it). A worker at its
//! capacity is never chosen; when every worker is, there is no choice (the gateway answers
//! 429). Removing a worker moves only the requests that hashed to it.
//!
//! [`crate::cluster`] calls it for every request of `tributary gateway`, with residency and
//! load from the workers' membership records.

use tributary_protocol::ModelChoice;

/// What the gateway knows about one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLoad {
    pub id: String,
    /// Requests it is running or queueing now.
    pub in_flight: u32,
    /// Most requests it admits.
    pub capacity: u32,
    /// Whether the request's adapter is resident there (always true for the base model).
    pub resident: bool,
}

/// The load factor of the bound: a worker above `c` × the mean load (counting this
/// request) is passed over.
pub const DEFAULT_BOUND: f64 = 1.25;

fn weight(key: &[u8], worker: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(worker.as_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

fn key_of(model: &ModelChoice) -> Vec<u8> {
    match model {
        ModelChoice::Base => b"base".to_vec(),
        ModelChoice::Adapter(d) => d.as_bytes().to_vec(),
    }
}

/// The index of the worker that gets a request for `model`, or `None` when every worker is
/// at capacity.
pub fn route(model: &ModelChoice, workers: &[WorkerLoad], c: f64) -> Option<usize> {
    let key = key_of(model);
    let open: Vec<(usize, &WorkerLoad)> = workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.in_flight < w.capacity)
        .collect();
    if open.is_empty() {
        return None;
    }
    let total: u64 = workers.iter().map(|w| u64::from(w.in_flight)).sum::<u64>() + 1;
    let bound = (c.max(1.0) * total as f64 / workers.len() as f64).ceil() as u64;
    let mut holders: Vec<(usize, &WorkerLoad)> =
        open.iter().copied().filter(|(_, w)| w.resident).collect();
    holders.sort_by_key(|(_, w)| std::cmp::Reverse(weight(&key, &w.id)));
    if let Some(&(i, _)) = holders.iter().find(|(_, w)| u64::from(w.in_flight) < bound) {
        return Some(i);
    }
    open.into_iter()
        .min_by_key(|(_, w)| (w.in_flight, std::cmp::Reverse(weight(&key, &w.id))))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_protocol::Digest;

    fn workers(n: usize) -> Vec<WorkerLoad> {
        (0..n)
            .map(|i| WorkerLoad {
                id: format!("w{i}"),
                in_flight: 0,
                capacity: 100,
                resident: true,
            })
            .collect()
    }

    fn adapter(i: u32) -> ModelChoice {
        ModelChoice::Adapter(Digest::of(&i.to_le_bytes()))
    }

    #[test]
    fn an_adapter_sticks_to_one_worker_and_adapters_spread() {
        let ws = workers(4);
        let mut per = [0usize; 4];
        for a in 0..4000 {
            let first = route(&adapter(a), &ws, DEFAULT_BOUND).unwrap();
            assert_eq!(route(&adapter(a), &ws, DEFAULT_BOUND), Some(first));
            per[first] += 1;
        }
        assert!(per.iter().all(|&n| (800..1200).contains(&n)), "{per:?}");
    }

    #[test]
    fn removing_a_worker_moves_only_its_adapters() {
        let ws = workers(4);
        let fewer: Vec<WorkerLoad> = ws[..3].to_vec();
        for a in 0..2000 {
            let before = route(&adapter(a), &ws, DEFAULT_BOUND).unwrap();
            let after = route(&adapter(a), &fewer, DEFAULT_BOUND).unwrap();
            if before < 3 {
                assert_eq!(before, after, "adapter {a} moved off a surviving worker");
            }
        }
    }

    #[test]
    fn load_is_bounded_and_holders_are_preferred() {
        let m = adapter(7);
        let mut ws = workers(3);
        let home = route(&m, &ws, DEFAULT_BOUND).unwrap();
        // Only one worker holds the adapter: it gets the request while under the bound.
        for (i, w) in ws.iter_mut().enumerate() {
            w.resident = i == (home + 1) % 3;
        }
        let holder = (home + 1) % 3;
        assert_eq!(route(&m, &ws, DEFAULT_BOUND), Some(holder));
        // The holder far above the mean load: the least loaded worker instead.
        ws[holder].in_flight = 30;
        ws[(holder + 1) % 3].in_flight = 5;
        ws[(holder + 2) % 3].in_flight = 2;
        assert_eq!(route(&m, &ws, DEFAULT_BOUND), Some((holder + 2) % 3));
        // Nobody holds it: the least loaded.
        for w in &mut ws {
            w.resident = false;
        }
        assert_eq!(route(&m, &ws, DEFAULT_BOUND), Some((holder + 2) % 3));
        // Everyone full: no choice (429).
        for w in &mut ws {
            w.in_flight = w.capacity;
        }
        assert_eq!(route(&m, &ws, DEFAULT_BOUND), None);
        assert_eq!(route(&m, &[], DEFAULT_BOUND), None);
    }
}
