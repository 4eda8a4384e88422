//! `tributary bench cluster`: coordination overhead per step (two `tributary worker`
//! processes over QUIC vs one in-process worker, same global batch), gradient bytes per step
//! and coordinator failover time, as one JSON line. The logic is
//! `tributary_loadtests::cluster`; it starts a real etcd (Debian's `etcd`, or
//! `TRIBUTARY_ETCD_BIN`) and this binary's own `worker` and `coordinator` subcommands.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tributary_loadtests::cluster::ClusterBench;

/// `tributary bench cluster`.
#[derive(Debug, Args)]
pub struct BenchClusterArgs {
    /// A config.json-style model configuration (random weights are made for it).
    #[arg(long, default_value = "assets/demo/config.json")]
    pub config: PathBuf,
    /// Tokenizer files used when none lie beside the config.
    #[arg(long, default_value = "assets/demo")]
    pub tokenizer_dir: PathBuf,
    /// Training data (JSONL chat examples).
    #[arg(long, default_value = "assets/demo/train.jsonl")]
    pub data: PathBuf,
    /// Steps of each timed run.
    #[arg(long, default_value_t = 12)]
    pub steps: u64,
    /// Steps at the start of each run left out of the medians.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Examples per step (the global batch).
    #[arg(long, default_value_t = 8)]
    pub batch: u32,
    /// Micro-batches per step (the unit dealt to workers; at least 2 for 2 workers).
    #[arg(long, default_value_t = 4)]
    pub grad_accum: u32,
    /// LoRA rank (alpha = 2·rank).
    #[arg(long, default_value_t = 16)]
    pub rank: u32,
    /// LoRA target modules, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub targets: Vec<String>,
    /// Training seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Lease TTL in seconds (worker registration and coordinator leadership).
    #[arg(long, default_value_t = 3)]
    pub lease_ttl: i64,
    /// Steps of the failover job (its leader is killed a third of the way in; 0 skips it).
    #[arg(long, default_value_t = 60)]
    pub failover_steps: u64,
}

pub fn run(args: BenchClusterArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let bench = ClusterBench {
        exe,
        config: args.config,
        tokenizer_dir: args.tokenizer_dir,
        data: args.data,
        steps: args.steps,
        warmup: args.warmup,
        batch_size: args.batch,
        grad_accum: args.grad_accum,
        rank: args.rank,
        targets: args.targets,
        seed: args.seed,
        lease_ttl: args.lease_ttl,
        failover_steps: args.failover_steps,
    };
    let report = bench.run().context("bench cluster")?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
