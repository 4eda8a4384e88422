//! The pure decisions of a training run: how many steps, which examples each micro-batch of
//! a step holds, when to checkpoint, and the fixed-order reduction of micro-batch results.
//! No I/O, no clock: every caller (the CLI, the worker's executor, the coordinator's
//! data-parallel loop) asks these functions, so a run is the same however it is spread.

use std::collections::BTreeMap;

use crate::data::permutation;
use crate::error::ModelError;

/// How long a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steps {
    /// Exactly this many optimizer steps.
    Fixed(u64),
    /// This many passes over the data: each pass is `ceil(examples / step_batch)` steps.
    Epochs(u64),
}

/// `len` consecutive positions of the global example order, from `start`: one micro-batch.
/// Positions run on across steps and epochs; [`ExampleOrder::index`] maps a position to an
/// example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicroRange {
    /// The micro-batch's index within its step (the reduction order).
    pub index: u32,
    /// First position.
    pub start: u64,
    /// Number of examples.
    pub len: u32,
}

fn plan_err(field: &str, reason: String) -> ModelError {
    ModelError::config("training plan", field, reason)
}

/// A run's shape: dataset size, batching, length, checkpoint cadence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPlan {
    /// Examples in one epoch.
    pub examples: u64,
    /// Examples per micro-batch.
    pub micro_batch_size: u32,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub micro_batches: u32,
    /// Optimizer steps in the run.
    pub total_steps: u64,
    /// Save a checkpoint after every this many steps (never after the last one: the run's
    /// end is exported instead).
    pub checkpoint_every: Option<u64>,
    /// Evaluate the held-out loss before the first step and after the last.
    pub eval: bool,
}

impl RunPlan {
    /// A plan; every product is checked, and errors name the field.
    pub fn new(
        examples: u64,
        micro_batch_size: u32,
        micro_batches: u32,
        steps: Steps,
    ) -> Result<Self, ModelError> {
        if examples == 0 {
            return Err(plan_err("examples", "the dataset has no examples".into()));
        }
        if micro_batch_size == 0 {
            return Err(plan_err("batch_size", "must be at least 1".into()));
        }
        if micro_batches == 0 {
            return Err(plan_err("grad_accum", "must be at least 1".into()));
        }
        let step_batch = u64::from(micro_batch_size) * u64::from(micro_batches);
        let total_steps = match steps {
            Steps::Fixed(s) => s,
            Steps::Epochs(e) => examples
                .div_ceil(step_batch)
                .max(1)
                .checked_mul(e)
                .ok_or_else(|| {
                    plan_err(
                        "epochs",
                        format!("{e} epochs of {examples} examples overflow the step count"),
                    )
                })?,
        };
        if total_steps == 0 {
            return Err(plan_err("steps", "the run has 0 steps".into()));
        }
        // The last position must fit in u64 (a hostile step count cannot wrap around).
        total_steps.checked_mul(step_batch).ok_or_else(|| {
            plan_err(
                "steps",
                format!("{total_steps} steps of {step_batch} examples overflow"),
            )
        })?;
        Ok(Self {
            examples,
            micro_batch_size,
            micro_batches,
            total_steps,
            checkpoint_every: None,
            eval: false,
        })
    }

    /// Examples per optimizer step.
    pub fn step_batch(&self) -> u64 {
        u64::from(self.micro_batch_size) * u64::from(self.micro_batches)
    }

    /// The micro-batches of `step` (0-based), in reduction order.
    pub fn micro_batches(&self, step: u64) -> Vec<MicroRange> {
        micro_ranges(step, self.micro_batch_size, self.micro_batches)
    }

    /// Whether a checkpoint is due after `done` completed steps.
    pub fn checkpoint_due(&self, done: u64) -> bool {
        match self.checkpoint_every {
            Some(n) if n > 0 => done.is_multiple_of(n) && done < self.total_steps,
            _ => false,
        }
    }
}

/// The micro-batches of `step` for a run cut into `micro_batches` micro-batches of
/// `micro_batch_size` examples (positions saturate rather than wrap on absurd input;
/// [`RunPlan::new`] refuses such runs up front).
pub fn micro_ranges(step: u64, micro_batch_size: u32, micro_batches: u32) -> Vec<MicroRange> {
    let mb = u64::from(micro_batch_size);
    let base = step.saturating_mul(mb.saturating_mul(u64::from(micro_batches)));
    (0..micro_batches)
        .map(|i| MicroRange {
            index: i,
            start: base.saturating_add(u64::from(i).saturating_mul(mb)),
            len: micro_batch_size,
        })
        .collect()
}

