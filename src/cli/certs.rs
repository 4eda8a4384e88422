//! `tributary certs …`: a development cluster CA and node certificates (PEM files in a dir),
//! or a Kubernetes Secret with a fresh CA and one certificate naming every pod
//! (`certs secret`, see `certs_secret.rs`).

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
    /// A Kubernetes Secret (`ca.crt`, `tls.crt`, `tls.key`, cert-manager's names) with a new
    /// CA and one certificate naming every --dns-name: printed, or created with --create.
    Secret(super::certs_secret::SecretArgs),
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
        CertsCommand::Secret(args) => super::certs_secret::run(args)?,
    }
    Ok(())
}
