//! Tokenizing planted rows and training the one adapter on their union, keeping the
//! adapter at K evenly spaced checkpoints with the learning rate each stands for.
// Planted sets may be read from JSONL made elsewhere: index only through `get`.
#![deny(clippy::indexing_slicing)]

use std::time::Instant;

use crate::data::{BatchPlan, DataOptions, parse_jsonl};
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::features::CheckpointAdapter;
use crate::lora::{LoraConfig, TargetModule};
use crate::tokenizer::Tokenizer;
use crate::train::{Schedule, TrainConfig, TrainExample, Trainer};

use super::BenchOptions;
use super::planted::PlantedRow;

/// Tokenizes `(prompt, completion)` pairs exactly as `model finetune` reads a
/// prompt/completion JSONL file (prompt masked, completion and eos trained).
pub fn tokenize(
    pairs: &[(&str, &str)],
    tokenizer: &Tokenizer,
    max_seq_len: usize,
    eos: Option<u32>,
) -> Result<Vec<TrainExample>, ModelError> {
    let mut text = String::new();
    for (p, c) in pairs {
        let line = serde_json::json!({ "prompt": p, "completion": c });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let opts = DataOptions {
        max_seq_len,
        eos_token_id: eos,
    };
    let ds = parse_jsonl(&text, "planted data", tokenizer, &opts)
        .map_err(|e| ModelError::Input(e.to_string()))?;
    Ok(ds.examples.into_iter().map(|e| e.example).collect())
}

/// The rows as training examples.
pub fn tokenize_rows(
    rows: &[PlantedRow],
    tokenizer: &Tokenizer,
    opts: &BenchOptions,
    eos: Option<u32>,
) -> Result<Vec<TrainExample>, ModelError> {
    let pairs: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.prompt.as_str(), r.completion.as_str()))
        .collect();
    tokenize(&pairs, tokenizer, opts.max_seq_len, eos)
}

/// A trained adapter's checkpoints and what training cost.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The adapters the index is built from: the base-gradient one (the final adapter with
    /// B zeroed) first when asked for, the adapter before training, then the trained
    /// snapshots.
    pub checkpoints: Vec<CheckpointAdapter>,
    /// The trained adapter, as served.
    pub final_adapter: crate::lora::LoraAdapter,
    /// Optimizer steps.
    pub steps: u64,
    /// Seconds in training steps.
    pub seconds: f64,
    /// Final training loss.
    pub final_loss: f32,
}

/// Trains one adapter on `examples` (LoRA on all seven projections, AdamW, linear decay),
/// as `tributary model finetune` does.
pub fn train(
    model: &CausalLm,
    examples: &[TrainExample],
    opts: &BenchOptions,
) -> Result<Trained, ModelError> {
    let mut lora = LoraConfig::new(opts.rank, opts.alpha, &TargetModule::ALL);
    lora.lora_dropout = 0.0;
    let plan = BatchPlan::new(examples.len(), opts.batch_size, 1, opts.seed)
        .map_err(|e| ModelError::Input(e.to_string()))?;
    let steps = plan.steps_for_epochs(opts.epochs) as u64;
    let cfg = TrainConfig {
        lr: opts.lr,
        schedule: Schedule::Linear,
        total_steps: steps,
        batch_size: opts.batch_size,
        seed: opts.seed,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, lora, cfg.clone())?;
    let k = opts.checkpoints.min(steps as usize) as u64;
    let marks: Vec<u64> = (1..=k).map(|i| (i * steps).div_ceil(k)).collect();
    let mut checkpoints = Vec::new();
    if opts.initial_checkpoint {
        // The adapter before any step (B = 0): its gradients are the base model's, seen
        // through the random A. It stands for the steps up to the first mark (lr set below).
        checkpoints.push(CheckpointAdapter {
            step: 0,
            lr: 0.0,
            adapter: trainer.adapter(),
        });
    }
    let (mut seconds, mut lr_sum, mut lr_total, mut final_loss) = (0.0, 0.0, 0.0, f32::NAN);
    for step in 0..steps {
        let micro = plan
            .step(step as usize)
            .iter()
            .map(|m| {
                m.iter()
                    .map(|&i| {
                        examples.get(i).cloned().ok_or_else(|| {
                            ModelError::Input(format!("the batch plan names example {i}"))
                        })
                    })
                    .collect::<Result<Vec<TrainExample>, ModelError>>()
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let t0 = Instant::now();
        let stats = trainer.train_step(&micro)?;
        seconds += t0.elapsed().as_secs_f64();
        lr_sum += stats.lr;
        lr_total += stats.lr;
        final_loss = stats.loss;
        if marks.contains(&stats.step) {
            if let Some(first) = checkpoints
                .first_mut()
                .filter(|c| c.step == 0 && c.lr == 0.0)
            {
                first.lr = lr_sum;
            }
            checkpoints.push(CheckpointAdapter {
                step: stats.step,
                lr: lr_sum,
                adapter: trainer.adapter(),
            });
            lr_sum = 0.0;
        }
    }
    let final_adapter = trainer.adapter();
    if let Some(first) = checkpoints
        .first_mut()
        .filter(|c| c.step == 0 && c.lr == 0.0)
    {
        first.lr = lr_total;
    }
    if opts.base_gradient {
        // The trained A with B = 0 (crate::features, "base-gradient features"), first.
        let ck = CheckpointAdapter {
            step: steps,
            lr: lr_total,
            adapter: final_adapter.with_zero_b(),
        };
        checkpoints.insert(0, ck);
    }
    if checkpoints.is_empty() {
        return Err(ModelError::Input(
            "nothing to index: no base-gradient features and no checkpoints".into(),
        ));
    }
    Ok(Trained {
        checkpoints,
        final_adapter,
        steps,
        seconds,
        final_loss,
    })
}