/// The global example order: position `p` is example `perm_e[p mod n]` of epoch
/// `e = p div n`, with `perm_e = permutation(n, seed + e)`.
#[derive(Debug, Clone)]
pub struct ExampleOrder {
    n: u64,
    seed: u64,
    perms: BTreeMap<u64, Vec<usize>>,
}

/// Epoch permutations kept in memory at once.
const KEPT_PERMUTATIONS: usize = 4;

impl ExampleOrder {
    /// The order over `n` examples.
    pub fn new(n: u64, seed: u64) -> Result<Self, ModelError> {
        if n == 0 {
            return Err(plan_err("examples", "the dataset has no examples".into()));
        }
        usize::try_from(n).map_err(|_| plan_err("examples", format!("{n} is too many")))?;
        Ok(Self {
            n,
            seed,
            perms: BTreeMap::new(),
        })
    }

    /// The example at position `pos`.
    pub fn index(&mut self, pos: u64) -> usize {
        let epoch = pos / self.n;
        if !self.perms.contains_key(&epoch) && self.perms.len() >= KEPT_PERMUTATIONS {
            self.perms.pop_first();
        }
        let (n, seed) = (self.n as usize, self.seed.wrapping_add(epoch));
        let perm = self
            .perms
            .entry(epoch)
            .or_insert_with(|| permutation(n, seed));
        perm.get((pos % self.n) as usize).copied().unwrap_or(0)
    }

    /// The examples of one micro-batch.
    pub fn micro_batch(&mut self, r: &MicroRange) -> Vec<usize> {
        (0..u64::from(r.len))
            .map(|k| self.index(r.start.saturating_add(k)))
            .collect()
    }
}

/// One micro-batch's result: the gradient of its *summed* loss, flat, in the adapter's
/// canonical order.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub index: u32,
    /// Summed loss over the micro-batch.
    pub loss_sum: f64,
    /// Supervised tokens.
    pub tokens: u64,
    /// Gradient of the summed loss.
    pub grads: Vec<f32>,
}

/// A reduced step.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduced {
    /// Sum of the micro-batch gradients, in index order.
    pub grads: Vec<f32>,
    /// Mean loss per token over the step.
    pub loss: f32,
    /// Sum of the summed losses.
    pub loss_sum: f64,
    pub tokens: u64,
}

/// Why a set of contributions cannot be reduced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReduceError {
    #[error("micro-batch {0} is missing")]
    Missing(u32),
    #[error("micro-batch {0} was contributed twice")]
    Duplicate(u32),
    #[error("micro-batch {index} has {len} gradient values, expected {expected}")]
    Length {
        index: u32,
        len: usize,
        expected: usize,
    },
    #[error("nothing to reduce")]
    Empty,
    #[error("the step's token count overflows")]
    Overflow,
}

/// Reduces exactly the micro-batches `0..expected`, in index order, whatever order they
/// came in: the update is bit-identical for any number of workers.
pub fn reduce_in_order(
    mut parts: Vec<Contribution>,
    expected: u32,
) -> Result<Reduced, ReduceError> {
    if expected == 0 {
        return Err(ReduceError::Empty);
    }
    parts.sort_by_key(|c| c.index);
    for pair in parts.windows(2) {
        if let [a, b] = pair
            && a.index == b.index
        {
            return Err(ReduceError::Duplicate(b.index));
        }
    }
    for i in 0..expected {
        if parts.get(i as usize).map(|c| c.index) != Some(i) {
            return Err(ReduceError::Missing(i));
        }
    }
    if let Some(extra) = parts.get(expected as usize) {
        return Err(ReduceError::Duplicate(extra.index));
    }
    let len = parts.first().map_or(0, |c| c.grads.len());
    let mut grads = vec![0f32; len];
    let mut loss_sum = 0f64;
    let mut tokens = 0u64;
    for c in &parts {
        if c.grads.len() != len {
            return Err(ReduceError::Length {
                index: c.index,
                len: c.grads.len(),
                expected: len,
            });
        }
        for (acc, g) in grads.iter_mut().zip(&c.grads) {
            *acc += g;
        }
        loss_sum += c.loss_sum;
        tokens = tokens.checked_add(c.tokens).ok_or(ReduceError::Overflow)?;
    }
    let loss = if tokens > 0 {
        (loss_sum / tokens as f64) as f32
    } else {
        0.0
    };
    Ok(Reduced {
        grads,
        loss,
        loss_sum,
        tokens,
    })
}

