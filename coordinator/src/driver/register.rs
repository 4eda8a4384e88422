//! The end of a successful run: export the trained adapter from a live worker and register
//! it (files under their content address, then the registry entry) in the job's store.

use tributary_ledger::adapters::Provenance;
use tributary_protocol::{CommandBody, Digest, Payload, Reply};

use super::{CallError, JobOutcome, JobRun, Live, Loaded, call};

/// The owner recorded for names claimed by jobs submitted without an identity (a gateway
/// running with `--insecure-no-auth`, or a job submitted straight to etcd).
pub const ANONYMOUS: &str = "anonymous";
use crate::store::now_ms;

impl JobRun {
    /// Exports the adapter from a live worker and registers it.
    pub(super) async fn register(
        &self,
        live: &mut Live,
        loaded: Loaded,
        steps: u64,
        final_loss: Option<f32>,
    ) -> JobOutcome {
        let files = loop {
            let Some((node, link)) = live.first().cloned() else {
                return JobOutcome::Requeue("every worker was lost".into());
            };
            match call(link.as_ref(), self.cmd(CommandBody::Export)).await {
                Ok(Payload {
                    msg: Reply::Files { files },
                    ..
                }) => break files,
                Ok(other) => {
                    return JobOutcome::Failed(format!(
                        "{node}: unexpected reply to export: {:?}",
                        other.msg
                    ));
                }
                Err(CallError::Lost(why)) => self.lose(live, &node, why).await,
                Err(CallError::Failed(why)) => return JobOutcome::Failed(why),
                Err(CallError::Fenced { token, highest }) => {
                    return JobOutcome::Fenced { token, highest };
                }
            }
        };
        // The attribution index the exporting worker built is stored beside the adapter,
        // not among its files (it does not change the adapter's digest).
        let (index_files, files): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|f| f.name.starts_with("attribution."));
        let spec = serde_json::to_value(&self.spec).unwrap_or_default();
        let prov = Provenance {
            base_model_digest: loaded.base_model.to_hex(),
            data_digest: loaded.data.to_hex(),
            job_id: self.job.to_string(),
            spec,
            created_unix_ms: now_ms(),
        };
        let entry = match self
            .with_retry(|| {
                self.artifacts.register_adapter(
                    files.clone(),
                    prov.clone(),
                    self.spec.owner.clone(),
                )
            })
            .await
        {
            Ok(e) => e,
            Err(o) => return o,
        };
        let adapter_digest = match entry.adapter_digest.parse::<Digest>() {
            Ok(d) => d,
            Err(e) => return JobOutcome::Failed(format!("adapter digest: {e}")),
        };
        self.log(format!(
            "adapter {adapter_digest} registered at {}",
            entry.location
        ))
        .await;
        if !index_files.is_empty() {
            let digest = entry.adapter_digest.clone();
            match self
                .with_retry(|| self.artifacts.put_attribution_index(&digest, &index_files))
                .await
            {
                Ok(()) => {
                    let summary = index_files
                        .iter()
                        .find(|f| f.name == "attribution.json")
                        .and_then(|f| serde_json::from_slice::<serde_json::Value>(&f.bytes).ok())
                        .unwrap_or_default();
                    self.log(format!(
                        "attribution index stored: {} examples, {} bytes per example, built in {:.2} s ({:.2}x the training time)",
                        summary.get("examples").cloned().unwrap_or_default(),
                        summary.get("bytes_per_example").cloned().unwrap_or_default(),
                        summary.get("build_seconds").and_then(|v| v.as_f64()).unwrap_or(0.0),
                        summary.get("cost_ratio").and_then(|v| v.as_f64()).unwrap_or(0.0),
                    ))
                    .await
                }
                Err(o) => return o,
            }
        }
        // The spec's name points at the adapter before the job reports success, so the
        // adapter is servable by name the moment the job is seen to succeed.
        if let Some(name) = &self.spec.name {
            let owner = self.spec.owner.as_deref().unwrap_or(ANONYMOUS);
            match self
                .with_retry(|| {
                    self.artifacts
                        .claim_name(name, &entry.adapter_digest, owner, now_ms())
                })
                .await
            {
                Ok(seq) => {
                    self.log(format!("adapter name {name} v{seq} points at it"))
                        .await
                }
                Err(JobOutcome::Failed(why)) => {
                    return JobOutcome::Failed(format!("adapter name {name}: {why}"));
                }
                Err(o) => return o,
            }
        }
        JobOutcome::Succeeded {
            adapter_digest,
            adapter: entry.location,
            steps,
            final_loss,
        }
    }
}
