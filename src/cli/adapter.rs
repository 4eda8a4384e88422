//! `tributary adapter list|show|register|delete`: a thin client of the gateway's adapter API
//! (`/v1/adapters`, see docs/api.md), with the same endpoint and key flags as `job`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::job::{Api, Endpoint};

/// `tributary adapter …`.
#[derive(Debug, Args)]
pub struct AdapterArgs {
    #[command(flatten)]
    pub endpoint: Endpoint,
    #[command(subcommand)]
    pub command: AdapterCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Every adapter served for the base model, with names and residency.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One adapter, by name or digest.
    Show { id: String },
    /// Register a PEFT adapter: a local directory (uploaded), `--url` (a directory in an
    /// object store the server can read) or `--digest` (one already in the registry).
    Register {
        /// A directory with adapter_config.json and adapter_model.safetensors.
        dir: Option<PathBuf>,
        #[arg(long, conflicts_with_all = ["dir", "digest"])]
        url: Option<String>,
        #[arg(long, conflicts_with_all = ["dir", "url"])]
        digest: Option<String>,
        /// Serve it under this name (you own a name you claim first).
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete (tombstone) an adapter: no longer listed or served; its files stay.
    Delete { id: String },
    /// Keep an adapter resident in the engine (never evicted; not deletable while pinned).
    Pin { id: String },
    /// Let a pinned adapter be evicted (and deleted) again.
    Unpin { id: String },
}

pub fn run(args: AdapterArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

fn row(a: &Value) -> String {
    let names: Vec<&str> = a["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{}  {:<9}  {:<10}  {}",
        a["digest"].as_str().unwrap_or("?"),
        a["residency"].as_str().unwrap_or("?"),
        a["owner"].as_str().unwrap_or("-"),
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(",")
        }
    )
}

async fn run_async(args: AdapterArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.endpoint)?;
    match args.command {
        AdapterCommand::List { json } => {
            let v = api.get("/v1/adapters", "adapter list").await?;
            if json {
                println!("{v}");
            } else {
                for a in v["data"].as_array().into_iter().flatten() {
                    println!("{}", row(a));
                }
            }
        }
        AdapterCommand::Show { id } => {
            let v = api
                .get(&format!("/v1/adapters/{id}"), "adapter show")
                .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AdapterCommand::Register {
            dir,
            url,
            digest,
            name,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            match (dir, url, digest) {
                (Some(dir), None, None) => {
                    let mut files = serde_json::Map::new();
                    for f in ["adapter_config.json", "adapter_model.safetensors"] {
                        let p = dir.join(f);
                        let bytes = std::fs::read(&p)
                            .with_context(|| format!("reading {}", p.display()))?;
                        files.insert(
                            f.to_string(),
                            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                        );
                    }
                    body["files"] = Value::Object(files);
                }
                (None, Some(url), None) => body["url"] = json!(url),
                (None, None, Some(d)) => body["digest"] = json!(d),
                _ => bail!("give a directory, --url or --digest"),
            }
            let v = api
                .post("/v1/adapters", body.to_string(), "adapter register")
                .await?;
            println!("{}", row(&v));
        }
        AdapterCommand::Pin { id } => {
            api.post(
                &format!("/v1/adapters/{id}/pin"),
                String::new(),
                "adapter pin",
            )
            .await?;
            println!("pinned {id}");
        }
        AdapterCommand::Unpin { id } => {
            api.delete(&format!("/v1/adapters/{id}/pin"), "adapter unpin")
                .await?;
            println!("unpinned {id}");
        }
        AdapterCommand::Delete { id } => {
            let v = api
                .delete(&format!("/v1/adapters/{id}"), "adapter delete")
                .await?;
            println!("deleted {} ({})", id, v["digest"].as_str().unwrap_or("?"));
        }
    }
    Ok(())
}
