//! The job operations the HTTP API (in the gateway crate) needs, as one small trait with two
//! implementations: [`ActorJobs`] talks to the coordinator actor in this process (embedded
//! mode), [`EtcdJobs`] reads and writes etcd (cluster mode), so any coordinator process —
//! leader or standby — can accept a submission or a cancel: the leader picks both up on its
//! next tick.

use std::time::Duration;

use ractor::ActorRef;
use tributary_protocol::link::BoxFuture;
use tributary_protocol::{JobId, JobSpec, WorkerInfo};

use crate::actor::CoordinatorMsg;
use crate::client;
use crate::cluster_status::{ClusterStatus, CoordinatorStatus, WorkerStatus};
use crate::error::CoordError;
use crate::etcd::{EtcdClient, get_job, list_jobs, request_cancel, submit_job};
use crate::store::JobRecord;

/// Submit, list, look up and cancel jobs.
pub trait JobApi: Send + Sync + 'static {
    fn submit(&self, spec: JobSpec) -> BoxFuture<'_, Result<JobId, CoordError>>;
    /// Every job, in submission order.
    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>>;
    fn get(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>, CoordError>>;
    /// Cancels a queued or running job (a running one stops at its next step boundary).
    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<(), CoordError>>;
    /// The coordinators and workers as this process sees them (none: no view).
    fn cluster(&self) -> BoxFuture<'_, Result<Option<ClusterStatus>, CoordError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Embedded mode: the coordinator actor in this process, its fencing token and workers.
#[derive(Debug, Clone)]
pub struct ActorJobs {
    pub actor: ActorRef<CoordinatorMsg>,
    pub fencing: u64,
    pub workers: Vec<WorkerInfo>,
}

impl JobApi for ActorJobs {
    fn submit(&self, spec: JobSpec) -> BoxFuture<'_, Result<JobId, CoordError>> {
        Box::pin(client::submit(&self.actor, spec))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>> {
        Box::pin(async move {
            let mut recs = client::status(&self.actor, None).await?;
            recs.sort_by_key(|r| r.seq);
            Ok(recs)
        })
    }

    fn get(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>, CoordError>> {
        Box::pin(async move {
            Ok(client::status(&self.actor, Some(id))
                .await?
                .into_iter()
                .next())
        })
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<(), CoordError>> {
        Box::pin(client::cancel(&self.actor, id))
    }

    fn cluster(&self) -> BoxFuture<'_, Result<Option<ClusterStatus>, CoordError>> {
        Box::pin(async move {
            Ok(Some(ClusterStatus {
                mode: "embedded",
                coordinators: vec![CoordinatorStatus {
                    name: "embedded".into(),
                    leader: true,
                    fencing_token: self.fencing,
                }],
                workers: self
                    .workers
                    .iter()
                    .map(|info| WorkerStatus {
                        info: info.clone(),
                        heartbeat_age_secs: None,
                        lease_expires_in_secs: None,
                    })
                    .collect(),
                etcd: None,
            }))
        })
    }
}

/// Cluster mode: job records in etcd.
#[derive(Clone)]
pub struct EtcdJobs(pub EtcdClient);

impl std::fmt::Debug for EtcdJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdJobs")
    }
}

/// How long etcd calls from the API may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, CoordError>>,
) -> Result<T, CoordError> {
    tokio::time::timeout(API_TIMEOUT, f)
        .await
        .map_err(|_| CoordError::Store("etcd did not answer within 5 s".into()))?
}

impl JobApi for EtcdJobs {
    fn submit(&self, spec: JobSpec) -> BoxFuture<'_, Result<JobId, CoordError>> {
        Box::pin(bounded(submit_job(&self.0, spec)))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<JobRecord>, CoordError>> {
        Box::pin(async move {
            let mut recs = bounded(list_jobs(&self.0)).await?;
            recs.sort_by_key(|r| r.seq);
            Ok(recs)
        })
    }

    fn get(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>, CoordError>> {
        Box::pin(async move { bounded(get_job(&self.0, &id)).await })
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<(), CoordError>> {
        Box::pin(async move {
            let rec = self
                .get(id.clone())
                .await?
                .ok_or_else(|| CoordError::NoSuchJob(id.to_string()))?;
            if rec.state.is_terminal() {
                return Err(CoordError::BadState {
                    job: id.to_string(),
                    state: rec.state.to_string(),
                    action: "cancelled",
                });
            }
            bounded(request_cancel(&self.0, &id)).await
        })
    }

    fn cluster(&self) -> BoxFuture<'_, Result<Option<ClusterStatus>, CoordError>> {
        Box::pin(async move {
            bounded(crate::cluster_status::read(&self.0))
                .await
                .map(Some)
        })
    }
}
