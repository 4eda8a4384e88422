//! `tributary certs …`: a development cluster CA and node certificates (PEM files in a dir).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tributary_protocol::{NodeId, certs};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a cluster CA (`ca.pem`, `ca.key`) in DIR.
    Init {
        #[arg(long, env = "TRIBUTARY_CERTS")]
        out: PathBuf,
    },
    /// Issue a node certificate (`NODE.pem`, `NODE.key`) signed by the CA in DIR.
    Issue {
        /// Node name: lowercase letters, digits and '-'; also the certificate's DNS name.
        #[arg(long)]
        name: String,
        #[arg(long, env = "TRIBUTARY_CERTS")]
        dir: PathBuf,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { out } => {
            let ca = certs::init_ca(&out).context("certs init")?;
            println!("{}", ca.display());
        }
        CertsCommand::Issue { name, dir } => {
            let node = NodeId::new(name).context("certs issue --name")?;
            let (cert, key) = certs::issue(&dir, &node).context("certs issue")?;
            println!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(())
}
