//! A load generator in S-LoRA's style against a live gateway (`tributary bench serve`):
//! the model of each request drawn by a power law over the adapters (popularity ∝ 1/rank^α),
//! arrivals by a Gamma process (mean rate, coefficient of variation), prompt and output
//! lengths drawn uniformly from ranges. Open loop: each request is sent at its arrival time
//! whatever is still running (capped by `max_outstanding` so a stalled server cannot make the
//! generator itself unbounded). Every request streams, so time to first token and time per
//! output token are measured at the client. The pure parts (sampling, percentiles, the
//! report) are tested without a server.
// A load generator measures real latency and waits on real deadlines.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};

/// What to offer.
#[derive(Debug, Clone)]
pub struct ServeLoad {
    /// Gateway base URL (`http://127.0.0.1:7400`).
    pub url: String,
    pub api_key: Option<String>,
    /// Models to draw from, most popular first.
    pub models: Vec<String>,
    /// Power-law exponent of popularity (0: uniform).
    pub alpha: f64,
    /// Mean arrivals per second.
    pub rate: f64,
    /// Coefficient of variation of inter-arrival times (1: Poisson).
    pub cv: f64,
    pub requests: usize,
    /// Prompt length in words, inclusive range.
    pub prompt_words: (usize, usize),
    /// `max_tokens`, inclusive range.
    pub output_tokens: (u32, u32),
    pub seed: u64,
    /// SLOs for attainment.
    pub slo_ttft_s: f64,
    pub slo_tpot_s: f64,
    /// Most requests outstanding at once.
    pub max_outstanding: usize,
}

/// Why the generator could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Config(String),
    #[error("http: {0}")]
    Http(String),
}

/// p50, p90, p99.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// The one-JSON-line report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServeReport {
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    /// Status codes (or `io`) of the failures, with counts.
    pub error_kinds: Vec<(String, usize)>,
    pub models: usize,
    pub alpha: f64,
    pub offered_rate: f64,
    pub seconds: f64,
    pub req_per_s: f64,
    pub output_tokens_per_s: f64,
    pub ttft_s: Quantiles,
    pub tpot_s: Quantiles,
    pub e2e_s: Quantiles,
    /// Share of requests (of all sent) that succeeded within both SLOs.
    pub slo_attainment: f64,
}

/// Cumulative popularity of `n` models: weight of rank `i` ∝ 1/(i+1)^α.
pub fn popularity_cdf(n: usize, alpha: f64) -> Vec<f64> {
    let w: Vec<f64> = (0..n).map(|i| 1.0 / ((i + 1) as f64).powf(alpha)).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x / total;
            acc
        })
        .collect()
}

/// Draws a rank from a CDF.
pub fn draw(cdf: &[f64], u: f64) -> usize {
    cdf.iter()
        .position(|c| u <= *c)
        .unwrap_or(cdf.len().saturating_sub(1))
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Gamma(shape, 1) by Marsaglia and Tsang (shape < 1 boosted).
fn gamma(rng: &mut ChaCha8Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Arrival times (seconds from the start) of a Gamma process with mean `rate` per second
/// and inter-arrival coefficient of variation `cv`.
pub fn arrivals(n: usize, rate: f64, cv: f64, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let shape = 1.0 / (cv * cv);
    let scale = 1.0 / (rate * shape);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            let at = t;
            t += gamma(rng, shape) * scale;
            at
        })
        .collect()
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn quantiles(mut v: Vec<f64>) -> Quantiles {
    v.sort_by(f64::total_cmp);
    Quantiles {
        p50: quantile(&v, 0.5),
        p90: quantile(&v, 0.9),
        p99: quantile(&v, 0.99),
    }
}

/// One request's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok { ttft: f64, e2e: f64, tokens: u32 },
    Failed(String),
}

