//! A persistent decode pool: the calling thread plus `available cores − 1` helper threads
//! (at most [`MAX_HELPERS`]) share the parts of one kernel call, without a hand-off per call.
//!
//! A decode step makes ~60 kernel calls of 10–50 µs each. Waking a sleeping thread for each
//! (rayon's injection, a futex wake) cost more than the second core gave, so here the helpers
//! *spin* on one atomic word for a while after each job ([`spin_time`], default
//! [`DEFAULT_SPIN_US`] µs, `TRIBUTARY_POOL_SPIN_US` overrides it; the first [`PURE_SPIN`]
//! without yielding the core) and only then park. A call
//! publishes its job with one atomic store, and the parts are claimed one at a time from that
//! word by whoever is free, the caller included: a helper that is parked or late simply
//! finds fewer parts (or none) left, so the caller never waits for a wake-up, only for parts
//! a helper has already started.
//!
//! Correctness rules:
//! - a caller that waited [`STALL`] for a helper's part (a helper that lost its core on a
//!   loaded machine) makes the calls of the next [`BACKOFF`] (longer after repeated stalls)
//!   run serially;
//! - one job at a time: a call made while the pool is busy (another thread's call, or a call
//!   from inside a job) runs all its parts on the calling thread ([`run`] still computes
//!   everything, in the same per-part way);
//! - a part that panics is caught; the remaining parts are skipped, the caller waits for the
//!   parts in flight (they borrow its stack) and then re-raises the panic on its own thread,
//!   as the serial path would; the helper threads survive;
//! - nothing is allocated per call.
// SIMD/GEMM kernels: shapes are checked once at entry, then indexed in hot loops (the
// exception issue 12 allows). The parsers of untrusted files deny indexing.
#![allow(clippy::indexing_slicing)]
// The pool's threads spin, then park, by elapsed wall time: a scheduling heuristic no result depends on.
#![allow(clippy::disallowed_methods)]

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// Most helper threads (the pool is for a few cores' worth of memory bandwidth).
pub const MAX_HELPERS: usize = 3;

/// How long a helper spins after its last job before parking, in µs (a decode step's gaps
/// between kernel calls are a few to tens of µs; between steps, sampling and the next
/// step's first ops).
pub const DEFAULT_SPIN_US: u64 = 300;

/// Most parts of one job (the claim word holds the part count and the next part in
/// [`FIELD_BITS`] bits each, and `next` may overshoot the count by one per thread).
pub const MAX_PARTS: usize = (1 << FIELD_BITS) - 16;

/// A caller that waits this long for a helper's part (the helper lost its core to another
/// process mid-part: a kernel part takes tens of µs) makes calls run serially for a while
/// ([`BACKOFF`], doubled for each further stall within [`STALL_MEMORY`] of the previous one,
/// up to 32×), so an oversubscribed machine costs a stall now and then, not one per call.
pub const STALL: Duration = Duration::from_micros(500);

/// How long calls run serially after a first [`STALL`].
pub const BACKOFF: Duration = Duration::from_millis(20);

/// Stalls closer together than this count as one run of stalls (longer back-offs).
pub const STALL_MEMORY: Duration = Duration::from_secs(2);

/// How long (at most [`spin_time`]) a helper spins without yielding its core.
pub const PURE_SPIN: Duration = Duration::from_micros(50);

const FIELD_BITS: u32 = 24;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// One job, on the caller's stack for the duration of [`run`].
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    /// Parts finished (run, or skipped after a panic), counted once per thread per job.
    done: AtomicUsize,
    panicked: AtomicBool,
    payload: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Runs part `i` unless an earlier part panicked (then it is skipped).
    fn execute(&self, i: usize) {
        if self.panicked.load(Ordering::Relaxed) {
            return;
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
            if let Ok(mut slot) = self.payload.lock() {
                slot.get_or_insert(p);
            }
            self.panicked.store(true, Ordering::Relaxed);
        }
    }

    /// Counts `n` parts as finished. After the count the job may be gone: the thread that
    /// counts touches it no more.
    fn finish(&self, n: usize) {
        self.done.fetch_add(n, Ordering::Release);
    }
}

