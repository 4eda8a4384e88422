//! Test harnesses other crates can reuse (feature `testkit`):
//!
//! - [`MotoServer`]: a real S3 API server (moto) on 127.0.0.1 on a free port, started by the
//!   test, waited for, and killed on drop. A missing `moto_server` is a test failure with a
//!   message pointing at `scripts/setup-test-deps.sh`, never a silent skip.
//! - [`IgnoresCreateStore`]: a mock object store whose conditional create silently
//!   overwrites, for the one fault that cannot be made real here (a store ignoring
//!   `If-None-Match`).
//! - [`init_crypto`]: installs rustls' ring provider as the process default.
// Test harness: waits in real time on real processes.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error(
        "`moto_server` could not be started ({0}). The S3 tests need a real S3 API server: \
         run scripts/setup-test-deps.sh (installs moto[server] with pip)"
    )]
    MotoMissing(String),
    #[error("moto_server on port {port} did not answer within {secs} s")]
    MotoTimeout { port: u16, secs: u64 },
    #[error("moto: {0}")]
    Io(#[from] std::io::Error),
    #[error("moto: creating bucket `{bucket}` answered `{status}`")]
    Bucket { bucket: String, status: String },
}

/// Installs rustls' ring provider as the process default (object_store links aws-lc-rs
/// too); call before building any TLS client. Idempotent.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A moto S3 server child process, killed on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` and waits until it answers HTTP. The
    /// program is `$TRIBUTARY_MOTO_SERVER` when set (scripts/setup-test-deps.sh sets it where
    /// moto lives in a virtual environment), else `moto_server` on `PATH`.
    pub fn start() -> Result<Self, TestkitError> {
        let program =
            std::env::var_os("TRIBUTARY_MOTO_SERVER").unwrap_or_else(|| "moto_server".into());
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| TestkitError::MotoMissing(e.to_string()))?;
            let mut server = Self { child, port };
            match server.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    // Lost a port race or a slow start: try another port.
                    let _ = server.child.kill();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(TestkitError::MotoTimeout { port: 0, secs: 30 }))
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), TestkitError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestkitError::MotoMissing(format!(
                    "moto_server exited at start with {status}"
                )));
            }
            if let Ok(status) = self.request("GET", "/")
                && status.starts_with("HTTP/1.")
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(TestkitError::MotoTimeout {
            port: self.port,
            secs: limit.as_secs(),
        })
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    /// Creates a bucket (HTTP PUT on `/BUCKET`).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), TestkitError> {
        let status = self.request("PUT", &format!("/{bucket}"))?;
        if status.contains(" 200") {
            Ok(())
        } else {
            Err(TestkitError::Bucket {
                bucket: bucket.into(),
                status,
            })
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A store URL for `bucket/prefix` on this server, with dummy credentials.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region=us-east-1&access_key_id=test&secret_access_key=test&timeout=2",
            self.endpoint()
        )
    }

    /// The child's process id (tests stop and continue it to take a replica down).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// MOCK: an object store that ignores conditional create (overwrites instead), standing in
/// for S3-compatible servers without atomic `If-None-Match`. Used only to test that such a
/// store is refused.
#[derive(Debug)]
pub struct IgnoresCreateStore(pub Arc<dyn ObjectStore>);

impl std::fmt::Display for IgnoresCreateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IgnoresCreateStore({})", self.0)
    }
}

#[async_trait]
impl ObjectStore for IgnoresCreateStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        opts.mode = PutMode::Overwrite;
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}
