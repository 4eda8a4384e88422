//! One trained "world" (rows, adapter checkpoints, index) and the attribution of queries
//! against it, with the per-method metrics.
// Planted sets may be read from JSONL made elsewhere: index only through `get`.
#![deny(clippy::indexing_slicing)]

use std::time::Instant;

use tributary_attribution::bm25::Bm25;
use tributary_attribution::score::{Method, misfit, scores};
use tributary_attribution::shares::{Candidate, Shares, shares};
use tributary_attribution::{AttributionIndex, metrics};

use super::planted::{PlantedQuery, PlantedRow, PlantedSet};
use super::train::{Trained, tokenize, tokenize_rows, train};
use super::{BenchOptions, BenchReport, CostReport, MethodMetrics};
use crate::decoder::CausalLm;
use crate::error::ModelError;
use crate::features::{IndexCost, build_index, query_features};
use crate::generate::{GenerationParams, ModelSource, generate};
use crate::tokenizer::Tokenizer;
use crate::train::TrainExample;

/// The model and tokenizer the benchmark runs on.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// The frozen base.
    pub model: &'a CausalLm,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Appended after completions.
    pub eos: Option<u32>,
}

/// Training rows, the adapter trained on them and its index.
#[derive(Debug, Clone)]
pub struct World {
    /// The rows, in acceptance order.
    pub rows: Vec<PlantedRow>,
    /// The exact-duplicate key of each row (its normalised text).
    pub dup_keys: Vec<String>,
    /// The adapter's checkpoints.
    pub trained: Trained,
    /// The index.
    pub index: AttributionIndex,
    /// What the index cost.
    pub index_cost: IndexCost,
    /// BM25 over the rows' texts.
    pub bm25: Bm25,
    /// Cosine of the mean-centred gradient features of every pair of rows (n × n).
    pub cosine: Vec<f32>,
}

impl World {
    /// Cosine of rows `i` and `j` (0 for a row that is not in the world).
    pub fn cos(&self, i: usize, j: usize) -> f64 {
        let n = self.rows.len();
        if i >= n || j >= n {
            return 0.0;
        }
        self.cosine.get(i * n + j).copied().map_or(0.0, f64::from)
    }
}

fn normalized(r: &PlantedRow) -> String {
    let t = format!("{}\n{}", r.prompt, r.completion).to_lowercase();
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Trains on `rows` and builds the index.
pub fn build_world(
    setup: Setup<'_>,
    rows: Vec<PlantedRow>,
    opts: &BenchOptions,
) -> Result<World, ModelError> {
    let examples = tokenize_rows(&rows, setup.tokenizer, opts, setup.eos)?;
    let trained = train(setup.model, &examples, opts)?;
    tracing::info!(
        rows = rows.len(),
        steps = trained.steps,
        seconds = trained.seconds,
        loss = trained.final_loss,
        "trained"
    );
    let keyed: Vec<(String, TrainExample)> = examples
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i.to_string(), e))
        .collect();
    let provenance = serde_json::json!({
        "loss": "mean over completion tokens",
        "contributors": rows.iter().map(|r| r.contributor.as_str()).collect::<Vec<_>>(),
    });
    let (mut index, index_cost) = build_index(
        setup.model,
        &trained.checkpoints,
        &keyed,
        opts.projection,
        provenance,
    )?;
    if opts.base_gradient {
        // As production indexes: how well the trained adapter fits each example.
        let exs: Vec<TrainExample> = keyed.iter().map(|(_, e)| e.clone()).collect();
        index.header.fit_losses = Some(crate::features::fit_losses(
            setup.model,
            &trained.final_adapter,
            &exs,
        )?);
    }
    let texts: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.prompt, r.completion))
        .collect();
    tracing::info!(seconds = index_cost.gradient_seconds, "index built");
    let cosine = cosine_matrix(&index.centered(), setup.model.device())?;
    Ok(World {
        dup_keys: rows.iter().map(normalized).collect(),
        rows,
        trained,
        index,
        index_cost,
        bm25: Bm25::new(&texts),
        cosine,
    })
}

