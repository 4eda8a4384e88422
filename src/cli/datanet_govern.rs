//! `tributary datanet` governance commands: terms and amend, takedown and its log, verify,
//! the review queue, reputation. The acting identity is `--key FILE` (an ed25519 secret
//! key: acts as `ed25519:<public key>`), `--api-key K --keys FILE` (the contributor the
//! keys file maps it to), or neither: the local operator, who is admin.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tributary_ledger::datanet::identity::{self, KeyRing};
use tributary_ledger::datanet::license::{self, License, TermsChange};
use tributary_ledger::datanet::scan::Policy;
use tributary_ledger::datanet::{Actor, Datanets, Scope};

use super::DatanetCommand;

/// Licence and terms options of `create` and `amend`.
#[derive(Debug, Args)]
pub struct TermsArgs {
    /// SPDX licence identifier (checked against ledger/data/spdx-license-ids.txt);
    /// `create` defaults to NOASSERTION.
    #[arg(long, conflicts_with = "license_file")]
    license: Option<String>,
    /// A custom licence text (recorded with its BLAKE3 digest).
    #[arg(long)]
    license_file: Option<PathBuf>,
    /// Contribution terms text that uploads consent to.
    #[arg(long)]
    terms: Option<PathBuf>,
    /// Scanner policy per kind, e.g. `email=reject,high_entropy=allow` (actions: allow,
    /// redact, hold, reject; kinds: email, phone, card, iban, national_id, ip_address,
    /// private_key, api_token, high_entropy).
    #[arg(long)]
    policy: Option<String>,
    /// Whether uploads land pending until the owner accepts them.
    #[arg(long)]
    review: Option<bool>,
}

impl TermsArgs {
    pub fn change(&self, creating: bool) -> anyhow::Result<TermsChange> {
        let license = match (&self.license, &self.license_file) {
            (Some(id), _) => Some(License::spdx(id).context("--license")?),
            (None, Some(p)) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading --license-file {}", p.display()))?;
                Some(License::custom(&text).context("--license-file")?)
            }
            (None, None) => {
                if creating {
                    eprintln!(
                        "warning: no --license given; the datanet's licence is NOASSERTION \
                         (adapters trained on it will say so)"
                    );
                }
                None
            }
        };
        let terms_text = match &self.terms {
            Some(p) => {
                Some(Some(std::fs::read_to_string(p).with_context(|| {
                    format!("reading --terms {}", p.display())
                })?))
            }
            None => None,
        };
        let policy = match &self.policy {
            Some(s) => Some(
                Policy::parse(s)
                    .map_err(anyhow::Error::msg)
                    .context("--policy")?,
            ),
            None => None,
        };
        Ok(TermsChange {
            license,
            terms_text,
            policy,
            review: self.review,
        })
    }
}

/// Who is acting.
#[derive(Debug, Args)]
pub struct ActorArgs {
    /// Act as the holder of this ed25519 secret key file.
    #[arg(long, conflicts_with = "api_key")]
    key: Option<PathBuf>,
    /// Act as the contributor this API key maps to (needs --keys).
    #[arg(long, requires = "keys")]
    api_key: Option<String>,
    /// Keys file: one `API_KEY CONTRIBUTOR` a line.
    #[arg(long)]
    keys: Option<PathBuf>,
}

impl ActorArgs {
    pub fn actor(&self) -> anyhow::Result<Actor> {
        if let Some(p) = &self.key {
            let secret = std::fs::read_to_string(p)
                .with_context(|| format!("reading key file {}", p.display()))?;
            let (pk, _) = identity::sign_bytes(secret.trim(), b"whoami")?;
            return Ok(Actor::Contributor(identity::contributor_id(&pk)));
        }
        if let (Some(k), Some(p)) = (&self.api_key, &self.keys) {
            let ring = KeyRing::parse(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("reading keys file {}", p.display()))?,
            )?;
            let who = ring
                .lookup(k)
                .context("--api-key: unknown API key (not in --keys)")?;
            return Ok(Actor::Contributor(who.to_string()));
        }
        Ok(Actor::Admin)
    }
}

