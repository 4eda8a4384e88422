//! The failover part of `tributary bench cluster`: a `tributary coordinator` process leads a
//! job, is killed with SIGKILL a third of the way in, and a standby coordinator in this
//! process, campaigning in the same etcd election, is timed until it is elected and until
//! it has applied a step on the workers.
// A load generator measures real latency and waits on real deadlines.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tributary_coordinator::etcd::{
    EtcdClient, EtcdJobStore, EtcdMembership, campaign, list_jobs, submit_job,
};
use tributary_coordinator::local_etcd::EtcdServer;
use tributary_coordinator::{Artifacts, CoordinatorConfig, JobRecord, client, spawn_coordinator};
use tributary_protocol::link::LinkFactory;
use tributary_protocol::{JobId, ShutdownController};

use crate::cluster::{ClusterBench, ClusterBenchError, JOB_TIMEOUT, node, stop};
use crate::processes::Processes;
use crate::step_timer::{StepLog, TimedLinks};

fn cluster(e: impl std::fmt::Display) -> ClusterBenchError {
    ClusterBenchError::Cluster(e.to_string())
}

/// LoRA of the failover job: small, because at this revision checkpoints are stored in etcd,
/// whose requests are limited to 1.5 MiB by default (adapter plus two AdamW moments).
const FAILOVER_RANK: u32 = 8;
const FAILOVER_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// The failover figures.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverFigures {
    pub lease_ttl_s: i64,
    /// LoRA rank of the failover job (on q_proj and v_proj).
    pub lora_rank: u32,
    /// Last step the killed leader had recorded in etcd.
    pub killed_after_step: u64,
    /// The step the standby resumed from (its last checkpoint).
    pub resumed_at_step: Option<u64>,
    /// SIGKILL to the standby's election.
    pub election_s: f64,
    /// SIGKILL to the first step the standby applied on the workers.
    pub first_step_s: f64,
    pub job_state: String,
}

impl ClusterBench {
    /// Kills a leading `tributary coordinator` mid-job and times the standby in this process.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn failover(
        &self,
        model: &Path,
        certs: &Path,
        etcd: &EtcdServer,
        client: &EtcdClient,
        quic: Arc<dyn LinkFactory>,
        artifacts: &Artifacts,
        procs: &mut Processes,
        dir: &Path,
    ) -> Result<FailoverFigures, ClusterBenchError> {
        let store = ["--store".to_string(), artifacts.url().to_string()];
        let args = self.process_args("coordinator", "coord-a", &etcd.url(), certs, &store);
        procs.spawn(&self.exe, "coord-a", &args, dir)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !procs.log("coord-a").contains("leader with fencing token") {
            if Instant::now() > deadline {
                return Err(cluster("coord-a was not elected within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ctl = ShutdownController::new();
        let sd = ctl.subscribe();
        let standby = {
            let client = client.clone();
            let me = node("bench")?;
            let ttl = self.lease_ttl;
            tokio::spawn(async move {
                // The lease's keep-alive task holds its own listener; `sd` can go.
                let r = campaign(&client, &me, ttl, &sd).await;
                (r, Instant::now())
            })
        };
        let every = (self.failover_steps / 6).max(1);
        let targets = FAILOVER_TARGETS.map(String::from);
        let lora = (FAILOVER_RANK, targets.as_slice());
        let spec = self.spec(model, 2, self.failover_steps, lora, Some(every))?;
        let id = submit_job(client, spec).await.map_err(cluster)?;
        let kill_at = self.failover_steps / 3;
        let before = wait_record(client, &id, JOB_TIMEOUT, |r| {
            r.progress.step >= kill_at || r.state.is_terminal()
        })
        .await?;
        if before.state.is_terminal() {
            return Err(cluster(format!(
                "the job ended ({}) before the leader could be killed at step {kill_at}: \
                 raise --failover-steps",
                before.state
            )));
        }
        procs.kill("coord-a")?;
        let killed = Instant::now();
        let killed_after_step = wait_record(client, &id, Duration::ZERO, |_| true)
            .await?
            .progress
            .step;
        let (lead, elected) = standby.await.map_err(cluster)?;
        let lead = lead.map_err(cluster)?;
        let log = Arc::new(StepLog::default());
        let (coord, _) = spawn_coordinator(CoordinatorConfig {
            fencing: lead.token,
            membership: Arc::new(EtcdMembership::start(client.clone(), ctl.subscribe())),
            store: Arc::new(EtcdJobStore::new(client.clone(), &lead)),
            links: Arc::new(TimedLinks::new(quic, log.clone())),
            artifacts: artifacts.clone(),
            tick: Duration::from_millis(200),
        })
        .await
        .map_err(cluster)?;
        let rec = client::wait(&coord, &id, JOB_TIMEOUT).await;
        coord.stop(None);
        stop(ctl).await;
        let rec = rec.map_err(|e| ClusterBenchError::Job {
            run: "the standby",
            reason: e.to_string(),
        })?;
        let first = log.first_applied().ok_or_else(|| ClusterBenchError::Job {
            run: "the standby",
            reason: format!("no step applied; job {:?}: {:?}", rec.state, rec.error),
        })?;
        Ok(FailoverFigures {
            lease_ttl_s: self.lease_ttl,
            lora_rank: FAILOVER_RANK,
            killed_after_step,
            resumed_at_step: log.snapshot().keys().next().copied(),
            election_s: elected.saturating_duration_since(killed).as_secs_f64(),
            first_step_s: first.saturating_duration_since(killed).as_secs_f64(),
            job_state: rec.state.to_string(),
        })
    }
}

/// Polls the job's record in etcd until `done` holds (or `timeout` passes: an error).
async fn wait_record(
    client: &EtcdClient,
    id: &JobId,
    timeout: Duration,
    done: impl Fn(&JobRecord) -> bool,
) -> Result<JobRecord, ClusterBenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        let rec = list_jobs(client)
            .await
            .map_err(cluster)?
            .into_iter()
            .find(|r| &r.id == id);
        match rec {
            Some(r) if done(&r) => return Ok(r),
            _ if Instant::now() > deadline => {
                return Err(cluster(format!(
                    "job {id} did not get there in {timeout:?}"
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
