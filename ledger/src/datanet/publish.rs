//! Publishing: an upload (authenticate against the terms in force, scan, resolve, merge,
//! write examples, commit the version, queue held rows), and the shared commit step every
//! version-making operation uses: write the manifest under its digest, then conditionally
//! create `heads/<n>`; losing that race means merging again on the new head.

use std::collections::HashSet;
use std::io::BufRead;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use super::{
    DatanetError, Datanets, Head, KeyRing, Manifest, PUBLISH_ATTEMPTS, StoreSource, StoredExample,
    StoredMessage, UploadReport, Uploader, backoff, example_key, identity, ingest, manifest,
};
use crate::metrics::metrics;
use crate::store::Created;

impl Datanets {
    /// Reads, validates, authenticates, merges and publishes one upload.
    pub async fn upload(
        &self,
        name: &str,
        reader: impl BufRead,
        uploader: &Uploader,
        keys: Option<&KeyRing>,
    ) -> Result<UploadReport, DatanetError> {
        let parsed = ingest::parse_upload(reader, &self.limits)?;
        self.publish(name, parsed, uploader, keys).await
    }

    /// Publishes a parsed upload (see [`ingest::parse_upload`]).
    #[tracing::instrument(skip(self, parsed, uploader, keys), fields(rows = parsed.rows))]
    pub async fn publish(
        &self,
        name: &str,
        parsed: ingest::ParsedUpload,
        uploader: &Uploader,
        keys: Option<&KeyRing>,
    ) -> Result<UploadReport, DatanetError> {
        self.meta(name).await?;
        if parsed.rows == 0 {
            return Err(DatanetError::EmptyUpload {
                bytes: parsed.bytes,
            });
        }
        let terms = self.terms(name).await?;
        let terms_digest: Option<[u8; 32]> = match &terms {
            Some((_, d)) => Some(identity::parse_hex(d, "terms digest")?),
            None => None,
        };
        let who = identity::authenticate(uploader, keys, &parsed.digest, terms_digest.as_ref())?;
        self.store.ensure_conditional_create().await?;
        let digest = parsed.digest;
        let digest_hex = blake3::Hash::from(digest).to_hex().to_string();
        let rows = parsed.rows;
        let now_ms = self.clock.now_ms();
        let gate = match &terms {
            Some((t, _)) => ingest::Gate {
                policy: t.policy.clone(),
                review: t.review,
                terms: t.number,
            },
            None => ingest::Gate::default(),
        };
        let consent = terms.as_ref().map(|(t, d)| manifest::Consent {
            terms: t.number,
            terms_digest: d.clone(),
            method: if who.signed {
                "signature"
            } else if who.key.is_some() {
                "api_key"
            } else {
                "operator"
            }
            .to_string(),
            key: who.key.clone(),
            signature: who.signature.clone(),
            time_ms: now_ms,
        });
        let resolved = ingest::resolve(parsed, &who, &gate);
        if resolved.candidates.is_empty() && resolved.rejected.is_empty() {
            // Every row went to review: nothing changes in the datanet yet.
            let pending = self
                .enqueue(name, &resolved.held, &digest_hex, consent.as_ref())
                .await?;
            let head = self.head(name).await?;
            return Ok(UploadReport {
                datanet: name.to_string(),
                version: head.as_ref().map(|h| h.1.clone()).unwrap_or_default(),
                parent: None,
                number: head.map(|h| h.0).unwrap_or(0),
                upload_digest: digest_hex,
                uploader: who.contributor.clone(),
                signed: who.signed,
                rows,
                accepted: 0,
                duplicates: 0,
                near_duplicates: 0,
                rejected: Vec::new(),
                quarantined: Vec::new(),
                retries: 0,
                terms: gate.terms,
                scan: resolved.scan,
                pending,
                published: false,
            });
        }
        let input = ingest::MergeInput {
            datanet: name,
            resolved: &resolved,
            digest,
            rows,
            who: &who,
            rule: self.quarantine,
            now_ms,
            terms: gate.terms,
            consent: consent.clone(),
            event: None,
            reviewed: &[],
        };
        let mut written: HashSet<String> = HashSet::new();
        for attempt in 0..PUBLISH_ATTEMPTS {
            let head = self.head(name).await?;
            let base = match &head {
                Some((_, v)) => Some((self.manifest(name, v).await?, v.clone())),
                None => None,
            };
            let merged = ingest::merge(
                &input,
                base.as_ref().map(|(m, v)| (m, v.as_str())),
                &StoreSource(&self.store),
            )
            .await?;
            self.write_examples(&resolved, &merged.new_examples, &mut written)
                .await?;
            let Some(version) = self.commit_version(name, &merged.manifest).await? else {
                // Another upload published version `number` first: merge again on it.
                backoff(attempt).await;
                continue;
            };
            let number = merged.manifest.number;
            if let Some(m) = metrics() {
                m.rows
                    .with_label_values(&["accepted"])
                    .inc_by(merged.accepted);
                m.rows
                    .with_label_values(&["duplicate"])
                    .inc_by(merged.duplicates);
                m.rows
                    .with_label_values(&["near_duplicate"])
                    .inc_by(merged.near_duplicates);
                m.rows
                    .with_label_values(&["rejected"])
                    .inc_by(merged.rejected.len() as u64);
                m.rows
                    .with_label_values(&["pending"])
                    .inc_by(resolved.held.len() as u64);
            }
            let pending = self
                .enqueue(name, &resolved.held, &digest_hex, consent.as_ref())
                .await?;
            tracing::info!(%version, number, accepted = merged.accepted, "published datanet version");
            return Ok(UploadReport {
                datanet: name.to_string(),
                version,
                parent: merged.manifest.parent.clone(),
                number,
                upload_digest: digest_hex,
                uploader: who.contributor.clone(),
                signed: who.signed,
                rows,
                accepted: merged.accepted,
                duplicates: merged.duplicates,
                near_duplicates: merged.near_duplicates,
                rejected: merged.rejected,
                quarantined: merged.quarantined,
                retries: attempt,
                terms: gate.terms,
                scan: resolved.scan.clone(),
                pending,
                published: true,
            });
        }
        Err(DatanetError::Contended {
            name: name.to_string(),
            attempts: PUBLISH_ATTEMPTS,
        })
    }

