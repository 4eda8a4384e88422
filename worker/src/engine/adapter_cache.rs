//! The resident adapters: a cache keyed by digest under a byte budget, least recently used
//! evicted first, never one that is pinned or that a scheduled request still uses. Pure
//! bookkeeping (the engine's loop owns it and loads on another thread), tested on its own.

use std::collections::HashMap;

use tributary_protocol::ids::Digest;

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: u64,
    last_used: u64,
    pinned: bool,
    /// Requests holding it (admitted and not finished).
    users: usize,
}

/// What [`AdapterCache::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// Resident now; these were evicted to make room.
    Resident { evicted: Vec<Digest> },
    /// Not enough room even after evicting every adapter nobody uses: retry when requests
    /// finish (nothing was evicted).
    NoRoomNow,
    /// It can never fit: larger than the budget left by pinned adapters.
    TooLarge { bytes: u64, room: u64 },
}

/// One resident adapter, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resident {
    pub digest: Digest,
    pub bytes: u64,
    pub pinned: bool,
    pub users: usize,
}

/// Adapters by digest under a byte budget.
#[derive(Debug)]
pub struct AdapterCache<V> {
    budget: u64,
    used: u64,
    clock: u64,
    entries: HashMap<Digest, Entry<V>>,
}

impl<V> AdapterCache<V> {
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// Bytes resident.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.entries.contains_key(digest)
    }

    /// The adapter, without touching its recency.
    pub fn peek(&self, digest: &Digest) -> Option<&V> {
        self.entries.get(digest).map(|e| &e.value)
    }

    /// Marks a request as using a resident adapter (it cannot be evicted until
    /// [`AdapterCache::release`]); counts as a use for recency. False when not resident.
    pub fn acquire(&mut self, digest: &Digest) -> bool {
        self.clock += 1;
        match self.entries.get_mut(digest) {
            Some(e) => {
                e.users += 1;
                e.last_used = self.clock;
                true
            }
            None => false,
        }
    }

    /// A request that used the adapter finished.
    pub fn release(&mut self, digest: &Digest) {
        if let Some(e) = self.entries.get_mut(digest) {
            e.users = e.users.saturating_sub(1);
        }
    }

    /// Pins or unpins a resident adapter; false when not resident.
    pub fn set_pinned(&mut self, digest: &Digest, pinned: bool) -> bool {
        match self.entries.get_mut(digest) {
            Some(e) => {
                e.pinned = pinned;
                true
            }
            None => false,
        }
    }

    /// Makes `value` resident, evicting the least recently used adapters that are neither
    /// pinned nor in use, if that makes room (see [`Inserted`]).
    pub fn insert(&mut self, digest: Digest, value: V, bytes: u64) -> (Inserted, Option<V>) {
        if self.entries.contains_key(&digest) {
            return (Inserted::Resident { evicted: vec![] }, Some(value));
        }
        let pinned: u64 = self
            .entries
            .values()
            .filter(|e| e.pinned)
            .map(|e| e.bytes)
            .sum();
        let room = self.budget.saturating_sub(pinned);
        if bytes > room {
            return (Inserted::TooLarge { bytes, room }, Some(value));
        }
        let mut candidates: Vec<(u64, Digest, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.pinned && e.users == 0)
            .map(|(d, e)| (e.last_used, *d, e.bytes))
            .collect();
        candidates.sort();
        let mut free = self.budget - self.used.min(self.budget);
        let mut evict = Vec::new();
        for (_, d, b) in candidates {
            if free >= bytes {
                break;
            }
            free += b;
            evict.push(d);
        }
        if free < bytes {
            return (Inserted::NoRoomNow, Some(value));
        }
        for d in &evict {
            if let Some(e) = self.entries.remove(d) {
                self.used -= e.bytes;
            }
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.insert(
            digest,
            Entry {
                value,
                bytes,
                last_used: self.clock,
                pinned: false,
                users: 0,
            },
        );
        (Inserted::Resident { evicted: evict }, None)
    }

    /// Drops an adapter nobody uses (a deleted one); false when pinned or in use.
    pub fn remove(&mut self, digest: &Digest) -> bool {
        match self.entries.get(digest) {
            Some(e) if e.pinned || e.users > 0 => false,
            Some(_) => {
                if let Some(e) = self.entries.remove(digest) {
                    self.used -= e.bytes;
                }
                true
            }
            None => true,
        }
    }

    /// Every resident adapter, most recently used first.
    pub fn resident(&self) -> Vec<Resident> {
        let mut all: Vec<(&Digest, &Entry<V>)> = self.entries.iter().collect();
        all.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_used));
        all.into_iter()
            .map(|(d, e)| Resident {
                digest: *d,
                bytes: e.bytes,
                pinned: e.pinned,
                users: e.users,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    #[test]
    fn the_least_recently_used_idle_adapter_is_evicted_first() {
        let mut c = AdapterCache::new(300);
        for n in 1..=3 {
            assert_eq!(
                c.insert(d(n), n, 100).0,
                Inserted::Resident { evicted: vec![] }
            );
        }
        // 1 used again: 2 is now the least recent.
        assert!(c.acquire(&d(1)));
        c.release(&d(1));
        assert_eq!(
            c.insert(d(4), 4, 100).0,
            Inserted::Resident {
                evicted: vec![d(2)]
            }
        );
        assert!(!c.contains(&d(2)) && c.contains(&d(1)));
        assert_eq!(c.used(), 300);
    }

    #[test]
    fn pinned_and_in_use_adapters_are_never_evicted() {
        let mut c = AdapterCache::new(200);
        c.insert(d(1), 1, 100);
        c.insert(d(2), 2, 100);
        assert!(c.set_pinned(&d(1), true));
        assert!(c.acquire(&d(2)));
        assert_eq!(c.insert(d(3), 3, 100).0, Inserted::NoRoomNow);
        assert_eq!(c.used(), 200);
        c.release(&d(2));
        assert_eq!(
            c.insert(d(3), 3, 100).0,
            Inserted::Resident {
                evicted: vec![d(2)]
            }
        );
        // Larger than what the pinned adapter leaves: never fits.
        assert_eq!(
            c.insert(d(4), 4, 150).0,
            Inserted::TooLarge {
                bytes: 150,
                room: 100
            }
        );
        assert!(!c.remove(&d(1)), "pinned");
        c.set_pinned(&d(1), false);
        assert!(c.remove(&d(1)));
        assert_eq!(c.used(), 100);
    }
}
