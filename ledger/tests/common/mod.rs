//! Shared test helpers: backends (a temporary local directory, or a real moto S3 server on
//! 127.0.0.1), the `both_backends!` test declarations, and sample reward records.
#![allow(dead_code)]

pub mod govern;

use tributary_ledger::rewards::{RewardRecord, Share};
use tributary_ledger::testkit::{MotoServer, init_crypto};

/// Where replicas live for one test.
pub enum Backend {
    Local(tempfile::TempDir),
    S3(MotoServer, String),
}

impl Backend {
    pub fn local() -> Self {
        Backend::Local(tempfile::tempdir().expect("tempdir"))
    }

    /// Starts a moto server and one bucket; fails (never skips) if moto is missing.
    pub fn moto() -> Self {
        init_crypto();
        let server = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
        let bucket = format!("b{:08x}", rand::random::<u32>());
        server.create_bucket(&bucket).expect("create bucket");
        Backend::S3(server, bucket)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Local(_) => "local",
            Backend::S3(..) => "s3",
        }
    }

    /// The URL of replica `i`.
    pub fn url(&self, i: usize) -> String {
        match self {
            Backend::Local(dir) => dir.path().join(format!("r{i}")).display().to_string(),
            Backend::S3(server, bucket) => server.url(bucket, &format!("r{i}")),
        }
    }

    pub fn urls(&self, n: usize) -> Vec<String> {
        (0..n).map(|i| self.url(i)).collect()
    }
}

/// Declares the two tests of an `async fn NAME(b: Backend)` in a module `NAME`: `local_fs`
/// (a temporary directory) and `s3_moto` (a real moto S3 server). The test file must have
/// `Backend` in scope at its root.
// crash.rs shares this module without the macro.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local_fs() {
                super::$name(super::Backend::local()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3_moto() {
                super::$name(super::Backend::moto()).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_backends;

pub fn record(id: &str, shares: &[(&str, u64)]) -> RewardRecord {
    let mut shares: Vec<Share> = shares
        .iter()
        .map(|(c, a)| Share {
            contributor: c.to_string(),
            amount: *a,
        })
        .collect();
    shares.sort_by(|a, b| a.contributor.cmp(&b.contributor));
    RewardRecord {
        request_id: id.into(),
        adapter: [1; 32],
        attribution: [2; 32],
        time_ms: 1_700_000_000_000,
        total: shares.iter().map(|s| s.amount).sum(),
        shares,
    }
}