/// Builds the report from outcomes over `seconds` of wall time.
pub fn report(cfg: &ServeLoad, outcomes: &[Outcome], seconds: f64) -> ServeReport {
    let mut ttft = Vec::new();
    let mut tpot = Vec::new();
    let mut e2e = Vec::new();
    let mut tokens = 0u64;
    let mut within = 0usize;
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for o in outcomes {
        match o {
            Outcome::Ok {
                ttft: t,
                e2e: e,
                tokens: n,
            } => {
                let per = if *n > 1 {
                    (e - t) / f64::from(n - 1)
                } else {
                    0.0
                };
                ttft.push(*t);
                e2e.push(*e);
                tpot.push(per);
                tokens += u64::from(*n);
                if *t <= cfg.slo_ttft_s && per <= cfg.slo_tpot_s {
                    within += 1;
                }
            }
            Outcome::Failed(k) => *kinds.entry(k.clone()).or_default() += 1,
        }
    }
    let ok = ttft.len();
    let secs = seconds.max(1e-9);
    ServeReport {
        requests: outcomes.len(),
        ok,
        errors: outcomes.len() - ok,
        error_kinds: kinds.into_iter().collect(),
        models: cfg.models.len(),
        alpha: cfg.alpha,
        offered_rate: cfg.rate,
        seconds,
        req_per_s: ok as f64 / secs,
        output_tokens_per_s: tokens as f64 / secs,
        ttft_s: quantiles(ttft),
        tpot_s: quantiles(tpot),
        e2e_s: quantiles(e2e),
        slo_attainment: if outcomes.is_empty() {
            0.0
        } else {
            within as f64 / outcomes.len() as f64
        },
    }
}

/// The prompts and models of a run, drawn from the seed (the same seed, the same load).
pub fn plan(cfg: &ServeLoad) -> Vec<(f64, Value)> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let cdf = popularity_cdf(cfg.models.len(), cfg.alpha);
    let times = arrivals(cfg.requests, cfg.rate, cfg.cv, &mut rng);
    const WORDS: [&str; 8] = [
        "river", "stone", "light", "garden", "answer", "winter", "market", "story",
    ];
    times
        .into_iter()
        .map(|at| {
            let model = &cfg.models[draw(&cdf, rng.random())];
            let words = rng.random_range(cfg.prompt_words.0..=cfg.prompt_words.1);
            let prompt: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            let max_tokens = rng.random_range(cfg.output_tokens.0..=cfg.output_tokens.1);
            let body = json!({
                "model": model,
                "prompt": prompt.join(" "),
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": true,
                "stream_options": {"include_usage": true},
            });
            (at, body)
        })
        .collect()
}

async fn one(
    http: reqwest::Client,
    url: String,
    key: Option<String>,
    body: Value,
    t0: Instant,
) -> Outcome {
    let mut req = http
        .post(format!("{url}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("io: {e}")),
    };
    if !resp.status().is_success() {
        return Outcome::Failed(resp.status().as_u16().to_string());
    }
    let mut first: Option<f64> = None;
    let mut buf = String::new();
    let mut tokens = 0u32;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                // The gateway sends its first event once the engine's first text is there.
                if first.is_none() && String::from_utf8_lossy(&chunk).contains("\"text\"") {
                    first = Some(t0.elapsed().as_secs_f64());
                }
                buf.push_str(&String::from_utf8_lossy(&chunk));
            }
            Ok(None) => break,
            Err(e) => return Outcome::Failed(format!("io: {e}")),
        }
    }
    let e2e = t0.elapsed().as_secs_f64();
    for line in buf.lines() {
        if let Some(d) = line.strip_prefix("data: ")
            && d != "[DONE]"
            && let Ok(v) = serde_json::from_str::<Value>(d)
        {
            if v.get("error").is_some() {
                return Outcome::Failed("stream error".into());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as u32;
            }
        }
    }
    if !buf.contains("data: [DONE]") {
        return Outcome::Failed("no [DONE]".into());
    }
    Outcome::Ok {
        ttft: first.unwrap_or(e2e),
        e2e,
        tokens,
    }
}

