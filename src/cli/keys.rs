//! `tributary keys create|list|revoke --store URL`: API keys written straight into a store's
//! key store (operator access, like `datanet`), for clusters whose coordinators and
//! gateways read keys from that store. A running gateway also manages keys over
//! `/v1/keys` with an admin key.

use anyhow::Context;
use clap::{Args, Subcommand};
use tributary_ledger::keys::{KeyStore, Scope};
use tributary_ledger::store::Store;

/// `tributary keys …`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// The store the gateway or coordinator reads keys from (`--store` of those roles;
    /// `<data-dir>/store` for `tributary dev`).
    #[arg(
        long,
        env = "TRIBUTARY_STORE",
        global = true,
        default_value = "tributary-data/store"
    )]
    pub store: String,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key; prints the secret once (only its hash is stored).
    Create {
        /// The identity the key speaks for (recorded on jobs, adapters, names, usage).
        #[arg(long)]
        owner: String,
        /// inference, build, contribute or admin (repeat for several).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// Every live key (ids, owners, scopes; never secrets).
    List,
    /// Revoke a key by its id.
    Revoke { id: String },
}

pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let keys = KeyStore::new(Store::open(&args.store).context("--store")?);
        match args.command {
            KeysCommand::Create { owner, scopes } => {
                let scopes = scopes
                    .iter()
                    .map(|s| s.parse::<Scope>())
                    .collect::<Result<Vec<_>, _>>()?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let (secret, rec) = keys.create(&owner, &scopes, now).await?;
                eprintln!("key {} for {} ({:?})", rec.id, rec.owner, rec.scopes);
                println!("{secret}");
            }
            KeysCommand::List => {
                for r in keys.list().await? {
                    let scopes: Vec<&str> = r.scopes.iter().map(|s| s.as_str()).collect();
                    println!("{}  {:<16}  {}", r.id, r.owner, scopes.join(","));
                }
            }
            KeysCommand::Revoke { id } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                if !keys.revoke(&id, now).await? {
                    anyhow::bail!("no key {id} in {}", args.store);
                }
                println!("revoked {id}");
            }
        }
        Ok(())
    })
}