/// The process-wide pool.
struct Pool {
    /// Held by the thread whose job is published.
    busy: AtomicBool,
    /// `(job id, parts, next part)`, 16/24/24 bits: a part is claimed by incrementing `next`
    /// (the claim succeeds when the old `next` was below `parts`).
    claim: AtomicU64,
    /// The published [`Job`] (valid while its word has unclaimed or unfinished parts).
    job: AtomicPtr<()>,
    /// Per helper: parked (or about to park) and needing an unpark.
    sleeping: [AtomicBool; MAX_HELPERS],
    helpers: OnceLock<Vec<Thread>>,
    spin: Duration,
    /// When the pool was created (the clock of `serial_until_us`).
    start: Instant,
    /// Until this many µs after `start`, calls run serially: set after a caller waited
    /// [`STALL`] for a helper's part (a helper descheduled on a loaded machine).
    serial_until_us: AtomicU64,
    /// When the last stall was seen (µs after `start`) and how many came in a row (each
    /// less than [`STALL_MEMORY`] after the previous one).
    last_stall_us: AtomicU64,
    stalls_in_a_row: AtomicU64,
}

static POOL: OnceLock<Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    POOL.get_or_init(|| Pool {
        busy: AtomicBool::new(false),
        claim: AtomicU64::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        sleeping: [const { AtomicBool::new(false) }; MAX_HELPERS],
        helpers: OnceLock::new(),
        spin: spin_time(),
        start: Instant::now(),
        serial_until_us: AtomicU64::new(0),
        last_stall_us: AtomicU64::new(0),
        stalls_in_a_row: AtomicU64::new(0),
    })
}

