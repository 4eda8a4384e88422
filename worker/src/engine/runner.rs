//! The engine loop, on its own thread: takes commands (new requests, loaded adapters,
//! pins), drops cancelled requests, asks the [`Scheduler`] for the next step, runs it
//! through [`CausalLm::forward_paged`] with each sequence's adapter, samples, and streams
//! what became final. The scheduling decisions are the scheduler's; this is the thin loop
//! that carries them out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tributary_model::decoder::{CausalLm, PagedKvCache, SeqChunk};
use tributary_model::error::ModelError;
use tributary_model::lora::LoraAdapter;
use tributary_model::tokenizer::Tokenizer;
use tributary_protocol::ids::Digest;
use tributary_protocol::inference::{InferenceError, InferenceEvent, ModelChoice};

use super::adapter_cache::AdapterCache;
use super::choice::{Choice, ChoiceParams};
use super::loader::Loaded;
use super::metrics as m;
use super::scheduler::{Scheduler, SchedulerConfig, SeqId, Step, block_hashes};
use super::{EngineConfig, EngineStatus, InFlight};

#[path = "residency.rs"]
mod residency;

/// What the loop is told.
pub(crate) enum Command {
    Submit(Box<Submitted>),
    Loaded(Digest, Result<Loaded, InferenceError>),
    Pin(Digest, bool),
    Evict(Digest),
    Shutdown,
}

/// An admitted request, tokenized.
pub(crate) struct Submitted {
    pub request_id: String,
    pub model: ModelChoice,
    pub prompt: Vec<u32>,
    pub n: u32,
    pub params: ChoiceParams,
    pub events: mpsc::Sender<InferenceEvent>,
    pub guard: InFlight,
}

struct Request {
    id: String,
    model: ModelChoice,
    events: mpsc::Sender<InferenceEvent>,
    choices: Vec<Choice>,
    prompt_tokens: u32,
    started: bool,
    /// Whether it holds a use of its adapter in the cache (always true for the base).
    ready: bool,
    _guard: InFlight,
}

pub(crate) struct Runner {
    model: CausalLm,
    tokenizer: Arc<Tokenizer>,
    kv: PagedKvCache,
    sched: Scheduler,
    requests: HashMap<u64, Request>,
    /// Each sequence's request and choice.
    owner: HashMap<SeqId, (u64, usize)>,
    next_id: u64,
    cache: AdapterCache<Arc<LoraAdapter>>,
    loading: HashSet<Digest>,
    /// Loaded adapters waiting for room (every resident one is in use or pinned).
    parked: HashMap<Digest, Loaded>,
    /// Pins asked for adapters not resident yet.
    pins: HashSet<Digest>,
    /// Adapters to drop as soon as no request uses them (deleted while in use).
    doomed: HashSet<Digest>,
    commands: Receiver<Command>,
    load_tx: SyncSender<Digest>,
    load_backlog: VecDeque<Digest>,
    status: Arc<Mutex<EngineStatus>>,
    worker: String,
    steps: u64,
    peak_batch: usize,
    peak_blocks: usize,
    prefix_caching: bool,
    /// Prefix-cache hits already counted in the metric.
    hits_counted: u64,
}

impl Runner {
    pub(crate) fn new(
        model: CausalLm,
        tokenizer: Arc<Tokenizer>,
        config: &EngineConfig,
        blocks: usize,
        commands: Receiver<Command>,
        load_tx: SyncSender<Digest>,
        status: Arc<Mutex<EngineStatus>>,
    ) -> Result<Self, ModelError> {
        let kv = PagedKvCache::new(model.config(), config.kv_block_size, blocks)?;
        let sched = Scheduler::new(SchedulerConfig {
            token_budget: config.max_batch_tokens,
            max_running: config.max_batch_seqs,
            block_size: config.kv_block_size,
            blocks,
        });
        Ok(Self {
            model,
            tokenizer,
            kv,
            sched,
            requests: HashMap::new(),
            owner: HashMap::new(),
            next_id: 0,
            cache: AdapterCache::new(config.adapter_cache_bytes),
            loading: HashSet::new(),
            parked: HashMap::new(),
            pins: HashSet::new(),
            doomed: HashSet::new(),
            commands,
            load_tx,
            load_backlog: VecDeque::new(),
            status,
            worker: config.worker_name.clone(),
            steps: 0,
            peak_batch: 0,
            peak_blocks: 0,
            prefix_caching: config.prefix_caching,
            hits_counted: 0,
        })
    }

