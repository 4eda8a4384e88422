//! `tributary bench …`: benchmarks, each printing one JSON line.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Reward log: append N synthetic batches; appends/s and p99 acknowledgement latency.
    Ledger(super::ledger::BenchLedgerArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ledger(args) => super::ledger::bench(args),
    }
}
