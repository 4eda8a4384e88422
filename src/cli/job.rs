//! `tributary job submit|status|cancel|logs`: a thin HTTP client of the job API that
//! `tributary dev` and every `tributary coordinator --http` serve (see docs/cluster.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tributary_protocol::JobSpec;

/// Where the job API is.
#[derive(Debug, Args)]
pub struct Endpoint {
    /// Job API base URL (`tributary dev` or any `tributary coordinator --http`).
    #[arg(
        long,
        env = "TRIBUTARY_COORDINATOR",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    pub coordinator: String,
    /// API key (`Authorization: Bearer`); default: a local `tributary dev`'s admin key,
    /// found by itself.
    #[arg(long, env = "TRIBUTARY_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
}

/// `tributary job …`.
#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job spec (TOML or JSON).
    Submit {
        file: PathBuf,
        /// Wait until the job ends.
        #[arg(long)]
        wait: bool,
        /// Print JSON (with --wait: the final record as one line).
        #[arg(long)]
        json: bool,
    },
    /// One job's state and progress, or every job.
    Status {
        id: Option<String>,
        /// Follow the job with a progress bar until it ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// A job's event lines.
    Logs { id: String },
}

/// A thin JSON client of the gateway's APIs (`job`, `adapter`).
pub struct Api {
    pub base: String,
    http: reqwest::Client,
    key: Option<String>,
}

impl Api {
    pub fn new(endpoint: &Endpoint) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        let base = endpoint.coordinator.trim_end_matches('/').to_string();
        Ok(Self {
            key: super::api_key::client_key(endpoint.api_key.as_deref(), &base),
            base,
            http,
        })
    }

    /// Sends `req` with the API key, if any.
    async fn authorized(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let req = match &self.key {
            Some(k) => req.header("authorization", format!("Bearer {k}")),
            None => req,
        };
        req.send()
            .await
            .with_context(|| format!("{what}: cannot reach the job API at {}", self.base))
    }

    pub async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = self.authorized(req, what).await?;
        let status = resp.status();
        let text = resp.text().await.context(what.to_string())?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            // `{"error": {"message", "param", …}}` (OpenAI's shape, every gateway route).
            let err = &body["error"];
            let msg = err["message"]
                .as_str()
                .or_else(|| err.as_str())
                .map_or(body.to_string(), str::to_string);
            let hint = if status.as_u16() == 401 && self.key.is_none() {
                " (give --api-key or TRIBUTARY_API_KEY; `tributary dev` prints its admin key)"
            } else {
                ""
            };
            let msg = format!("{msg}{hint}");
            match err["param"].as_str() {
                Some(f) => bail!("{what}: {msg} (field `{f}`, HTTP {status})"),
                None => bail!("{what}: {msg} (HTTP {status})"),
            }
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str, what: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)), what)
            .await
    }

    pub async fn post(&self, path: &str, body: String, what: &str) -> anyhow::Result<Value> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        self.send(req, what).await
    }

    /// The body of a GET as bytes (file downloads), failing on a non-2xx status.
    pub async fn get_bytes(&self, path: &str, what: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self
            .authorized(self.http.get(format!("{}{path}", self.base)), what)
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await.context(what.to_string())?;
        if !status.is_success() {
            bail!("{what}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes.to_vec())
    }

    /// POSTs `body` as it is, with `content_type` (datanet uploads are JSONL).
    pub async fn post_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
        what: &str,
    ) -> anyhow::Result<Value> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        self.send(req, what).await
    }

    pub async fn delete(&self, path: &str, what: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)), what)
            .await
    }
}