/// Runs the load and reports.
pub async fn run(cfg: &ServeLoad) -> Result<ServeReport, LoadError> {
    if cfg.models.is_empty() {
        return Err(LoadError::Config("no models to draw from".into()));
    }
    if !(cfg.rate > 0.0 && cfg.cv > 0.0) {
        return Err(LoadError::Config(format!(
            "rate {} and cv {} must be > 0",
            cfg.rate, cfg.cv
        )));
    }
    if cfg.prompt_words.0 > cfg.prompt_words.1 || cfg.output_tokens.0 > cfg.output_tokens.1 {
        return Err(LoadError::Config("length ranges must be lo..=hi".into()));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| LoadError::Http(e.to_string()))?;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.max_outstanding.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.requests);
    for (at, body) in plan(cfg) {
        let due = start + Duration::from_secs_f64(at);
        tokio::time::sleep_until(due.into()).await;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| LoadError::Http(e.to_string()))?;
        let (http, url, key) = (http.clone(), cfg.url.clone(), cfg.api_key.clone());
        tasks.push(tokio::spawn(async move {
            let o = one(http, url, key, body, Instant::now()).await;
            drop(permit);
            (o, Instant::now())
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    let mut last = start;
    for t in tasks {
        match t.await {
            Ok((o, end)) => {
                last = last.max(end);
                outcomes.push(o);
            }
            Err(e) => outcomes.push(Outcome::Failed(format!("task: {e}"))),
        }
    }
    Ok(report(cfg, &outcomes, (last - start).as_secs_f64()))
}

/// The human table.
pub fn table(r: &ServeReport) -> String {
    format!(
        "models {:>5}  alpha {:.2}  offered {:.2} req/s\n\
         done   {:>5}/{} ok in {:.1} s: {:.2} req/s, {:.1} output tokens/s, SLO {:.1}%\n\
         TTFT   p50 {:.3} s  p90 {:.3} s  p99 {:.3} s\n\
         TPOT   p50 {:.4} s  p90 {:.4} s  p99 {:.4} s\n\
         errors {:?}",
        r.models,
        r.alpha,
        r.offered_rate,
        r.ok,
        r.requests,
        r.seconds,
        r.req_per_s,
        r.output_tokens_per_s,
        r.slo_attainment * 100.0,
        r.ttft_s.p50,
        r.ttft_s.p90,
        r.ttft_s.p99,
        r.tpot_s.p50,
        r.tpot_s.p90,
        r.tpot_s.p99,
        r.error_kinds,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popularity_follows_the_power_law() {
        let cdf = popularity_cdf(100, 1.0);
        assert!((cdf[99] - 1.0).abs() < 1e-12);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut counts = [0usize; 100];
        for _ in 0..200_000 {
            counts[draw(&cdf, rng.random())] += 1;
        }
        // Rank 1 is drawn about twice as often as rank 2 and ten times rank 10.
        let r12 = counts[0] as f64 / counts[1] as f64;
        let r110 = counts[0] as f64 / counts[9] as f64;
        assert!((1.85..2.15).contains(&r12), "{r12}");
        assert!((9.0..11.0).contains(&r110), "{r110}");
        let flat = popularity_cdf(4, 0.0);
        assert!((flat[0] - 0.25).abs() < 1e-12);
    }

    #[test]
    fn gamma_arrivals_have_the_asked_rate_and_cv() {
        for cv in [0.5, 1.0, 2.0] {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let t = arrivals(50_001, 10.0, cv, &mut rng);
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            let got_cv = var.sqrt() / mean;
            assert!((mean - 0.1).abs() < 0.005, "cv {cv}: mean {mean}");
            assert!((got_cv - cv).abs() < 0.06 * cv, "cv {cv}: got {got_cv}");
        }
    }

    #[test]
    fn reports_count_quantiles_and_slo() {
        let cfg = ServeLoad {
            url: String::new(),
            api_key: None,
            models: vec!["a".into()],
            alpha: 1.0,
            rate: 1.0,
            cv: 1.0,
            requests: 3,
            prompt_words: (1, 1),
            output_tokens: (1, 1),
            seed: 0,
            slo_ttft_s: 0.5,
            slo_tpot_s: 0.1,
            max_outstanding: 4,
        };
        let outs = vec![
            Outcome::Ok {
                ttft: 0.1,
                e2e: 1.0,
                tokens: 10,
            },
            Outcome::Ok {
                ttft: 0.9,
                e2e: 1.0,
                tokens: 2,
            },
            Outcome::Failed("429".into()),
        ];
        let r = report(&cfg, &outs, 2.0);
        assert_eq!((r.ok, r.errors), (2, 1));
        assert_eq!(r.error_kinds, vec![("429".to_string(), 1)]);
        assert!((r.output_tokens_per_s - 6.0).abs() < 1e-9);
        assert!((r.slo_attainment - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.ttft_s.p50, 0.1);
        assert_eq!(r.ttft_s.p99, 0.9);
        // The plan is a function of the seed.
        assert_eq!(plan(&cfg), plan(&cfg));
    }
}
