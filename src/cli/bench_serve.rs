//! `tributary bench serve`: the S-LoRA-style load generator against a live gateway (see
//! `tributary_loadtests::serve_load`); prints the human table on stderr and one JSON line.

use anyhow::Context;
use clap::Args;
use tributary_loadtests::serve_load::{self, ServeLoad};

/// `tributary bench serve`.
#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Gateway base URL.
    #[arg(
        long,
        env = "TRIBUTARY_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    pub url: String,
    /// API key (default: a local dev's, found as the other client commands find it).
    #[arg(long, env = "TRIBUTARY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Models to draw from, most popular first (comma-separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "adapters")]
    pub models: Vec<String>,
    /// Instead of --models: the first N adapters `/v1/models` lists (0: the base model).
    #[arg(long)]
    pub adapters: Option<usize>,
    /// Popularity exponent (rank r drawn ∝ 1/r^alpha).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Mean arrivals per second.
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Coefficient of variation of inter-arrival times (1: Poisson).
    #[arg(long, default_value_t = 1.0)]
    pub cv: f64,
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Prompt words, `LO..HI`.
    #[arg(long, default_value = "8..32")]
    pub prompt_words: String,
    /// max_tokens, `LO..HI`.
    #[arg(long, default_value = "16..64")]
    pub output_tokens: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 2.0)]
    pub slo_ttft_s: f64,
    #[arg(long, default_value_t = 0.2)]
    pub slo_tpot_s: f64,
    /// Most requests outstanding at once.
    #[arg(long, default_value_t = 1024)]
    pub max_outstanding: usize,
}

fn range(s: &str, flag: &str) -> anyhow::Result<(u64, u64)> {
    let (lo, hi) = s
        .split_once("..")
        .with_context(|| format!("{flag} {s:?}: expected LO..HI"))?;
    let lo: u64 = lo.trim().parse().with_context(|| format!("{flag} {s:?}"))?;
    let hi: u64 = hi.trim().parse().with_context(|| format!("{flag} {s:?}"))?;
    anyhow::ensure!(lo >= 1 && lo <= hi, "{flag} {s:?}: need 1 <= LO <= HI");
    Ok((lo, hi))
}

pub fn run(args: BenchServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let endpoint = super::job::Endpoint {
            coordinator: args.url.clone(),
            api_key: args.api_key.clone(),
        };
        let api = super::job::Api::new(&endpoint)?;
        let models = match args.adapters {
            None if !args.models.is_empty() => args.models.clone(),
            n => {
                let listed = api.get("/v1/models", "bench serve: models").await?;
                let data = listed["data"].as_array().cloned().unwrap_or_default();
                let n = n.unwrap_or(0);
                if n == 0 {
                    vec![
                        data.first()
                            .and_then(|m| m["id"].as_str())
                            .context("no base model")?
                            .to_string(),
                    ]
                } else {
                    let ids: Vec<String> = data
                        .iter()
                        .filter(|m| !m["base"].is_null())
                        .filter_map(|m| m["id"].as_str().map(str::to_string))
                        .take(n)
                        .collect();
                    anyhow::ensure!(
                        ids.len() == n,
                        "--adapters {n}: the gateway lists {}",
                        ids.len()
                    );
                    ids
                }
            }
        };
        let (pw, ot) = (
            range(&args.prompt_words, "--prompt-words")?,
            range(&args.output_tokens, "--output-tokens")?,
        );
        let cfg = ServeLoad {
            url: api.base.clone(),
            api_key: super::api_key::client_key(args.api_key.as_deref(), &api.base),
            models,
            alpha: args.alpha,
            rate: args.rate,
            cv: args.cv,
            requests: args.requests,
            prompt_words: (pw.0 as usize, pw.1 as usize),
            output_tokens: (ot.0 as u32, ot.1 as u32),
            seed: args.seed,
            slo_ttft_s: args.slo_ttft_s,
            slo_tpot_s: args.slo_tpot_s,
            max_outstanding: args.max_outstanding,
        };
        let report = serve_load::run(&cfg).await?;
        eprintln!("{}", serve_load::table(&report));
        println!("{}", serde_json::to_string(&report)?);
        Ok(())
    })
}