/// Signs an upload: over its digest and the datanet's terms digest when it has terms.
pub async fn sign_upload(
    d: &Datanets,
    name: &str,
    secret_hex: &str,
    digest: &[u8; 32],
) -> anyhow::Result<([u8; 32], [u8; 64])> {
    match d.terms(name).await? {
        Some((_, terms_digest)) => {
            let t: [u8; 32] = identity::parse_hex(&terms_digest, "terms digest")?;
            Ok(identity::sign_bytes(
                secret_hex,
                &license::consent_message(digest, &t),
            )?)
        }
        None => Ok(identity::sign_digest(secret_hex, digest)?),
    }
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

pub async fn run(d: &Datanets, cmd: DatanetCommand) -> anyhow::Result<()> {
    match cmd {
        DatanetCommand::Terms {
            name,
            history,
            json,
        } => {
            let list = if history {
                d.terms_history(&name).await?
            } else {
                d.terms(&name).await?.into_iter().collect()
            };
            if list.is_empty() {
                anyhow::bail!(
                    "datanet `{name}` has no terms (it was created before terms existed)"
                );
            }
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(t, digest)| serde_json::json!({"terms": t, "digest": digest}))
                    .collect();
                return print_json(&if history {
                    serde_json::json!(v)
                } else {
                    v[0].clone()
                });
            }
            for (t, digest) in list {
                println!(
                    "terms {} ({digest}): licence {}, review {}, by {}",
                    t.number,
                    t.license.label(),
                    t.review,
                    t.by
                );
                let policy: Vec<String> = t
                    .policy
                    .0
                    .iter()
                    .map(|(k, a)| format!("{}={a:?}", k.name()))
                    .collect();
                println!("  policy: {}", policy.join(", ").to_lowercase());
                if let Some(text) = &t.terms_text {
                    println!("  terms: {}", text.trim());
                }
            }
        }
        DatanetCommand::Licenses {
            name,
            version,
            json,
        } => {
            let v = d.resolve_version(&name, version.as_deref()).await?;
            let m = d.manifest(&name, &v).await?;
            let list = d.licenses_of(&m, &v).await?;
            if json {
                return print_json(&list);
            }
            for l in list {
                println!(
                    "{}	terms {}	{} credited examples",
                    l.license, l.terms, l.examples
                );
            }
        }
        DatanetCommand::Amend {
            name,
            terms,
            actor,
            json,
        } => {
            let (number, version) = d
                .amend(&name, &actor.actor()?, terms.change(false)?)
                .await?;
            let (_, digest) = d.terms(&name).await?.context("terms were just written")?;
            if json {
                return print_json(
                    &serde_json::json!({"datanet": name, "terms": number, "terms_digest": digest, "version": version}),
                );
            }
            if version.is_empty() {
                println!("{name}: terms {number} ({digest}) in force (no version yet)");
            } else {
                println!("{name}: terms {number} ({digest}) in force; version {version}");
            }
        }
        DatanetCommand::Takedown {
            name,
            examples,
            contributor,
            reason,
            resume,
            actor,
            json,
        } => {
            let report = if resume {
                match d.resume_takedown(&name).await? {
                    Some(r) => r,
                    None => {
                        println!("{name}: no unapplied takedown");
                        return Ok(());
                    }
                }
            } else {
                let scope = match contributor {
                    Some(c) => Scope::Contributor(c),
                    None if !examples.is_empty() => Scope::Examples(examples),
                    None => anyhow::bail!("takedown needs --example ID… or --contributor ID"),
                };
                d.takedown(&name, &actor.actor()?, &scope, &reason).await?
            };
            if json {
                return print_json(&report);
            }
            println!(
                "{name}: takedown {} withdrew {} entries ({} texts erased); version {} ({})",
                report.seq,
                report.withdrawn.len(),
                report.erased,
                report.number,
                report.version
            );
            for a in &report.adapters {
                println!(
                    "  adapter {} (job {}) was trained on {}: retrain it",
                    a.adapter_digest, a.job_id, a.data_digest
                );
            }
        }
        DatanetCommand::Takedowns { name, json } => {
            let log = d.takedown_log(&name).await?;
            if json {
                let v: Vec<_> = log
                    .iter()
                    .map(|(e, digest)| serde_json::json!({"entry": e, "digest": digest}))
                    .collect();
                return print_json(&v);
            }
            for (e, digest) in log {
                println!(
                    "{}\t{digest}\t{}\t{} entries\t{}",
                    e.seq,
                    e.actor,
                    e.withdrawn.len(),
                    e.reason
                );
            }
        }
        DatanetCommand::Verify { name, json } => {
            let r = d.verify(&name).await?;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{name}: {} versions, {} examples ({} erased), {} takedowns",
                    r.versions, r.examples, r.erased, r.takedowns
                );
                for f in &r.faults {
                    println!("  FAULT {f}");
                }
            }
            if !r.ok() {
                anyhow::bail!("datanet `{name}` has {} faults", r.faults.len());
            }
        }
        DatanetCommand::Pending { name, actor, json } => {
            let items = d.pending(&name, &actor.actor()?).await?;
            if json {
                return print_json(&items);
            }
            for p in items {
                println!(
                    "{}\t{}\tline {}\t{}",
                    p.item,
                    p.contributor,
                    p.line,
                    p.reasons.join("; ")
                );
            }
        }
        DatanetCommand::Review {
            name,
            items,
            accept,
            reject: _,
            reason,
            actor,
            json,
        } => {
            let r = d
                .review(&name, &actor.actor()?, &items, accept, &reason)
                .await?;
            if json {
                return print_json(&r);
            }
            println!(
                "{name}: version {} ({}) — {} accepted, {} duplicates, {} near-duplicates, {} rejected",
                r.number,
                r.version,
                r.accepted,
                r.duplicates,
                r.near_duplicates,
                r.rejected.len()
            );
        }
        DatanetCommand::Reputation {
            name,
            contributor,
            limit,
            json,
        } => {
            let list = match contributor {
                Some(c) => vec![d.reputation(&name, &c).await?],
                None => d.leaderboard(&name, limit).await?,
            };
            if json {
                return print_json(&list);
            }
            println!("contributor\taccepted\trejected\tdup\tnear\twithdrawn\tpending\trate");
            for r in list {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.2}{}",
                    r.contributor,
                    r.accepted,
                    r.rejected,
                    r.duplicates,
                    r.near_duplicates,
                    r.withdrawn,
                    r.pending,
                    r.acceptance_rate,
                    if r.quarantined { "\tquarantined" } else { "" }
                );
            }
        }
        other => anyhow::bail!("unexpected command {other:?}"),
    }
    Ok(())
}
