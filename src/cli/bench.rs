//! `tributary bench …`: benchmarks, each printing one JSON line.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Reward log: append N synthetic batches; appends/s and p99 acknowledgement latency.
    Ledger(super::ledger::BenchLedgerArgs),
    /// Model: LoRA training steps on random weights; tokens/s, GFLOP/s, GEMM peak, peak RSS.
    Train(super::bench_model::BenchTrainArgs),
    /// Model: greedy generation with K adapters; tokens/s, GFLOP/s, GEMM peak, peak RSS.
    Generate(super::bench_model::BenchGenerateArgs),
    /// Cluster: step time with 2 worker processes over QUIC vs 1 in-process worker, gradient
    /// bytes per step, coordinator failover time (starts a real etcd).
    Cluster(super::bench_cluster::BenchClusterArgs),
    /// Serving: S-LoRA-style load (power-law adapters, Gamma arrivals) against a live
    /// gateway; throughput, TTFT/TPOT p50/p90/p99, SLO attainment.
    Serve(super::bench_serve::BenchServeArgs),
    /// Attribution: planted contributors' skills, AUC/recall/top-1 per method, attacks, cost.
    Attribution(super::bench_attribution::BenchAttributionArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ledger(args) => super::ledger::bench(args),
        BenchCommand::Train(args) => super::bench_model::train(args),
        BenchCommand::Generate(args) => super::bench_model::generate(args),
        BenchCommand::Cluster(args) => super::bench_cluster::run(args),
        BenchCommand::Serve(args) => super::bench_serve::run(args),
        BenchCommand::Attribution(args) => super::bench_attribution::run_bench(args),
    }
}
