//! `tributary datanet …`: create, upload, list, show, diff, export, keygen — community
//! datasets in an object store (`--store URL`, default `./tributary-data`). Governance
//! (terms, takedown, review, reputation, verify) is in `datanet_govern.rs`.

#[path = "datanet_govern.rs"]
mod govern;

use std::io::{BufReader, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tributary_ledger::Store;
use tributary_ledger::datanet::identity::{self, KeyRing, Uploader};
use tributary_ledger::datanet::{Datanets, UploadReport};

#[derive(Debug, Args)]
pub struct DatanetArgs {
    /// Object store: a directory, file:///dir, s3://bucket/prefix?endpoint=…, memory://name.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_STORE",
        default_value = "./tributary-data"
    )]
    pub store: String,
    #[command(subcommand)]
    pub command: DatanetCommand,
}

#[derive(Debug, Subcommand)]
pub enum DatanetCommand {
    /// Create an empty datanet with a licence and contribution terms.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        terms: govern::TermsArgs,
        /// The owning contributor (reviews uploads, changes terms); default: admin only.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Show the terms in force (licence, terms text, policy, review) and their digest.
    Terms {
        name: String,
        /// Every terms record, oldest first.
        #[arg(long)]
        history: bool,
        #[arg(long)]
        json: bool,
    },
    /// The licences of a version's credited examples (one per terms record they came
    /// under): what an adapter trained on it inherits.
    Licenses {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change the licence, terms, scanner policy or review setting: a new terms record and
    /// a new version; earlier uploads keep the terms they were made under.
    Amend {
        name: String,
        #[command(flatten)]
        terms: govern::TermsArgs,
        #[command(flatten)]
        actor: govern::ActorArgs,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw examples and erase their text from every version (new version, tombstones,
    /// takedown log entry, affected adapters listed and marked).
    Takedown {
        name: String,
        /// Example content ids (64 hex).
        #[arg(long = "example", num_args = 1.., conflicts_with = "contributor")]
        examples: Vec<String>,
        /// Every example of this contributor.
        #[arg(long)]
        contributor: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        /// Complete a takedown a crash left unapplied (no new takedown).
        #[arg(long, conflicts_with_all = ["examples", "contributor"])]
        resume: bool,
        #[command(flatten)]
        actor: govern::ActorArgs,
        #[arg(long)]
        json: bool,
    },
    /// The takedown log (append-only, hash-chained).
    Takedowns {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Verify versions, texts, tombstones and the takedown log; non-zero exit on a fault.
    Verify {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Rows waiting for the owner's review (a contributor sees only their own).
    Pending {
        name: String,
        #[command(flatten)]
        actor: govern::ActorArgs,
        #[arg(long)]
        json: bool,
    },
    /// Accept or reject pending rows (owner or admin); a rejection needs --reason.
    Review {
        name: String,
        /// Item ids from `datanet pending`.
        #[arg(required = true)]
        items: Vec<String>,
        #[arg(long, conflicts_with = "reject", required_unless_present = "reject")]
        accept: bool,
        #[arg(long)]
        reject: bool,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        actor: govern::ActorArgs,
        #[arg(long)]
        json: bool,
    },
    /// Contributor reputation: the leaderboard, or one contributor.
    Reputation {
        name: String,
        #[arg(long)]
        contributor: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Upload a JSONL file (alpaca, prompt/completion or OpenAI messages) as a new version.
    Upload {
        name: String,
        file: PathBuf,
        /// Contributor for rows without a `contributor` field (local operator upload).
        #[arg(long)]
        contributor: Option<String>,
        /// Sign the upload with this ed25519 secret key file (from `datanet keygen`).
        #[arg(long, conflicts_with_all = ["api_key", "contributor", "signature"])]
        key: Option<PathBuf>,
        /// A detached signature (hex) over the BLAKE3 digest of FILE; needs --public-key.
        #[arg(long, requires = "public_key", conflicts_with_all = ["api_key", "contributor"])]
        signature: Option<String>,
        /// The signer's ed25519 public key (hex).
        #[arg(long, requires = "signature")]
        public_key: Option<String>,
        /// An API key, mapped to a contributor by --keys, or else by the store's key store
        /// (a key with the `contribute` scope; see docs/api.md).
        #[arg(long, conflicts_with = "contributor")]
        api_key: Option<String>,
        /// Keys file: one `API_KEY CONTRIBUTOR` a line.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Print one JSON report.
        #[arg(long)]
        json: bool,
    },
    /// List datanets.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a datanet's versions (or one version with --version).
    Show {
        name: String,
        /// A version digest (or unique prefix) or number.
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Differences between two versions (digests, prefixes or numbers).
    Diff {
        name: String,
        from: String,
        to: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a version as JSONL (credited examples; --all adds zero-weight copies).
    Export {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        all: bool,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make an ed25519 key pair: writes the secret key (hex) to --out, prints the
    /// contributor id.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the BLAKE3 digest of a file and, with --key, its signature (for signed
    /// uploads over HTTP); with --datanet, the signature covers the file's digest and the
    /// datanet's terms digest (the consent a signed upload to it needs).
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        datanet: Option<String>,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn file_digest(path: &PathBuf) -> anyhow::Result<[u8; 32]> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    identity::digest_reader(f).with_context(|| format!("reading {}", path.display()))
}

fn read_secret(path: &PathBuf) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    Ok(s.trim().to_string())
}

fn print_report(r: &UploadReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    println!(
        "{}: version {} ({}) — {} accepted, {} duplicates, {} near-duplicates, {} rejected",
        r.datanet,
        r.number,
        r.version,
        r.accepted,
        r.duplicates,
        r.near_duplicates,
        r.rejected.len()
    );
    for e in &r.rejected {
        let field = if e.field.is_empty() { "-" } else { &e.field };
        println!("  line {}: {}: {}", e.line, field, e.reason);
    }
    for q in &r.quarantined {
        println!("  contributor {q} is now quarantined");
    }
    for f in &r.scan {
        println!(
            "  line {}: {}: {} at characters {}..{} ({:?})",
            f.line,
            f.field,
            f.kind.name(),
            f.start,
            f.end,
            f.action
        );
    }
    for p in &r.pending {
        println!(
            "  line {}: pending review as item {} ({})",
            p.line,
            p.item,
            p.reasons.join("; ")
        );
    }
    Ok(())
}

pub fn run(args: DatanetArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DatanetArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.store).context("--store")?;
    let d = Datanets::new(store);
    match args.command {
        DatanetCommand::Create {
            name,
            description,
            terms,
            owner,
        } => {
            let change = terms.change(true)?;
            d.create_governed(&name, &description, owner.as_deref(), change)
                .await?;
            let (t, digest) = d.terms(&name).await?.context("terms were just written")?;
            println!(
                "created datanet {name} in {} (licence {}, terms {digest})",
                args.store,
                t.license.label()
            );
        }
        DatanetCommand::Upload {
            name,
            file,
            contributor,
            key,
            signature,
            public_key,
            api_key,
            keys,
            json,
        } => {
            let started = std::time::Instant::now();
            let uploader = if let Some(key) = key {
                let digest = file_digest(&file)?;
                let (pk, sig) =
                    govern::sign_upload(&d, &name, &read_secret(&key)?, &digest).await?;
                Uploader::Signed {
                    public_key: pk,
                    signature: sig,
                }
            } else if let (Some(sig), Some(pk)) = (signature, public_key) {
                Uploader::Signed {
                    public_key: identity::parse_hex(&pk, "--public-key")?,
                    signature: identity::parse_hex(&sig, "--signature")?,
                }
            } else if let Some(k) = api_key {
                Uploader::ApiKey(k)
            } else {
                Uploader::Operator(contributor)
            };
            let ring = match (keys, &uploader) {
                (Some(p), _) => Some(KeyRing::parse(
                    &std::fs::read_to_string(&p)
                        .with_context(|| format!("reading keys file {}", p.display()))?,
                )?),
                (None, Uploader::ApiKey(k)) => {
                    Some(super::api_key::store_ring(&args.store, k).await?)
                }
                (None, _) => None,
            };
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let report = d
                .upload(
                    &name,
                    BufReader::with_capacity(1 << 16, f),
                    &uploader,
                    ring.as_ref(),
                )
                .await
                .with_context(|| format!("upload {} to {name}", file.display()))?;
            tracing::info!(
                rows = report.rows,
                secs = started.elapsed().as_secs_f64(),
                "upload done"
            );
            print_report(&report, json)?;
        }
        DatanetCommand::List { json } => {
            let list = d.list().await?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for s in list {
                    println!(
                        "{}\t{} versions\t{}",
                        s.name,
                        s.versions,
                        s.head.unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        DatanetCommand::Show {
            name,
            version,
            json,
        } => {
            if let Some(v) = version {
                let digest = d.resolve_version(&name, Some(&v)).await?;
                let m = d.manifest(&name, &digest).await?;
                if json {
                    println!("{}", serde_json::to_string(&m)?);
                } else {
                    let s = tributary_ledger::datanet::VersionSummary::of(&m, &digest);
                    println!("{}", serde_json::to_string_pretty(&s)?);
                }
            } else {
                let versions = d.versions(&name).await?;
                if json {
                    println!("{}", serde_json::to_string(&versions)?);
                } else {
                    for v in versions {
                        println!(
                            "{}\t{}\t{} entries ({} credited)\t{} contributors",
                            v.number, v.version, v.entries, v.weighted, v.contributors
                        );
                    }
                }
            }
        }
        DatanetCommand::Diff {
            name,
            from,
            to,
            json,
        } => {
            let diff = d.diff(&name, &from, &to).await?;
            if json {
                println!("{}", serde_json::to_string(&diff)?);
            } else {
                for e in &diff.added {
                    println!("+ {} {} weight={}", e.id, e.contributor, e.weight);
                }
                for e in &diff.removed {
                    println!("- {} {} weight={}", e.id, e.contributor, e.weight);
                }
                for (c, q) in &diff.quarantine_changes {
                    println!("! {c} quarantined={q}");
                }
            }
        }
        DatanetCommand::Export {
            name,
            version,
            all,
            out,
        } => {
            let n = match out {
                Some(path) => {
                    let f = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    d.export(&name, version.as_deref(), all, std::io::BufWriter::new(f))
                        .await?
                }
                None => {
                    let stdout = std::io::stdout();
                    d.export(&name, version.as_deref(), all, stdout.lock())
                        .await?
                }
            };
            tracing::info!(lines = n, "exported");
        }
        DatanetCommand::Keygen { out } => {
            let kp = identity::generate();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&out)
                .with_context(|| format!("creating {} (it must not exist)", out.display()))?;
            writeln!(f, "{}", kp.secret_hex)?;
            println!("{}", kp.contributor);
        }
        DatanetCommand::Sign { file, key, datanet } => {
            let digest = file_digest(&file)?;
            let (pk, sig) = match &datanet {
                Some(n) => govern::sign_upload(&d, n, &read_secret(&key)?, &digest).await?,
                None => identity::sign_digest(&read_secret(&key)?, &digest)?,
            };
            println!(
                "{}",
                serde_json::json!({
                    "digest": identity::hex(&digest),
                    "public_key": identity::hex(&pk),
                    "signature": identity::hex(&sig),
                    "contributor": identity::contributor_id(&pk),
                })
            );
        }
        other => govern::run(&d, other).await?,
    }
    Ok(())
}