/// A run's progress after a step, as `job status` and the CLI's progress line show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunProgress {
    /// Steps completed.
    pub step: u64,
    pub total_steps: u64,
    /// The last step's mean loss.
    pub loss: Option<f32>,
    /// Supervised tokens trained since this run (or resumption) started.
    pub tokens: u64,
    pub tokens_per_sec: f64,
    pub eta_secs: Option<f64>,
}

/// Progress after `step` steps (of `total`) that took `elapsed_secs` and saw `tokens`
/// tokens since this run started at `start_step`.
pub fn progress(
    step: u64,
    total: u64,
    start_step: u64,
    loss: Option<f32>,
    tokens: u64,
    elapsed_secs: f64,
) -> RunProgress {
    let done = step.saturating_sub(start_step);
    let (tps, eta) = if elapsed_secs > 0.0 && done > 0 {
        let per_step = elapsed_secs / done as f64;
        (
            tokens as f64 / elapsed_secs,
            Some(per_step * total.saturating_sub(step) as f64),
        )
    } else {
        (0.0, None)
    };
    RunProgress {
        step,
        total_steps: total,
        loss,
        tokens,
        tokens_per_sec: tps,
        eta_secs: eta,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_each_pass_up_and_overflow_is_refused() {
        let p = RunPlan::new(10, 2, 2, Steps::Epochs(3)).unwrap();
        assert_eq!(p.total_steps, 9);
        let err = RunPlan::new(10, 2, 2, Steps::Epochs(u64::MAX)).unwrap_err();
        assert!(err.to_string().contains("epochs"), "{err}");
        let err = RunPlan::new(10, u32::MAX, u32::MAX, Steps::Fixed(u64::MAX)).unwrap_err();
        assert!(err.to_string().contains("steps"), "{err}");
        assert!(RunPlan::new(0, 1, 1, Steps::Fixed(1)).is_err());
    }

    #[test]
    fn micro_batches_tile_positions_and_checkpoints_skip_the_end() {
        let mut p = RunPlan::new(5, 3, 2, Steps::Fixed(4)).unwrap();
        p.checkpoint_every = Some(2);
        let m = p.micro_batches(1);
        assert_eq!(
            m,
            vec![
                MicroRange {
                    index: 0,
                    start: 6,
                    len: 3
                },
                MicroRange {
                    index: 1,
                    start: 9,
                    len: 3
                }
            ]
        );
        assert!(p.checkpoint_due(2));
        assert!(!p.checkpoint_due(3));
        assert!(
            !p.checkpoint_due(4),
            "the end is exported, not checkpointed"
        );
    }

    #[test]
    fn each_epoch_is_a_permutation() {
        let mut o = ExampleOrder::new(7, 3).unwrap();
        for epoch in 0..6u64 {
            let mut seen: Vec<usize> = (0..7).map(|k| o.index(epoch * 7 + k)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..7).collect::<Vec<_>>());
        }
        // Revisiting an evicted epoch gives the same order.
        let a = o.index(2);
        for e in 10..20 {
            o.index(e * 7);
        }
        assert_eq!(o.index(2), a);
    }

    #[test]
    fn reduction_is_in_index_order_and_checks_the_set() {
        let c = |index, g: f32| Contribution {
            index,
            loss_sum: 1.0,
            tokens: 2,
            grads: vec![g],
        };
        let r = reduce_in_order(vec![c(1, 2.0), c(0, 1.0)], 2).unwrap();
        assert_eq!(r.grads, vec![3.0]);
        assert_eq!(r.tokens, 4);
        assert_eq!(r.loss, 0.5);
        assert_eq!(
            reduce_in_order(vec![c(0, 1.0)], 2),
            Err(ReduceError::Missing(1))
        );
        assert_eq!(
            reduce_in_order(vec![c(0, 1.0), c(0, 1.0)], 1),
            Err(ReduceError::Duplicate(0))
        );
        let mut big = c(1, 1.0);
        big.tokens = u64::MAX;
        assert_eq!(
            reduce_in_order(vec![c(0, 1.0), big], 2),
            Err(ReduceError::Overflow)
        );
    }
}
