//! Top-level command tree. One file per command family, each owning its clap types.
// The binary's edge reads the real clock (progress, timings, timestamps) and hands it to the libraries.
#![allow(clippy::disallowed_methods)]

pub mod adapter;
pub mod allow;
pub mod api_key;
pub mod attribution;
pub mod bench;
pub mod bench_attribution;
pub mod bench_cluster;
pub mod bench_model;
pub mod bench_serve;
pub mod certs;
pub mod certs_secret;
pub mod cluster;
pub mod datanet;
pub mod demo;
pub mod demo_data;
pub mod demo_loop;
pub mod dev;
pub mod device_arg;
pub mod gateway;
pub mod job;
pub mod keys;
pub mod ledger;
pub mod model;
pub mod model_export_lora;
pub mod model_finetune;
pub mod model_generate;
pub mod model_import;
pub mod model_init;
pub mod model_merge;
pub mod serve_engine;
pub mod termination;
pub mod worker_serve;

use clap::{Parser, Subcommand};

/// Tributary: community data in, specialized AI out, contributors paid.
#[derive(Debug, Parser)]
#[command(name = "tributary", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The README's first command: make a small model, fine-tune a LoRA adapter on built-in
    /// data, and generate with and without it (nothing to install, no servers).
    Demo(demo::DemoArgs),
    /// Models: make random checkpoints, generate text, fine-tune LoRA adapters.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Benchmarks that print one JSON line each.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Development certificates: a cluster CA and node certificates for mutual TLS.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Coordinator, in-process workers and the job API in one process (nothing to install).
    Dev(Box<dev::DevArgs>),
    /// Fine-tuning jobs: submit, status, cancel, logs (talks to `dev` or a coordinator).
    Job(job::JobArgs),
    /// Served adapters: list, show, register, delete (talks to `dev`'s gateway).
    Adapter(adapter::AdapterArgs),
    /// API keys in a store (operator access): create, list, revoke.
    Keys(keys::KeysArgs),
    /// Run a coordinator (cluster mode): campaigns in etcd, the leader drives jobs over QUIC.
    Coordinator(cluster::CoordinatorArgs),
    /// Run a worker (cluster mode): serves QUIC with mTLS, registers in etcd under a lease;
    /// with `--base-model`, also serves inference to gateways.
    Worker(Box<cluster::WorkerArgs>),
    /// Run a gateway (cluster mode): the OpenAI API over the serving workers in etcd.
    Gateway(gateway::GatewayArgs),
    /// Datanets: community datasets (create, upload, list, show, diff, export).
    Datanet(datanet::DatanetArgs),
    /// The reward log: verify, balances, repair, append.
    Ledger(ledger::LedgerArgs),
    /// Attributions of served answers: explain one, or rerun it and check the bits.
    Attribution(attribution::AttributionArgs),
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Model(cmd) => model::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Certs(cmd) => certs::run(cmd),
        Command::Dev(args) => dev::run(*args),
        Command::Job(args) => job::run(args),
        Command::Adapter(args) => adapter::run(args),
        Command::Keys(args) => keys::run(args),
        Command::Coordinator(args) => cluster::run_coordinator(args),
        Command::Worker(args) => cluster::run_worker(*args),
        Command::Gateway(args) => gateway::run(args),
        Command::Datanet(args) => datanet::run(args),
        Command::Ledger(args) => ledger::run(args),
        Command::Attribution(args) => attribution::run(args),
    }
}
