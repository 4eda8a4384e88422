//! `tributary ledger …`: the reward log — verify (exit non-zero naming the first bad seq),
//! balances, repair, and a manual append.

use anyhow::Context;
use clap::{Args, Subcommand};
use tributary_ledger::rewards::{
    Fencing, LogWriter, Replicas, RewardRecord, Share, WriterOptions, repair, verify,
};

#[derive(Debug, Args)]
pub struct LedgerArgs {
    /// Replica stores, comma-separated (directories, file://, s3://…?endpoint=…).
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_LEDGER_REPLICAS",
        value_delimiter = ',',
        default_value = "./tributary-data/ledger"
    )]
    pub replicas: Vec<String>,
    #[command(subcommand)]
    pub command: LedgerCommand,
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check the chain on every replica and the balances; exits non-zero on any fault and
    /// names the first bad sequence number.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Balance per contributor (micro-units), from the verified chain.
    Balances {
        #[arg(long)]
        json: bool,
    },
    /// Copy missing entries to replicas that were down; --full also rescans entries every
    /// replica lists and replaces corrupt ones from the majority.
    Repair {
        #[arg(long)]
        full: bool,
    },
    /// Append one reward record (operator tool; the attribution actor appends in service).
    Append {
        #[arg(long)]
        request_id: String,
        /// CONTRIBUTOR=AMOUNT, repeatable.
        #[arg(long = "share", required = true)]
        shares: Vec<String>,
        /// Adapter digest (hex), default zeros.
        #[arg(long)]
        adapter: Option<String>,
        /// External fencing token (cluster mode); default: claim the next epoch.
        #[arg(long)]
        token: Option<u64>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(args: LedgerArgs) -> anyhow::Result<()> {
    runtime()?.block_on(run_async(args))
}

fn parse_share(s: &str) -> anyhow::Result<Share> {
    let (c, a) = s
        .split_once('=')
        .with_context(|| format!("--share `{s}`: expected CONTRIBUTOR=AMOUNT"))?;
    let amount: u64 = a
        .parse()
        .with_context(|| format!("--share `{s}`: amount `{a}` is not a whole number"))?;
    Ok(Share {
        contributor: c.to_string(),
        amount,
    })
}

fn parse_digest(s: &str) -> anyhow::Result<[u8; 32]> {
    tributary_ledger::datanet::identity::parse_hex(s, "--adapter").map_err(Into::into)
}

async fn run_async(args: LedgerArgs) -> anyhow::Result<()> {
    let replicas = Replicas::open(&args.replicas).context("--replicas")?;
    match args.command {
        LedgerCommand::Verify { json } => {
            let report = verify(&replicas).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for r in &report.replicas {
                    println!(
                        "{}: {} valid entries of {} objects, tip {}",
                        r.replica,
                        r.valid_entries,
                        r.objects,
                        r.tip.as_deref().unwrap_or("-")
                    );
                }
                for f in &report.faults {
                    let seq = f.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                    println!(
                        "FAULT seq {seq} {:?} on {}: {}",
                        f.kind, f.replica, f.detail
                    );
                }
                if report.ok {
                    println!(
                        "ok: {} entries, {} records, {} contributors",
                        report.entries,
                        report.records,
                        report.balances.len()
                    );
                }
            }
            if !report.ok {
                let first = report.faults.first();
                match (report.first_bad_seq, first) {
                    (Some(seq), Some(f)) => anyhow::bail!(
                        "ledger verify failed: first bad seq {seq} ({:?} on {}: {})",
                        f.kind,
                        f.replica,
                        f.detail
                    ),
                    (_, Some(f)) => anyhow::bail!(
                        "ledger verify failed: {:?} on {}: {}",
                        f.kind,
                        f.replica,
                        f.detail
                    ),
                    _ => anyhow::bail!("ledger verify failed"),
                }
            }
        }
        LedgerCommand::Balances { json } => {
            let report = verify(&replicas).await?;
            if json {
                println!("{}", serde_json::to_string(&report.balances)?);
            } else {
                for (c, amount) in &report.balances {
                    println!("{c}\t{amount}");
                }
            }
            if !report.ok {
                anyhow::bail!(
                    "balances are from the longest agreed chain, but the log has faults (first bad seq {}); run `tributary ledger verify`",
                    report
                        .first_bad_seq
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        LedgerCommand::Repair { full } => {
            let r = repair(&replicas, full).await?;
            println!("{}", serde_json::to_string(&r)?);
            if !r.errors.is_empty() || !r.unreachable.is_empty() {
                anyhow::bail!(
                    "repair incomplete: {} unreachable replica(s), {} error(s)",
                    r.unreachable.len(),
                    r.errors.len()
                );
            }
        }
        LedgerCommand::Append {
            request_id,
            shares,
            adapter,
            token,
        } => {
            let mut shares = shares
                .iter()
                .map(|s| parse_share(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            shares.sort_by(|a, b| a.contributor.cmp(&b.contributor));
            let opts = WriterOptions {
                fencing: token.map(Fencing::Token).unwrap_or(Fencing::Embedded),
                ..Default::default()
            };
            let mut w = LogWriter::open(replicas, opts).await?;
            let record = RewardRecord {
                request_id,
                adapter: adapter
                    .as_deref()
                    .map(parse_digest)
                    .transpose()?
                    .unwrap_or([0; 32]),
                attribution: [0; 32],
                time_ms: w.clock().now_ms(),
                total: shares.iter().map(|s| s.amount).sum(),
                shares,
            };
            let a = w.append(vec![record]).await?;
            w.flush().await;
            println!(
                "{}",
                serde_json::json!({"seq": a.seq, "epoch": w.epoch(), "acks": a.acks})
            );
        }
    }
    Ok(())
}

/// `tributary bench ledger`: appends N synthetic reward batches and prints one JSON line.
#[derive(Debug, Args)]
pub struct BenchLedgerArgs {
    /// Replica stores, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub replicas: Vec<String>,
    /// Number of appends (reward batches).
    #[arg(long, default_value_t = 1000)]
    pub entries: u64,
    /// Reward records per batch.
    #[arg(long, default_value_t = 8)]
    pub records: u64,
}

pub fn bench(args: BenchLedgerArgs) -> anyhow::Result<()> {
    runtime()?.block_on(bench_async(args))
}

async fn bench_async(args: BenchLedgerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.entries > 0, "--entries must be at least 1");
    let replicas = Replicas::open(&args.replicas).context("--replicas")?;
    let labels: Vec<String> = replicas
        .stores()
        .iter()
        .map(|s| s.label().to_string())
        .collect();
    let mut w = LogWriter::open(replicas, WriterOptions::default()).await?;
    let mut latencies = Vec::with_capacity(args.entries as usize);
    let started = std::time::Instant::now();
    for i in 0..args.entries {
        let batch: Vec<RewardRecord> = (0..args.records)
            .map(|r| {
                let mut sums = std::collections::BTreeMap::<String, u64>::new();
                for c in 0..4u64 {
                    *sums
                        .entry(format!("contributor-{:03}", (i + r + c * 37) % 500))
                        .or_default() += 10 + c;
                }
                let shares: Vec<Share> = sums
                    .into_iter()
                    .map(|(contributor, amount)| Share {
                        contributor,
                        amount,
                    })
                    .collect();
                RewardRecord {
                    request_id: format!("bench-{}-{i}-{r}", w.epoch()),
                    adapter: [1; 32],
                    attribution: [2; 32],
                    time_ms: w.clock().now_ms(),
                    total: shares.iter().map(|s| s.amount).sum(),
                    shares,
                }
            })
            .collect();
        let a = w.append(batch).await?;
        latencies.push(a.latency.as_secs_f64() * 1e3);
    }
    let elapsed = started.elapsed().as_secs_f64();
    w.flush().await;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        serde_json::json!({
            "bench": "ledger",
            "replicas": labels.len(),
            "stores": labels,
            "entries": args.entries,
            "records_per_entry": args.records,
            "seconds": elapsed,
            "appends_per_s": args.entries as f64 / elapsed,
            "p50_ack_ms": pct(0.50),
            "p99_ack_ms": pct(0.99),
            "max_ack_ms": pct(1.0),
        })
    );
    Ok(())
}
