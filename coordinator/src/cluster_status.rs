//! What the cluster looks like from any process that can read etcd: the coordinators
//! campaigning for leadership (who leads, under which fencing token) and the workers'
//! membership records with the age of their last heartbeat (lease keep-alive). It is the
//! JSON twin of the dashboard's Cluster page (`GET /v1/cluster`); embedded mode (`dev`)
//! describes its one in-process coordinator and its workers the same way.

use serde::Serialize;
use tributary_protocol::WorkerInfo;

use crate::error::CoordError;
use crate::etcd::{ELECTION, EtcdClient, WORKERS_PREFIX};

/// One coordinator: a candidate in the election, or the embedded one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoordinatorStatus {
    pub name: String,
    pub leader: bool,
    /// The fencing token it writes under if it leads (its election key's revision).
    pub fencing_token: u64,
}

/// One worker: its membership record and how fresh it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStatus {
    #[serde(flatten)]
    pub info: WorkerInfo,
    /// Seconds since the lease behind the record was last renewed (none: no lease, as in
    /// embedded mode, where workers are actors of this process).
    pub heartbeat_age_secs: Option<i64>,
    /// Seconds until the record disappears unless renewed.
    pub lease_expires_in_secs: Option<i64>,
}

/// The cluster as one process sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    /// `embedded` (`tributary dev`) or `etcd`.
    pub mode: &'static str,
    pub coordinators: Vec<CoordinatorStatus>,
    pub workers: Vec<WorkerStatus>,
}

/// Reads the election candidates and the worker records from etcd. The leader is the
/// candidate with the lowest creation revision (etcd's election recipe).
pub async fn read(client: &EtcdClient) -> Result<ClusterStatus, CoordError> {
    use etcd_client::GetOptions;
    let mut c = client.clone();
    let election = c
        .get(
            format!("{ELECTION}/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut candidates: Vec<(i64, String)> = election
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.create_revision(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    candidates.sort();
    let coordinators = candidates
        .iter()
        .enumerate()
        .map(|(i, (rev, name))| CoordinatorStatus {
            name: name.clone(),
            leader: i == 0,
            fencing_token: u64::try_from(*rev).unwrap_or(0),
        })
        .collect();
    let records = c
        .get(WORKERS_PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut workers = Vec::new();
    for kv in records.kvs() {
        let Ok(info) = serde_json::from_slice::<WorkerInfo>(kv.value()) else {
            continue;
        };
        let (mut age, mut expires) = (None, None);
        if kv.lease() != 0
            && let Ok(ttl) = c.lease_time_to_live(kv.lease(), None).await
            && ttl.ttl() >= 0
        {
            expires = Some(ttl.ttl());
            age = Some((ttl.granted_ttl() - ttl.ttl()).max(0));
        }
        workers.push(WorkerStatus {
            info,
            heartbeat_age_secs: age,
            lease_expires_in_secs: expires,
        });
    }
    workers.sort_by(|a, b| a.info.node.as_str().cmp(b.info.node.as_str()));
    Ok(ClusterStatus {
        mode: "etcd",
        coordinators,
        workers,
    })
}