/// Gradient cosine of every pair of examples of `index` over all checkpoints (as
/// [`AttributionIndex::cosine`]), as one matrix product on the model's device.
fn cosine_matrix(
    index: &AttributionIndex,
    device: &burn::tensor::Device,
) -> Result<Vec<f32>, ModelError> {
    let n = index.len();
    let d = index.dims() * index.checkpoints();
    let mut flat = Vec::with_capacity(n * d);
    for i in 0..n {
        let start = flat.len();
        for c in 0..index.checkpoints() {
            flat.extend_from_slice(index.feature(c, i));
        }
        // This row's features: everything pushed since `start`.
        let Some((_, row)) = flat.split_at_mut_checked(start) else {
            continue;
        };
        let norm = tributary_attribution::dot(row, row).sqrt();
        if norm > 0.0 {
            for x in row {
                *x = (f64::from(*x) / norm) as f32;
            }
        }
    }
    let m: burn::tensor::Tensor<2> =
        burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(flat, [n, d]), device);
    crate::weights::read_f32(&m.clone().matmul(m.transpose()), "cosine matrix")
}

/// Shares from `scores`, crediting row `i` to `contributors[i]`.
pub fn shares_for(
    world: &World,
    scores: &[f64],
    contributors: &[String],
    opts: &BenchOptions,
) -> Result<Shares, ModelError> {
    if scores.len() != contributors.len() || scores.len() != world.dup_keys.len() {
        return Err(ModelError::Input(format!(
            "{} scores for {} contributors and {} rows",
            scores.len(),
            contributors.len(),
            world.dup_keys.len()
        )));
    }
    let candidates: Vec<Candidate> = scores
        .iter()
        .zip(contributors.iter().zip(&world.dup_keys))
        .enumerate()
        .map(|(i, (&s, (contributor, dup_key)))| Candidate {
            example: i,
            score: s,
            contributor: contributor.clone(),
            order: i as u64,
            dup_key: Some(dup_key.clone()),
        })
        .collect();
    shares(&candidates, &opts.shares, |a, b| world.cos(a, b)).map_err(attr_err)
}

pub(super) fn attr_err(e: tributary_attribution::AttributionError) -> ModelError {
    ModelError::Input(format!("attribution: {e}"))
}

/// A query's answer as an example (prompt masked), generating it when not given.
pub fn answer_example(
    setup: Setup<'_>,
    world: &World,
    q: &PlantedQuery,
    opts: &BenchOptions,
) -> Result<(TrainExample, String), ModelError> {
    let completion = match &q.completion {
        Some(c) => c.clone(),
        None => {
            let adapter = &world.trained.final_adapter;
            let ids = setup
                .tokenizer
                .encode_prompt(&q.prompt)
                .map_err(|e| ModelError::Input(e.to_string()))?;
            let params = GenerationParams::greedy(48, setup.eos.into_iter().collect());
            let src = ModelSource {
                model: setup.model,
                adapter: Some(adapter),
            };
            let out = generate(&src, setup.tokenizer, &[ids], &params, &mut |_| {})
                .map_err(|e| ModelError::Input(e.to_string()))?;
            out.into_iter().next().map(|c| c.text).unwrap_or_default()
        }
    };
    let ex = tokenize(
        &[(q.prompt.as_str(), completion.as_str())],
        setup.tokenizer,
        opts.max_seq_len,
        setup.eos,
    )?
    .pop()
    .ok_or_else(|| ModelError::Input("empty answer".into()))?;
    Ok((ex, completion))
}

/// Every method's scores for one answer, and the time the share method took end to end.
#[derive(Debug, Clone)]
pub struct QueryScores {
    /// `(method, scores)`: tracin, tracin_cos, datainf, bm25.
    pub by_method: Vec<(String, Vec<f64>)>,
    /// The shares from `opts.share_method`.
    pub shares: Shares,
    /// Seconds for gradients + score + shares with the share method.
    pub attribution_seconds: f64,
    /// The answer's projected gradient features, one vector per checkpoint used.
    pub features: Vec<Vec<f32>>,
}

/// Attributes one answer.
pub fn score_query(
    setup: Setup<'_>,
    world: &World,
    answer: &TrainExample,
    text: &str,
    opts: &BenchOptions,
) -> Result<QueryScores, ModelError> {
    let t0 = Instant::now();
    let cks = &world.trained.checkpoints;
    let adapters: Vec<_> = if opts.final_checkpoint_query {
        cks.last().map(|c| &c.adapter).into_iter().collect()
    } else {
        cks.iter().map(|c| &c.adapter).collect()
    };
    let q = query_features(setup.model, &adapters, answer, &world.index)?;
    let main = scores(&world.index, &q, opts.share_method).map_err(attr_err)?;
    let owners: Vec<String> = world.rows.iter().map(|r| r.contributor.clone()).collect();
    let sh = shares_for(world, &main, &owners, opts)?;
    let attribution_seconds = t0.elapsed().as_secs_f64();
    let mut by_method = Vec::new();
    for m in [
        Method::Tracin,
        Method::TracinCos,
        Method::TracinCcos,
        Method::Datainf {
            damping: opts.damping,
        },
    ] {
        let s = if m == opts.share_method {
            main.clone()
        } else {
            scores(&world.index, &q, m).map_err(attr_err)?
        };
        by_method.push((m.name().to_owned(), s));
    }
    by_method.push(("bm25".to_owned(), world.bm25.scores(text)));
    Ok(QueryScores {
        by_method,
        shares: sh,
        attribution_seconds,
        features: q,
    })
}

