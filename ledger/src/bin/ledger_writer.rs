//! `tributary-ledger-writer`: a reward-log writer process for the kill -9 tests. Opens the
//! log on the given replicas, appends synthetic reward batches, and prints `ack SEQ HASH`
//! after each majority acknowledgement (flushed), so a test that SIGKILLs it at a random
//! moment knows exactly which entries were acknowledged.
//!
//! Usage: `tributary-ledger-writer --replicas URL[,URL…] [--count N] [--token T]`

use std::io::Write;
use std::process::ExitCode;

use tributary_ledger::rewards::{Fencing, LogWriter, Replicas, RewardRecord, Share, WriterOptions};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn run(args: Vec<String>) -> Result<(), String> {
    let urls: Vec<String> = arg(&args, "--replicas")
        .ok_or("--replicas URL[,URL…] is required")?
        .split(',')
        .map(str::to_string)
        .collect();
    let count: u64 = match arg(&args, "--count") {
        Some(c) => c
            .parse()
            .map_err(|_| format!("--count `{c}` is not a number"))?,
        None => u64::MAX,
    };
    let fencing = match arg(&args, "--token") {
        Some(t) => Fencing::Token(
            t.parse()
                .map_err(|_| format!("--token `{t}` is not a number"))?,
        ),
        None => Fencing::Embedded,
    };
    let replicas = Replicas::open(&urls).map_err(|e| e.to_string())?;
    let opts = WriterOptions {
        fencing,
        ..Default::default()
    };
    let mut w = LogWriter::open(replicas, opts)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "epoch {}", w.epoch()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    for i in 0..count {
        let amount = 1 + (i % 7);
        let record = RewardRecord {
            request_id: format!("e{}-{i}", w.epoch()),
            adapter: [7; 32],
            attribution: [8; 32],
            time_ms: w.clock().now_ms(),
            total: amount * 3,
            shares: vec![
                Share {
                    contributor: "alice".into(),
                    amount,
                },
                Share {
                    contributor: "bob".into(),
                    amount: amount * 2,
                },
            ],
        };
        let a = w.append(vec![record]).await.map_err(|e| e.to_string())?;
        writeln!(out, "ack {} {}", a.seq, blake3::Hash::from(a.hash).to_hex())
            .map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
