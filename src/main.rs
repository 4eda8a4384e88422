//! The `tributary` binary: command-line wiring only. Each subcommand lives in `cli/` and
//! calls into the library crates; no logic beyond argument parsing and output here.
// The CLI indexes JSON answers (`serde_json::Value`'s `Index` returns `Null`, never panics)
// and its own argument lists.
#![allow(clippy::indexing_slicing)]

mod cli;
mod heap;

use clap::Parser;

fn main() -> std::process::ExitCode {
    heap::keep_freed_memory();
    // Two rustls crypto providers are linked (quinn's ring, object_store's aws-lc-rs):
    // pick one as the process default before any TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = cli::Cli::parse();
    cli::init_tracing(args.verbose);
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
