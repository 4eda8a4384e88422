//! Benchmarks that drive whole deployments. Now: [`cluster`], the cost of running a training
//! job as a cluster (coordination overhead per step, gradient bytes per step, and, in
//! [`failover`], coordinator failover time), timed through [`step_timer`], with its child
//! processes in [`processes`]. [`serve_load`]: the gateway load generator (power-law adapter
//! popularity, Gamma arrivals, lengths; throughput, TTFT, TPOT, SLO attainment).
// A load generator and benchmark harness, not a server: its indexing is over its own
// samples and configurations.
#![allow(clippy::indexing_slicing)]

pub mod cluster;
pub mod failover;
pub mod processes;
pub mod serve_load;
pub mod step_timer;