    /// Runs until told to stop or the engine is dropped.
    pub(crate) fn run(mut self) {
        loop {
            // Nothing scheduled: only a command can change that (a request, a loaded
            // adapter, a pin), so wait for one.
            if self.sched.is_idle() {
                match self.commands.recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut open = true;
            loop {
                match self.commands.try_recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            open = false;
                            break;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !open {
                break;
            }
            self.flush_loads();
            self.retry_parked();
            self.drop_cancelled();
            let ran = self.step();
            self.publish();
            if !ran && !self.sched.is_idle() {
                // Everything scheduled waits for an adapter (or a parked one for room):
                // wait for the loader, but not past the next look at cancellations.
                match self.commands.recv_timeout(Duration::from_millis(20)) {
                    Ok(c) => {
                        if !self.handle(c) {
                            break;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        let keys: Vec<u64> = self.requests.keys().copied().collect();
        for k in keys {
            self.fail(
                k,
                InferenceError::Unavailable("the engine is shutting down".into()),
            );
        }
        self.publish();
    }

    /// Handles one command; false to stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(s) => self.submit(*s),
            Command::Loaded(d, r) => self.loaded(d, r),
            Command::Pin(d, pin) => {
                if pin {
                    if !self.cache.set_pinned(&d, true) {
                        self.pins.insert(d);
                        self.request_load(d);
                    }
                } else {
                    self.pins.remove(&d);
                    self.cache.set_pinned(&d, false);
                    if self.doomed.contains(&d) && self.drop_adapter(d) {
                        self.doomed.remove(&d);
                    }
                }
            }
            Command::Evict(d) => {
                self.parked.remove(&d);
                if self.cache.contains(&d) && !self.drop_adapter(d) {
                    self.doomed.insert(d);
                }
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn submit(&mut self, s: Submitted) {
        let key = self.next_id;
        self.next_id += 1;
        let mut choices = Vec::with_capacity(s.n as usize);
        for i in 0..s.n {
            let seq = self.next_id;
            self.next_id += 1;
            match Choice::new(i, seq, s.prompt.clone(), &s.params) {
                Ok(c) => choices.push(c),
                Err(e) => {
                    let _ = s
                        .events
                        .try_send(InferenceEvent::Failed(InferenceError::Invalid {
                            field: "temperature".into(),
                            message: e,
                        }));
                    return;
                }
            }
        }
        let ready = match s.model {
            ModelChoice::Base => true,
            ModelChoice::Adapter(d) => {
                if self.cache.acquire(&d) {
                    m::ADAPTER_HITS.inc();
                    self.doomed.remove(&d);
                    true
                } else {
                    m::ADAPTER_MISSES.inc();
                    self.request_load(d);
                    false
                }
            }
        };
        let limit = s.prompt.len() + s.params.max_tokens;
        // The keys and values of a prompt depend on its tokens and the adapter.
        let hashes = if self.prefix_caching {
            let salt = match s.model {
                ModelChoice::Base => [0u8; 32],
                ModelChoice::Adapter(d) => d.0,
            };
            block_hashes(&salt, &s.prompt, self.sched.config().block_size)
        } else {
            Vec::new()
        };
        for (i, c) in choices.iter().enumerate() {
            let added = self
                .sched
                .add_with_prefix(c.seq, s.prompt.len(), limit, hashes.clone());
            if let Err(e) = added {
                for done in choices.iter().take(i) {
                    self.sched.remove(done.seq);
                }
                let _ = s
                    .events
                    .try_send(InferenceEvent::Failed(InferenceError::Internal(
                        e.to_string(),
                    )));
                if ready && let ModelChoice::Adapter(d) = s.model {
                    self.cache.release(&d);
                }
                return;
            }
            self.owner.insert(c.seq, (key, i));
        }
        tracing::debug!(request = %s.request_id, prompt = s.prompt.len(), n = s.n, "admitted");
        self.requests.insert(
            key,
            Request {
                id: s.request_id,
                model: s.model,
                events: s.events,
                prompt_tokens: s.prompt.len().min(u32::MAX as usize) as u32,
                choices,
                started: false,
                ready,
                _guard: s.guard,
            },
        );
    }

    /// Ends a request with `Failed`.
    fn fail(&mut self, key: u64, e: InferenceError) {
        if let Some(r) = self.requests.get(&key) {
            let _ = r.events.try_send(InferenceEvent::Failed(e));
        }
        self.finish(key);
    }

    /// Forgets a request: its sequences leave the scheduler (their blocks are freed) and
    /// its adapter use is released.
    fn finish(&mut self, key: u64) {
        let Some(r) = self.requests.remove(&key) else {
            return;
        };
        for c in &r.choices {
            self.sched.remove(c.seq);
            self.owner.remove(&c.seq);
        }
        if r.ready
            && let ModelChoice::Adapter(d) = r.model
        {
            self.cache.release(&d);
            if self.doomed.contains(&d) && self.drop_adapter(d) {
                self.doomed.remove(&d);
            }
        }
    }

    /// Drops requests whose stream receiver is gone (the client went away).
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.events.is_closed())
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(r) = self.requests.get(&k) {
                tracing::debug!(request = %r.id, "cancelled");
            }
            self.finish(k);
        }
    }

    /// Plans and runs one step; false when nothing could run.
    #[allow(clippy::disallowed_methods)] // measures step time
    fn step(&mut self) -> bool {
        let step = {
            let (requests, owner) = (&self.requests, &self.owner);
            self.sched.schedule(&|seq| {
                owner
                    .get(&seq)
                    .and_then(|(k, _)| requests.get(k))
                    .is_some_and(|r| r.ready)
            })
        };
        m::PREEMPTIONS.inc_by(step.preempted.len() as u64);
        m::BATCH_SIZE.set(step.chunks.len() as i64);
        if step.chunks.is_empty() {
            return false;
        }
        self.steps += 1;
        self.peak_batch = self.peak_batch.max(step.chunks.len());
        self.peak_blocks = self.peak_blocks.max(self.sched.used_blocks());
        let started = std::time::Instant::now();
        match self.forward(&step) {
            Ok(logits) => {
                self.sample(&step, logits);
                m::STEP_SECONDS.observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::error!(error = %e, "engine step failed");
                // Blocks this step should have filled may hold anything.
                self.sched.forget_prefixes();
                let keys: HashSet<u64> = step
                    .chunks
                    .iter()
                    .filter_map(|c| self.owner.get(&c.seq).map(|(k, _)| *k))
                    .collect();
                for k in keys {
                    self.fail(k, InferenceError::Internal(e.to_string()));
                }
            }
        }
        true
    }

    fn forward(&mut self, step: &Step) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut digests: Vec<Digest> = Vec::new();
        let mut chunks = Vec::with_capacity(step.chunks.len());
        for c in &step.chunks {
            let (key, ci) =
                self.owner.get(&c.seq).copied().ok_or_else(|| {
                    ModelError::Input(format!("sequence {} has no request", c.seq))
                })?;
            let r = self
                .requests
                .get(&key)
                .ok_or_else(|| ModelError::Input(format!("request of sequence {}", c.seq)))?;
            let adapter = match r.model {
                ModelChoice::Base => None,
                ModelChoice::Adapter(d) => Some(match digests.iter().position(|x| *x == d) {
                    Some(i) => i,
                    None => {
                        digests.push(d);
                        digests.len() - 1
                    }
                }),
            };
            let tokens = r
                .choices
                .get(ci)
                .and_then(|choice| choice.tokens.get(c.start..c.start + c.len))
                .ok_or_else(|| ModelError::Input(format!("sequence {} tokens", c.seq)))?;
            chunks.push(SeqChunk {
                tokens,
                past: c.start,
                blocks: self.sched.blocks(c.seq),
                adapter,
                logits: c.sample,
            });
        }
        let adapters: Vec<&LoraAdapter> = digests
            .iter()
            .map(|d| {
                self.cache
                    .peek(d)
                    .map(|a| a.as_ref())
                    .ok_or_else(|| ModelError::Input(format!("adapter {d} is not resident")))
            })
            .collect::<Result<_, _>>()?;
        // A fault in the model code fails this step's requests, not the engine.
        let (model, kv) = (&self.model, &mut self.kv);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.forward_paged(&chunks, &adapters, kv)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(ModelError::Input(format!(
                "the model step panicked: {what}"
            )))
        })
    }

    fn sample(&mut self, step: &Step, logits: Vec<Vec<f32>>) {
        let mut logits = logits.into_iter();
        let mut done: Vec<u64> = Vec::new();
        let mut failed: Vec<(u64, InferenceError)> = Vec::new();
        for c in step.chunks.iter().filter(|c| c.sample) {
            let Some(mut row) = logits.next() else { break };
            let Some(&(key, ci)) = self.owner.get(&c.seq) else {
                continue;
            };
            let Some(r) = self.requests.get_mut(&key) else {
                continue;
            };
            let mut sent = true;
            if !r.started {
                r.started = true;
                sent &= r
                    .events
                    .try_send(InferenceEvent::Started {
                        prompt_tokens: r.prompt_tokens,
                    })
                    .is_ok();
            }
            let Some(choice) = r.choices.get_mut(ci) else {
                continue;
            };
            match choice.on_logits(&mut row, &self.tokenizer) {
                Ok(e) => {
                    for ev in [e.text, e.finished].into_iter().flatten() {
                        sent &= r.events.try_send(ev).is_ok();
                    }
                }
                Err(e) => failed.push((key, InferenceError::Internal(e))),
            }
            if choice.finished {
                self.sched.remove(c.seq);
                self.owner.remove(&c.seq);
                if r.choices.iter().all(|c| c.finished) {
                    done.push(key);
                }
            } else {
                self.sched.append_token(c.seq);
            }
            if !sent {
                done.push(key);
            }
        }
        for (k, e) in failed {
            self.fail(k, e);
        }
        for k in done {
            self.finish(k);
        }
    }

    /// Publishes the status and gauges.
    fn publish(&mut self) {
        let hits = self.sched.prefix_hit_tokens();
        m::PREFIX_HIT_TOKENS.inc_by(hits - self.hits_counted);
        self.hits_counted = hits;
        let used = self.sched.used_blocks();
        let blocks = self.sched.config().blocks;
        m::KV_CACHE_USAGE.set(used as f64 / blocks.max(1) as f64);
        let queued = self.sched.waiting();
        m::QUEUE_DEPTH.set(queued as i64);
        if let Ok(mut s) = self.status.lock() {
            s.resident = self.cache.resident();
            s.queued = queued;
            s.running = self.sched.running();
            s.kv_blocks_used = used;
            s.kv_blocks = blocks;
            s.steps = self.steps;
            s.peak_batch = self.peak_batch;
            s.kv_blocks_peak = self.peak_blocks;
            s.prefix_hit_tokens = hits;
        }
    }
}