/// The contributor with the largest share (ties: lowest id).
pub fn top_contributor(s: &Shares) -> Option<&str> {
    let best = s.by_contributor.values().max()?;
    s.by_contributor
        .iter()
        .find(|(_, v)| *v == best)
        .map(|(k, _)| k.as_str())
}

fn p99_same_owner_cosine(world: &World) -> f64 {
    let mut v = Vec::new();
    for (i, a) in world.rows.iter().enumerate() {
        for (j, b) in world.rows.iter().enumerate().skip(i + 1) {
            if a.contributor == b.contributor {
                v.push(world.cos(i, j));
            }
        }
    }
    v.sort_by(f64::total_cmp);
    v.get((v.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(0.0)
}

/// The whole benchmark on `set`.
pub fn run(
    setup: Setup<'_>,
    set: &PlantedSet,
    opts: &BenchOptions,
) -> Result<BenchReport, ModelError> {
    let world = build_world(setup, set.data.clone(), opts)?;
    let owners: Vec<String> = world.rows.iter().map(|r| r.contributor.clone()).collect();
    let mut names: Vec<String> = Vec::new();
    let mut sums: Vec<(f64, f64, f64, f64)> = Vec::new(); // auc, min auc, recall, top1
    let mut attribution_s = 0.0;
    let mut generation_s = 0.0;
    let mut generated = 0usize;
    let mut honest = Vec::new();
    let mut answers = Vec::new();
    let mut all_scores = Vec::new();
    let mut dump = opts
        .dump_features
        .as_deref()
        .map(super::dump::FeatureDump::create)
        .transpose()?;
    for (qi, q) in set.queries.iter().enumerate() {
        let (answer, text) = answer_example(setup, &world, q, opts)?;
        let full = format!("{} {}", q.prompt, text);
        let qs = score_query(setup, &world, &answer, &full, opts)?;
        attribution_s += qs.attribution_seconds;
        if qi < opts.timed_generations {
            generation_s += time_generation(setup, &world, &answer)?;
            generated += 1;
        }
        let positive: Vec<bool> = owners.iter().map(|o| *o == q.owner).collect();
        let npos = positive.iter().filter(|p| **p).count();
        for (m, (name, s)) in qs.by_method.iter().enumerate() {
            if names.len() <= m {
                names.push(name.clone());
                sums.push((0.0, f64::INFINITY, 0.0, 0.0));
            }
            let auc = metrics::auc(s, &positive).unwrap_or(0.0);
            let rec = metrics::recall_at(s, &positive, npos);
            let sh = if name == opts.share_method.name() {
                qs.shares.clone()
            } else {
                shares_for(&world, s, &owners, opts)?
            };
            let top = f64::from(u8::from(top_contributor(&sh) == Some(q.owner.as_str())));
            if let Some(e) = sums.get_mut(m) {
                e.0 += auc;
                e.1 = e.1.min(auc);
                e.2 += rec;
                e.3 += top;
            }
        }
        if let Some(d) = dump.as_mut() {
            d.push_query(&qs.features, &q.owner, &qs.by_method)?;
        }
        honest.push(qs.shares);
        answers.push(answer);
        all_scores.push(qs.by_method);
        tracing::info!(query = qi + 1, of = set.queries.len(), "attributed");
    }
    let counterfactual = if opts.lds_subsets > 0 || opts.leave_one_out {
        Some(counterfactual_of(
            setup,
            &world,
            &answers,
            &all_scores,
            opts,
        )?)
    } else {
        None
    };
    if let Some(mut d) = dump {
        if let Some(cf) = &counterfactual {
            d.counterfactual(cf)?;
        }
        let dir = d.finish(&world.index, &owners)?;
        tracing::info!(dir = %dir.display(), "features dumped");
    }
    let nq = set.queries.len().max(1) as f64;
    let methods = names
        .into_iter()
        .zip(sums)
        .map(|(method, (a, amin, r, t))| MethodMetrics {
            method,
            auc: a / nq,
            auc_min: amin,
            recall: r / nq,
            top1: t / nq,
        })
        .collect();
    let attacks = if opts.attacks {
        super::attacks::run_all(setup, set, &world, &honest, opts)?
    } else {
        Vec::new()
    };
    let n = world.rows.len();
    let epochs = opts.epochs.max(1) as f64;
    let index_seconds = world.index_cost.gradient_seconds + world.index_cost.projection_seconds;
    let grads = world.index_cost.gradients.max(1) as f64;
    let attribution_ms = 1e3 * attribution_s / nq;
    let generation_ms = 1e3 * generation_s / generated.max(1) as f64;
    let cost = CostReport {
        train_seconds: world.trained.seconds,
        index_seconds,
        index_over_train: index_seconds / world.trained.seconds.max(1e-9),
        train_ms_per_example_epoch: 1e3 * world.trained.seconds / (n as f64 * epochs),
        gradient_ms_per_example: 1e3 * world.index_cost.gradient_seconds / grads,
        projection_ms_per_example: 1e3 * world.index_cost.projection_seconds / grads,
        index_bytes_per_example: world.index.bytes_per_example(),
        gradient_dims: world.index.header.gradient_layout.len(),
        feature_dims: world.index.dims(),
        attribution_ms_per_answer: attribution_ms,
        generation_ms_per_answer: generation_ms,
        attribution_over_generation: attribution_ms / generation_ms.max(1e-9),
    };
    Ok(BenchReport {
        contributors: {
            let mut o = owners.clone();
            o.sort();
            o.dedup();
            o.len()
        },
        examples: n,
        queries: set.queries.len(),
        final_train_loss: world.trained.final_loss,
        methods,
        share_method: opts.share_method.name().to_owned(),
        same_skill_cosine_p99: p99_same_owner_cosine(&world),
        attacks,
        counterfactual,
        cost,
        options: opts.clone(),
    })
}

/// The LDS and leave-one-out retrainings for the answers attributed against `world`.
fn counterfactual_of(
    setup: Setup<'_>,
    world: &World,
    answers: &[TrainExample],
    scores: &[Vec<(String, Vec<f64>)>],
    opts: &BenchOptions,
) -> Result<super::counterfactual::CounterfactualReport, ModelError> {
    let examples = tokenize_rows(&world.rows, setup.tokenizer, opts, setup.eos)?;
    let contributors: Vec<String> = world.rows.iter().map(|r| r.contributor.clone()).collect();
    let adapter = world.trained.final_adapter.clone();
    let cfg = crate::train::TrainConfig {
        batch_size: 1,
        ..crate::train::TrainConfig::default()
    };
    let full = crate::train::Trainer::from_adapter(setup.model, adapter, cfg)?;
    let full_losses = answers
        .iter()
        .map(|a| full.eval_loss(std::slice::from_ref(a)).map(f64::from))
        .collect::<Result<Vec<f64>, ModelError>>()?;
    let inputs = super::counterfactual::Inputs {
        model: setup.model,
        examples: &examples,
        contributors: &contributors,
        answers,
        scores,
    };
    super::counterfactual::run(
        inputs,
        &full_losses,
        opts.lds_subsets,
        opts.leave_one_out,
        opts,
    )
}

/// Seconds to generate as many tokens as `answer`'s completion, greedily, with the
/// served (final) adapter.
fn time_generation(
    setup: Setup<'_>,
    world: &World,
    answer: &TrainExample,
) -> Result<f64, ModelError> {
    let prompt_len = answer
        .labels
        .iter()
        .position(|&l| l != crate::train::IGNORE_INDEX)
        .unwrap_or(answer.input_ids.len());
    let prompt: Vec<u32> = answer.input_ids.iter().take(prompt_len).copied().collect();
    let new = answer.input_ids.len() - prompt_len;
    let adapter = Some(&world.trained.final_adapter);
    let src = ModelSource {
        model: setup.model,
        adapter,
    };
    let params = GenerationParams::greedy(new.max(1), Vec::new());
    let t0 = Instant::now();
    generate(&src, setup.tokenizer, &[prompt], &params, &mut |_| {})
        .map_err(|e| ModelError::Input(e.to_string()))?;
    Ok(t0.elapsed().as_secs_f64())
}

/// How badly training fit every row (fit loss, else self-influence; for the spammer
/// attack).
pub fn self_influence_of(world: &World) -> Vec<f64> {
    misfit(&world.index)
}