pub fn run(args: JobArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: JobArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.endpoint)?;
    match args.command {
        JobCommand::Submit { file, wait, json } => {
            let mut spec = JobSpec::from_path(&file)?;
            resolve_paths(&mut spec, &file);
            let body = spec.to_json()?;
            let r = api.post("/v1/jobs", body, "submit").await?;
            let id = r["id"]
                .as_str()
                .context("submit: no id in the answer")?
                .to_string();
            if !wait {
                if json {
                    println!("{}", serde_json::json!({ "id": id }));
                } else {
                    println!("{id}");
                }
                return Ok(());
            }
            if !json {
                eprintln!("submitted {id}");
            }
            let rec = follow(&api, &id, !json).await?;
            finish(&rec, json)
        }
        JobCommand::Status { id, watch, json } => match id {
            Some(id) if watch => {
                let rec = follow(&api, &id, !json).await?;
                finish(&rec, json)
            }
            Some(id) => {
                let rec = api.get(&format!("/v1/jobs/{id}"), "status").await?;
                if json {
                    println!("{rec}");
                } else {
                    print_record(&rec);
                }
                Ok(())
            }
            None => {
                let recs = api.get("/v1/jobs", "status").await?;
                if json {
                    println!("{recs}");
                } else {
                    for r in recs.as_array().into_iter().flatten() {
                        print_row(r);
                    }
                }
                Ok(())
            }
        },
        JobCommand::Cancel { id } => {
            api.post(&format!("/v1/jobs/{id}/cancel"), String::new(), "cancel")
                .await?;
            println!("cancel requested for {id}");
            Ok(())
        }
        JobCommand::Logs { id } => {
            let r = api.get(&format!("/v1/jobs/{id}/logs"), "logs").await?;
            let lines = r["lines"].as_array().cloned().unwrap_or_default();
            // Times relative to the first line kept (the log is bounded; old lines drop).
            let first = lines.first().and_then(|l| l["at_ms"].as_u64()).unwrap_or(0);
            for l in &lines {
                let at = l["at_ms"].as_u64().unwrap_or(first).saturating_sub(first);
                println!(
                    "+{:>8.3}s  {}",
                    at as f64 / 1000.0,
                    l["msg"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

/// The one-line summary `--wait --json` prints.
fn summary(rec: &Value) -> Value {
    serde_json::json!({
        "id": rec["id"],
        "state": rec["state"],
        "adapter": rec["adapter"],
        "adapter_digest": rec["adapter_digest"],
        "steps": rec["progress"]["step"],
        "final_loss": rec["final_loss"],
    })
}

fn finish(rec: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", summary(rec));
    } else {
        print_record(rec);
    }
    match rec["state"].as_str() {
        Some("succeeded") => Ok(()),
        Some(s) => bail!(
            "job {} ended {s}{}",
            rec["id"].as_str().unwrap_or("?"),
            rec["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        None => bail!("job record without a state"),
    }
}

/// Polls the job until it ends, with a progress bar when `bar`.
pub(super) async fn follow(api: &Api, id: &str, bar: bool) -> anyhow::Result<Value> {
    let pb = bar.then(|| {
        let pb = ProgressBar::new(0);
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} steps {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb
    });
    loop {
        let rec = api.get(&format!("/v1/jobs/{id}"), "status").await?;
        if let Some(pb) = &pb {
            let p = &rec["progress"];
            pb.set_length(p["total_steps"].as_u64().unwrap_or(0));
            pb.set_position(p["step"].as_u64().unwrap_or(0));
            let loss = p["loss"].as_f64().map_or("-".into(), |l| format!("{l:.4}"));
            let eta = p["eta_secs"]
                .as_f64()
                .map_or("-".into(), |e| format!("{e:.0}s"));
            pb.set_message(format!(
                "{} loss {loss} {:.0} tokens/s ETA {eta}",
                rec["state"].as_str().unwrap_or("?"),
                p["tokens_per_sec"].as_f64().unwrap_or(0.0)
            ));
        }
        let terminal = matches!(
            rec["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        );
        if terminal {
            if let Some(pb) = &pb {
                pb.finish();
            }
            return Ok(rec);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_row(r: &Value) {
    let p = &r["progress"];
    println!(
        "{}  {:<9}  step {}/{}  loss {}",
        r["id"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        p["step"],
        p["total_steps"],
        p["loss"].as_f64().map_or("-".into(), |l| format!("{l:.4}")),
    );
}

fn print_record(r: &Value) {
    print_row(r);
    let workers: Vec<&str> = r["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !workers.is_empty() {
        println!("  workers: {}", workers.join(", "));
    }
    if let Some(devices) = r["devices"].as_object() {
        for (node, device) in devices {
            println!("  device of {node}: {}", device.as_str().unwrap_or("?"));
        }
    }
    for key in [
        "waiting",
        "adapter",
        "adapter_digest",
        "final_loss",
        "error",
    ] {
        if !r[key].is_null() {
            println!(
                "  {key}: {}",
                r[key].as_str().map_or(r[key].to_string(), str::to_string)
            );
        }
    }
}

/// Relative `base_model` and `data` paths are relative to the spec file: made absolute when
/// they exist there (URLs and `builtin:` names are left alone).
fn resolve_paths(spec: &mut JobSpec, file: &std::path::Path) {
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    for value in [&mut spec.base_model, &mut spec.data] {
        let p = std::path::Path::new(value.as_str());
        if value.contains(':') || p.is_absolute() {
            continue;
        }
        if let Ok(abs) = std::fs::canonicalize(dir.join(p)) {
            *value = abs.to_string_lossy().into_owned();
        }
    }
}