/// How many helper threads the pool starts: `TRIBUTARY_DECODE_HELPERS` when set to a number
/// (0 turns the pool off), else the available cores − 1; at most [`MAX_HELPERS`].
pub fn helper_count() -> usize {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var("TRIBUTARY_DECODE_HELPERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(cores.saturating_sub(1))
        .min(MAX_HELPERS)
}

/// The helpers' spin time: `TRIBUTARY_POOL_SPIN_US` when set to a number, else
/// [`DEFAULT_SPIN_US`].
pub fn spin_time() -> Duration {
    let us = std::env::var("TRIBUTARY_POOL_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(DEFAULT_SPIN_US);
    Duration::from_micros(us)
}

fn unpack(w: u64) -> (u64, usize, usize) {
    (
        w >> (2 * FIELD_BITS),
        ((w >> FIELD_BITS) & FIELD_MASK) as usize,
        (w & FIELD_MASK) as usize,
    )
}

impl Pool {
    /// The helper threads, started on first use (none when the machine has one core or a
    /// thread cannot be spawned).
    fn helpers(&'static self) -> &'static [Thread] {
        self.helpers.get_or_init(|| {
            let mut threads = Vec::new();
            for h in 0..helper_count() {
                let spawned = thread::Builder::new()
                    .name(format!("tributary-decode-{h}"))
                    .spawn(move || self.helper_loop(h));
                match spawned {
                    Ok(handle) => threads.push(handle.thread().clone()),
                    Err(_) => break,
                }
            }
            threads
        })
    }

    /// Claims the next part of the published job, if any is left. (Each thread stops at its
    /// first failed claim, so the `next` field overshoots `parts` by at most the thread count
    /// and never reaches the other fields.)
    fn claim_part(&self) -> Option<usize> {
        let (_, parts, next) = unpack(self.claim.fetch_add(1, Ordering::AcqRel));
        (next < parts).then_some(next)
    }

    /// Makes calls serial for a while after a stall (see [`STALL`]).
    fn back_off(&self) {
        let now = self.micros();
        let previous = self.last_stall_us.swap(now, Ordering::Relaxed);
        let in_a_row = if now.saturating_sub(previous) > STALL_MEMORY.as_micros() as u64 {
            self.stalls_in_a_row.store(1, Ordering::Relaxed);
            0
        } else {
            self.stalls_in_a_row.fetch_add(1, Ordering::Relaxed)
        };
        let backoff = (BACKOFF.as_micros() as u64) << in_a_row.min(5);
        self.serial_until_us.store(now + backoff, Ordering::Relaxed);
    }

    /// µs since the pool was created.
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Whether the published job has unclaimed parts.
    fn has_work(&self) -> bool {
        let (_, parts, next) = unpack(self.claim.load(Ordering::Acquire));
        next < parts
    }

    fn helper_loop(&'static self, h: usize) {
        let mut last_job;
        loop {
            let mut spins = 0u32;
            // A job was published (the loop below ended): the pool is in use, whether or not
            // this helper gets a part of it, so the spin time restarts.
            last_job = Instant::now();
            if self.has_work()
                && let Some(first) = self.claim_part()
            {
                // SAFETY: a part was claimed from the current word, so its job is still
                // published (the caller waits until every part is counted) and the pointer
                // was stored before the word (Release/Acquire through `claim`).
                let job = unsafe { &*self.job.load(Ordering::Acquire).cast::<Job<'_>>() };
                job.execute(first);
                let mut ran = 1;
                while let Some(i) = self.claim_part() {
                    job.execute(i);
                    ran += 1;
                }
                job.finish(ran);
                last_job = Instant::now();
            }
            // Nothing to claim: spin a while (yielding the core after PURE_SPIN), then park.
            let mut idle = Duration::ZERO;
            while !self.has_work() {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(64) {
                    idle = last_job.elapsed();
                }
                if idle < PURE_SPIN {
                    std::hint::spin_loop();
                } else if idle < self.spin {
                    // Let a runnable thread of this core (burn's rayon workers between
                    // kernel calls) run first.
                    thread::yield_now();
                } else {
                    self.sleeping[h].store(true, Ordering::SeqCst);
                    if !self.has_work() {
                        thread::park();
                    }
                    self.sleeping[h].store(false, Ordering::SeqCst);
                    last_job = Instant::now();
                    idle = Duration::ZERO;
                }
            }
        }
    }
}

/// Number of threads a [`run`] can use: the caller plus the helpers.
pub fn threads() -> usize {
    1 + pool().helpers().len()
}

/// Calls `f(i)` once for every `i < parts`, on the calling thread and the pool's helpers,
/// and returns when all calls have returned. Falls back to calling them in order on this
/// thread when the pool is busy (another call is in flight, or this is a call from a job),
/// has no helpers, or `parts` is 0, 1 or above [`MAX_PARTS`]. A panic in any call is
/// re-raised here after every started call has returned.
pub fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || parts > MAX_PARTS {
        return (0..parts).for_each(f);
    }
    let pool = pool();
    let helpers = pool.helpers();
    if helpers.is_empty()
        || pool.micros() < pool.serial_until_us.load(Ordering::Relaxed)
        || pool
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return (0..parts).for_each(f);
    }
    let job = Job {
        f,
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        payload: Mutex::new(None),
    };
    pool.job.store(
        std::ptr::from_ref(&job).cast_mut().cast(),
        Ordering::Relaxed,
    );
    let (id, _, _) = unpack(pool.claim.load(Ordering::Relaxed));
    let word = ((id + 1) & 0xffff) << (2 * FIELD_BITS) | (parts as u64) << FIELD_BITS;
    pool.claim.store(word, Ordering::SeqCst);
    for (h, thread) in helpers.iter().enumerate() {
        if pool.sleeping[h].load(Ordering::SeqCst) {
            thread.unpark();
        }
    }
    let mut ran = 0;
    while let Some(i) = pool.claim_part() {
        job.execute(i);
        ran += 1;
    }
    job.finish(ran);
    // Parts claimed by helpers may still be running: they borrow `f` and `job`.
    let mut spins = 0u32;
    let mut waiting_since = None;
    while job.done.load(Ordering::Acquire) < parts {
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(1024) {
            std::hint::spin_loop();
            continue;
        }
        // A helper descheduled in the middle of a part (a loaded machine) may need this core.
        thread::yield_now();
        let since = *waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() > STALL {
            pool.back_off();
            waiting_since = Some(Instant::now());
        }
    }
    pool.job.store(std::ptr::null_mut(), Ordering::Relaxed);
    pool.busy.store(false, Ordering::Release);
    if job.panicked.load(Ordering::Relaxed) {
        let payload = job
            .payload
            .into_inner()
            .ok()
            .flatten()
            .unwrap_or_else(|| Box::new("a decode kernel part panicked"));
        resume_unwind(payload);
    }
}

/// Splits `data` into chunks of `chunk` elements (the last may be shorter) and calls
/// `f(index, chunk)` for each through [`run`].
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let chunk = chunk.max(1);
    let parts = data.len().div_ceil(chunk);
    let base = SharedMut(data.as_mut_ptr());
    let len = data.len();
    run(parts, &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: `run` calls each `i` once, so the chunks handed out are disjoint, and
        // all calls return before `data`'s borrow ends.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, part);
    });
}

/// A pointer shared with the parts of one [`run`], each of which touches a disjoint range.
pub(crate) struct SharedMut<T>(*mut T);

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedMut<T> {}

// SAFETY: only used for disjoint ranges handed out by `run`, one part each.
unsafe impl<T: Send> Sync for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(p: *mut T) -> Self {
        Self(p)
    }

    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}
