//! How the cluster gateway hands a worker's answer on ([`crate::cluster`]):
//!
//! - streaming ([`forward`]): event by event as the worker sends them. A worker lost in the
//!   middle fails the answer (`Unavailable`, naming the worker): text already went to the
//!   client, so it cannot be taken back and started again.
//! - whole ([`forward_whole`], non-streaming requests): held here until the worker's last
//!   event, then handed on at once. A worker lost in the middle costs the client only time:
//!   the answer is generated again from the start on another worker (counted as
//!   `tributary_gateway_retries_total{reason="regenerated"}`). The gateway's latency
//!   histograms then see the whole answer arrive at once, as the client does.
//!
//! Either way, the gateway's side going away (its client left) stops the worker's stream,
//! which cancels the request there.

use std::collections::HashSet;

use tokio::sync::mpsc;
use tracing::warn;
use tributary_protocol::{EventStream, InferenceError, InferenceEvent, InferenceRequest, NodeId};

use crate::cluster::{ClusterInference, Routed};
use crate::cluster_metrics as cm;

/// Room for events between the forwarding task and the HTTP side.
const CHANNEL: usize = 64;

/// Streams the held events then the rest to the gateway; stops the worker's stream when
/// the gateway's side goes away.
pub(crate) fn forward(routed: Routed) -> EventStream {
    let Routed {
        node,
        held,
        mut events,
        guard,
        ..
    } = routed;
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let _guard = guard;
        for ev in held {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                n = events.next() => n,
                _ = tx.closed() => return,
            };
            match next {
                Ok(Some(ev)) => {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    cm::retried("lost_mid_answer");
                    let _ = tx
                        .send(InferenceEvent::Failed(InferenceError::Unavailable(
                            format!("worker {node} was lost in the middle of the answer: {e}"),
                        )))
                        .await;
                    return;
                }
            }
        }
    });
    rx
}

/// Holds the answer until it is whole, then hands it on; when its worker is lost first,
/// routes `request` again (never to a worker in `excluded` or the lost one) and starts over.
pub(crate) fn forward_whole(
    cluster: ClusterInference,
    request: InferenceRequest,
    routed: Routed,
    mut excluded: HashSet<NodeId>,
) -> EventStream {
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let mut routed = routed;
        loop {
            let Routed {
                node,
                addr,
                mut held,
                mut events,
                guard,
            } = routed;
            let lost = loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    _ = tx.closed() => return,
                };
                match next {
                    Ok(Some(ev)) => held.push(ev),
                    Ok(None) => break None,
                    Err(e) => break Some(e.to_string()),
                }
            };
            let Some(why) = lost else {
                for ev in held {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                return;
            };
            drop((events, guard));
            warn!(worker = %node, request_id = %request.request_id, %why,
                  "worker lost in the middle of a non-streaming answer: generating it again elsewhere");
            cm::routed(node.as_str(), "lost");
            cm::retried("regenerated");
            cluster.mark_down_at(&node, &addr);
            excluded.insert(node.clone());
            routed = match cluster.route_request(&request, &mut excluded).await {
                Ok(r) => r,
                Err(e) => {
                    let e = match e {
                        InferenceError::Unavailable(m) => InferenceError::Unavailable(format!(
                            "worker {node} was lost in the middle of the answer and it could not be generated again: {m}"
                        )),
                        other => other,
                    };
                    let _ = tx.send(InferenceEvent::Failed(e)).await;
                    return;
                }
            };
        }
    });
    rx
}
