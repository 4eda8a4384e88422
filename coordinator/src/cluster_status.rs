//! What the cluster looks like from any process that can read etcd: the coordinators
//! campaigning for leadership (who leads, under which fencing token) and the workers'
//! membership records with the age of their last heartbeat (lease keep-alive). It is the
//! JSON twin of the dashboard's Cluster page (`GET /v1/cluster`); embedded mode (`dev`)
//! describes its one in-process coordinator and its workers the same way. In etcd mode it
//! also says how etcd itself is: its members, which one leads, the answering member's
//! status (version, database size, raft term and index, errors) and any raised alarm.

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

/// One etcd member, from the member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdMember {
    /// Member id, in hex as `etcdctl member list` prints it.
    pub id: String,
    pub name: String,
    pub client_urls: Vec<String>,
    /// Whether the answering member names this one as the raft leader.
    pub leader: bool,
    pub learner: bool,
}

/// etcd's health as this process's client sees it. `healthy` means the status call was
/// answered, a leader is known, and no member reports an error or an alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdHealth {
    pub healthy: bool,
    pub members: Vec<EtcdMember>,
    /// The member that answered the status call (hex id).
    pub answered_by: Option<String>,
    pub version: Option<String>,
    pub db_size_bytes: Option<i64>,
    pub raft_term: Option<u64>,
    pub raft_index: Option<u64>,
    /// Raised alarms, as `NOSPACE on <member id>`.
    pub alarms: Vec<String>,
    /// Errors the member reported, or the calls that failed.
    pub errors: Vec<String>,
}

/// The cluster as one process sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    /// `embedded` (`tributary dev`) or `etcd`.
    pub mode: &'static str,
    pub coordinators: Vec<CoordinatorStatus>,
    pub workers: Vec<WorkerStatus>,
    /// etcd's members and health (none in embedded mode, which has no etcd).
    pub etcd: Option<EtcdHealth>,
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
        etcd: Some(etcd_health(&mut c).await),
    })
}

/// Member list, status and alarms; a failed call is reported in `errors`, never returned
/// as an error (a page about a sick etcd must still render).
async fn etcd_health(c: &mut EtcdClient) -> EtcdHealth {
    use etcd_client::{AlarmAction, AlarmType};
    let mut errors = Vec::new();
    let status = match c.status().await {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(format!("status: {e}"));
            None
        }
    };
    let leader = status.as_ref().map_or(0, |s| s.leader());
    let members = match c.member_list().await {
        Ok(list) => list
            .members()
            .iter()
            .map(|m| EtcdMember {
                id: format!("{:x}", m.id()),
                name: m.name().to_string(),
                client_urls: m.client_urls().to_vec(),
                leader: m.id() == leader,
                learner: m.is_learner(),
            })
            .collect(),
        Err(e) => {
            errors.push(format!("member list: {e}"));
            Vec::new()
        }
    };
    let alarms = match c.alarm(AlarmAction::Get, AlarmType::None, None).await {
        Ok(a) => a
            .alarms()
            .iter()
            .map(|m| format!("{:?} on {:x}", m.alarm(), m.member_id()))
            .collect(),
        Err(e) => {
            errors.push(format!("alarms: {e}"));
            Vec::new()
        }
    };
    if let Some(s) = &status {
        errors.extend(s.errors().iter().cloned());
    }
    EtcdHealth {
        healthy: status.is_some() && leader != 0 && errors.is_empty() && alarms.is_empty(),
        members,
        answered_by: status
            .as_ref()
            .and_then(|s| s.header())
            .map(|h| format!("{:x}", h.member_id())),
        version: status.as_ref().map(|s| s.version().to_string()),
        db_size_bytes: status.as_ref().map(|s| s.db_size()),
        raft_term: status.as_ref().map(|s| s.raft_term()),
        raft_index: status.as_ref().map(|s| s.raft_index()),
        alarms,
        errors,
    }
}
