//! `tributary attribution explain|rerun`: read an answer's attribution record from the
//! store and explain it, or recompute it and check the bits (scores, integer shares, fee
//! split) against the stored ones: exit non-zero when they differ. Both also take a
//! prompt/answer pair on the command line (`--adapter D --prompt P --answer A`) and attribute
//! it afresh (`rerun` then computes it twice and compares).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use object_store::path::Path as Key;
use tributary_ledger::store::Store;
use tributary_protocol::inference::Prompt;
use tributary_worker::attribution::record::{
    AttributionRecord, features_from_bytes, receipt_key, record_key,
};
use tributary_worker::attribution::{AnswerChoice, AnswerJob, Attributor, Params, Pricing};

#[derive(Debug, Args)]
pub struct AttributionArgs {
    /// The store holding records, indexes and adapters (`tributary dev`'s is
    /// `<data-dir>/store`).
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_STORE",
        default_value = "./tributary-data/store"
    )]
    pub store: String,
    #[command(subcommand)]
    pub command: AttributionCommand,
}

/// A prompt/answer pair to attribute instead of a stored request.
#[derive(Debug, Clone, Args)]
pub struct Pair {
    /// The adapter's digest (with --prompt and --answer instead of REQUEST_ID).
    #[arg(long, requires_all = ["prompt", "answer"])]
    pub adapter: Option<String>,
    /// The prompt, as a completion prompt (text).
    #[arg(long)]
    pub prompt: Option<String>,
    /// The answer text.
    #[arg(long)]
    pub answer: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AttributionCommand {
    /// Explain an answer's attribution: top examples, evidence, shares, fee split, reward.
    Explain {
        /// The answer's request id (`chatcmpl-…`, `cmpl-…`).
        #[arg(required_unless_present = "adapter")]
        request_id: Option<String>,
        #[command(flatten)]
        pair: Pair,
        /// Needed for a pair: the base model directory.
        #[arg(long, env = "TRIBUTARY_BASE_MODEL")]
        base_model: Option<PathBuf>,
        /// The record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute an answer's attribution from its stored features and compare the bits;
    /// exits 1 when they differ. Also recomputes the answer's gradient and reports how
    /// close its features and shares come (same backend: expected equal).
    Rerun {
        #[arg(required_unless_present = "adapter")]
        request_id: Option<String>,
        #[command(flatten)]
        pair: Pair,
        /// The base model directory the adapter was trained on.
        #[arg(long, env = "TRIBUTARY_BASE_MODEL")]
        base_model: PathBuf,
    },
}

pub fn run(args: AttributionArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let store = Store::open(&args.store).with_context(|| format!("--store {}", args.store))?;
    match args.command {
        AttributionCommand::Explain {
            request_id,
            pair,
            base_model,
            json,
        } => {
            let (rec, reward) = match request_id {
                Some(rid) => {
                    let rec = read_record(&rt, &store, &rid)?;
                    let reward = rt
                        .block_on(store.get(&Key::from(receipt_key(&rid))))?
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
                    (rec, reward)
                }
                None => {
                    let dir = base_model.context("a pair needs --base-model")?;
                    let mut at = attributor(&rt, &store, &dir)?;
                    (attribute_pair(&mut at, &pair)?, None)
                }
            };
            if json {
                let mut v = serde_json::to_value(&rec)?;
                v["reward"] = reward.unwrap_or(serde_json::Value::Null);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_explain(&rec, reward.as_ref());
            }
            Ok(())
        }
        AttributionCommand::Rerun {
            request_id,
            pair,
            base_model,
        } => {
            let mut at = attributor(&rt, &store, &base_model)?;
            let (rec, features) = match request_id {
                Some(rid) => {
                    let rec = read_record(&rt, &store, &rid)?;
                    let dims = at
                        .load(&rec.adapter)?
                        .with_context(|| {
                            format!("no attribution index for adapter {}", rec.adapter)
                        })?
                        .index
                        .dims();
                    let mut features = Vec::new();
                    for c in &rec.choices {
                        let b = rt
                            .block_on(store.get(&Key::from(c.features_key.as_str())))?
                            .with_context(|| {
                                format!("the stored features {} are missing", c.features_key)
                            })?;
                        let found = blake3::hash(&b).to_hex().to_string();
                        if found != c.features_blake3 {
                            bail!(
                                "the stored features {} hash to {found}, the record says {}",
                                c.features_key,
                                c.features_blake3
                            );
                        }
                        features.push(features_from_bytes(&b, dims).with_context(|| {
                            format!("{}: not {dims}-dimensional features", c.features_key)
                        })?);
                    }
                    (rec, features)
                }
                None => {
                    let rec = attribute_pair(&mut at, &pair)?;
                    let again = attribute_pair(&mut at, &pair)?;
                    let same = rec
                        .choices
                        .iter()
                        .zip(&again.choices)
                        .all(|(a, b)| a.bits.same_bits(&b.bits));
                    println!(
                        "{}",
                        serde_json::json!({"pair": true, "bits_equal": same, "method": rec.method})
                    );
                    if !same {
                        std::process::exit(1);
                    }
                    return Ok(());
                }
            };
            let bits = at.rerun_bits(&rec, &features)?;
            let mut differ = Vec::new();
            for (c, b) in rec.choices.iter().zip(&bits) {
                if !c.bits.same_bits(b) {
                    differ.push(serde_json::json!({
                        "choice": c.index, "stored": c.bits, "recomputed": b,
                    }));
                }
            }
            // The gradient itself, recomputed from the stored answer text.
            let mut gradient = Vec::new();
            if let Some(loaded) = at.load(&rec.adapter)? {
                let prompt = stored_prompt(&rt, &store, &rec);
                for (c, q) in rec.choices.iter().zip(&features) {
                    let (Some(p), Ok(a)) =
                        (prompt.as_ref(), at.answer_tokens(&c.answer, &c.finish))
                    else {
                        continue;
                    };
                    let Ok(ptoks) = at.prompt_tokens(p) else {
                        continue;
                    };
                    if a.is_empty() {
                        continue;
                    }
                    if let Ok(f) = at.features(&loaded, &ptoks, &a) {
                        let d = max_rel_diff(q, &f);
                        gradient.push(
                            serde_json::json!({"choice": c.index, "max_relative_difference": d}),
                        );
                    }
                }
            }
            println!(
                "{}",
                serde_json::json!({
                    "request_id": rec.request_id,
                    "bits_equal": differ.is_empty(),
                    "choices": rec.choices.len(),
                    "differences": differ,
                    "gradient_recomputed": gradient,
                })
            );
            if !differ.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn max_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let mut worst = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let norm = tributary_attribution::dot(x, x).sqrt().max(1e-30);
        let diff: Vec<f32> = x.iter().zip(y).map(|(p, q)| p - q).collect();
        worst = worst.max(tributary_attribution::dot(&diff, &diff).sqrt() / norm);
    }
    worst
}

/// The prompt of a stored answer: its record keeps the answer; the prompt is in the
/// durable job copy kept beside the record.
fn stored_prompt(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    rec: &AttributionRecord,
) -> Option<Prompt> {
    let key = Key::from(format!("attribution/prompts/{}.json", rec.request_id));
    let b = rt.block_on(store.get(&key)).ok()??;
    serde_json::from_slice(&b).ok()
}

fn read_record(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    rid: &str,
) -> anyhow::Result<AttributionRecord> {
    if !tributary_worker::attribution::record::valid_request_id(rid) {
        bail!("REQUEST_ID {rid:?} is not a request id (chatcmpl-… or cmpl-…)");
    }
    let b = rt
        .block_on(store.get(&Key::from(record_key(rid))))?
        .with_context(|| {
            format!(
                "no attribution record for {rid} in {} (answers are attributed a moment after they are sent)",
                store.label()
            )
        })?;
    serde_json::from_slice(&b).with_context(|| format!("record {rid}"))
}

fn attributor(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    base: &std::path::Path,
) -> anyhow::Result<Attributor> {
    Attributor::new(
        base,
        store.clone(),
        rt.handle().clone(),
        Params::default(),
        Pricing::default(),
    )
    .with_context(|| format!("--base-model {}", base.display()))
}

fn attribute_pair(at: &mut Attributor, pair: &Pair) -> anyhow::Result<AttributionRecord> {
    let (Some(adapter), Some(prompt), Some(answer)) = (&pair.adapter, &pair.prompt, &pair.answer)
    else {
        bail!("a pair needs --adapter, --prompt and --answer");
    };
    let job = AnswerJob {
        request_id: "pair".into(),
        adapter: adapter.clone(),
        prompt: Prompt::Text(prompt.clone()),
        choices: vec![AnswerChoice {
            index: 0,
            text: answer.clone(),
            finish: "stop".into(),
            completion_tokens: 0,
        }],
        requester: None,
        answered_ms: tributary_worker::attribution::now_ms(),
        attempts: 0,
        retry_at_ms: 0,
    };
    let (rec, _) = at
        .attribute(&job)?
        .with_context(|| format!("adapter {adapter} has no attribution index in the store"))?;
    Ok(rec)
}

fn print_explain(rec: &AttributionRecord, reward: Option<&serde_json::Value>) {
    println!("request   {}", rec.request_id);
    println!("adapter   {} (built by {})", rec.adapter, rec.builder);
    println!("base      {}", rec.base_model);
    println!("data      {} (version {})", rec.data, rec.data_version);
    println!(
        "method    {} on the served adapter's gradient, projection {:?}; top {} clusters, cosine {:?}",
        rec.method, rec.projection, rec.params.shares.top_k, rec.params.shares.cosine_threshold
    );
    for c in &rec.choices {
        println!();
        println!(
            "choice {}: {} tokens billed ({}), fee {} = builder {} + contributors {}{}",
            c.index,
            c.completion_tokens,
            c.finish,
            c.bits.fee.total,
            c.bits.fee.builder,
            c.bits.fee.contributors.values().sum::<u64>(),
            if c.bits.fee.unattributed {
                " (nothing scored: all to the builder)"
            } else {
                ""
            }
        );
        println!("  answer: {:?}", c.answer);
        println!("  top examples (positive: made this answer more likely):");
        for t in &c.bits.top {
            println!(
                "    {:>12.5}  {:<16} {}{}",
                t.score,
                t.contributor,
                t.id.get(..16).unwrap_or(&t.id),
                if t.paid {
                    ""
                } else {
                    "  (withdrawn: not paid)"
                }
            );
        }
        println!("  shares (of {}):", rec.params.shares.units);
        for (who, u) in &c.bits.shares {
            println!(
                "    {:<16} {:>8}  {:5.1} %",
                who,
                u,
                *u as f64 * 100.0 / rec.params.shares.units.max(1) as f64
            );
        }
        for e in &c.evidence {
            let at: Vec<String> = e
                .examples
                .iter()
                .map(|(id, off)| format!("{}@{off}", id.get(..12).unwrap_or(id)))
                .collect();
            println!("  verbatim: {:?} in {}", e.text, at.join(", "));
        }
    }
    println!();
    match reward {
        Some(r) => println!("reward    acknowledged: {r}"),
        None => println!("reward    not acknowledged by the reward log yet"),
    }
}