    /// Writes a manifest, then conditionally creates its head. `None` when another writer
    /// took that version number first (the caller re-merges and retries).
    pub(super) async fn commit_version(
        &self,
        name: &str,
        m: &Manifest,
    ) -> Result<Option<String>, DatanetError> {
        let (bytes, version) = m.encode().map_err(|e| DatanetError::Corrupt {
            key: name.into(),
            reason: e.to_string(),
        })?;
        let vkey = Path::from(format!("datanets/{name}/versions/{version}.json"));
        self.store.create(&vkey, Bytes::from(bytes)).await?;
        let head_body = serde_json::to_vec(&Head {
            number: m.number,
            version: version.clone(),
        })
        .map_err(|e| DatanetError::Corrupt {
            key: name.into(),
            reason: e.to_string(),
        })?;
        let hkey = Path::from(format!("datanets/{name}/heads/{:020}", m.number));
        match self
            .store
            .create(&hkey, Bytes::from(head_body.clone()))
            .await?
        {
            Created::Existing(b) if b != head_body => Ok(None),
            _ => Ok(Some(version)),
        }
    }

    /// Publishes a version with the head's examples changed by `f` (which returns false to
    /// publish nothing), recording `event`. `None` when the datanet has no version yet.
    pub(super) async fn publish_event(
        &self,
        name: &str,
        event: manifest::Event,
        mut f: impl FnMut(&mut Manifest) -> Result<bool, DatanetError>,
    ) -> Result<Option<(u64, String)>, DatanetError> {
        for attempt in 0..PUBLISH_ATTEMPTS {
            let Some((number, head)) = self.head(name).await? else {
                return Ok(None);
            };
            let m = self.manifest(name, &head).await?;
            let mut next = m.clone();
            next.parent = Some(head);
            next.number = number + 1;
            next.created_ms = self.clock.now_ms();
            next.upload = manifest::UploadInfo::default();
            next.event = Some(event.clone());
            if let manifest::Event::Amend { terms } = &event {
                next.terms = *terms;
            }
            if !f(&mut next)? {
                return Ok(None);
            }
            if let Some(v) = self.commit_version(name, &next).await? {
                return Ok(Some((next.number, v)));
            }
            backoff(attempt).await;
        }
        Err(DatanetError::Contended {
            name: name.to_string(),
            attempts: PUBLISH_ATTEMPTS,
        })
    }

    pub(super) async fn write_examples(
        &self,
        resolved: &ingest::Resolved,
        which: &[usize],
        written: &mut HashSet<String>,
    ) -> Result<(), DatanetError> {
        let todo: Vec<&ingest::Candidate> = which
            .iter()
            .filter_map(|i| resolved.candidates.get(*i))
            .filter(|c| !written.contains(&c.id))
            .collect();
        let mut writes = Vec::with_capacity(todo.len());
        for c in &todo {
            let body = StoredExample {
                messages: c
                    .messages
                    .iter()
                    .map(|(role, content)| StoredMessage {
                        role: role.clone(),
                        content: content.clone(),
                    })
                    .collect(),
            };
            let bytes = serde_json::to_vec(&body).map_err(|e| DatanetError::Corrupt {
                key: c.id.clone(),
                reason: e.to_string(),
            })?;
            let store = self.store.clone();
            let key = example_key(&c.id);
            // Content-addressed: an existing object holds the same normalized text.
            writes.push(async move { store.create(&key, Bytes::from(bytes)).await.map(|_| ()) });
        }
        futures::stream::iter(writes)
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        written.extend(todo.iter().map(|c| c.id.clone()));
        Ok(())
    }
}
