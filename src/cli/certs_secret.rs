//! `tributary certs secret`: a fresh cluster CA and one certificate naming every pod, as a
//! Kubernetes Secret of type `kubernetes.io/tls` with cert-manager's key names (`ca.crt`,
//! `tls.crt`, `tls.key`) — the layout the manifests' init container already reads. It prints
//! the Secret (JSON, for `kubectl apply -f -`), or with `--create` creates it through the
//! Kubernetes API with the pod's service account (what the Helm chart's pre-install Job
//! runs). The CA's key is never written anywhere: to rotate, delete the Secret and make a new
//! one (new CA), then restart every pod.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};

/// Where a pod finds its service account's token, CA and namespace.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `tributary certs secret`.
#[derive(Debug, Args)]
pub struct SecretArgs {
    /// The Secret's name (the chart's `tls.secretName`).
    #[arg(long = "secret-name")]
    pub secret_name: String,
    /// A DNS name the certificate carries (repeatable; at least one): every coordinator and
    /// worker pod name, and etcd's Service names when etcd uses the same certificate.
    #[arg(long = "dns-name", required = true)]
    pub dns_names: Vec<String>,
    /// A label for the Secret, `KEY=VALUE` (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The Secret's namespace (default: the service account's, with --create; none printed).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Create the Secret through the Kubernetes API instead of printing it (in a pod: the
    /// service account's token and CA, the API server from KUBERNETES_SERVICE_HOST/PORT). A
    /// Secret of that name that exists already is left as it is.
    #[arg(long)]
    pub create: bool,
    /// With --create: the API server's URL (default: https://$KUBERNETES_SERVICE_HOST:
    /// $KUBERNETES_SERVICE_PORT).
    #[arg(long, requires = "create")]
    pub api_server: Option<String>,
    /// With --create: the directory holding the service account's `token`, `ca.crt` and
    /// `namespace`.
    #[arg(long, requires = "create", default_value = SERVICE_ACCOUNT_DIR)]
    pub service_account_dir: PathBuf,
}

pub fn run(args: SecretArgs) -> anyhow::Result<()> {
    let labels = parse_labels(&args.labels)?;
    let shared = tributary_protocol::certs::shared_certificate(&args.dns_names)
        .context("certs secret --dns-name")?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut metadata = json!({"name": args.secret_name, "labels": labels});
    if !args.create {
        if let Some(ns) = &args.namespace {
            metadata["namespace"] = json!(ns);
        }
        let secret = secret_json(metadata, &shared, b64);
        println!("{}", serde_json::to_string_pretty(&secret)?);
        return Ok(());
    }
    let sa = &args.service_account_dir;
    let namespace = match &args.namespace {
        Some(ns) => ns.clone(),
        None => read_trimmed(&sa.join("namespace"))?,
    };
    let secret = secret_json(metadata, &shared, b64);
    let api = match &args.api_server {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => in_cluster_api_server()?,
    };
    super::cluster::runtime()?.block_on(create(&api, sa, &namespace, &secret))
}

/// The Secret object: type `kubernetes.io/tls`, cert-manager's key names.
fn secret_json(
    metadata: Value,
    shared: &tributary_protocol::certs::SharedCertificate,
    b64: impl Fn(&str) -> String,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": metadata,
        "data": {
            "ca.crt": b64(&shared.ca_pem),
            "tls.crt": b64(&shared.cert_pem),
            "tls.key": b64(&shared.key_pem),
        },
    })
}

fn parse_labels(labels: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut out = serde_json::Map::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?}: expected KEY=VALUE");
        };
        if k.is_empty() {
            bail!("--label {l:?}: the key is empty");
        }
        out.insert(k.to_string(), json!(v));
    }
    Ok(out)
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (--create runs in a pod with a service account token mounted; \
             see --service-account-dir)",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

fn in_cluster_api_server() -> anyhow::Result<String> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .context("KUBERNETES_SERVICE_HOST is not set (not in a pod? pass --api-server)")?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    // An IPv6 service address needs brackets in a URL.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("https://{host}:{port}"))
}

/// POSTs the Secret; 201 is created, 409 (it exists) leaves the one there alone.
async fn create(api: &str, sa: &Path, namespace: &str, secret: &Value) -> anyhow::Result<()> {
    let token = read_trimmed(&sa.join("token"))?;
    let ca_path = sa.join("ca.crt");
    let ca = std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
    let ca = reqwest::Certificate::from_pem(&ca)
        .with_context(|| format!("{}: not a PEM certificate", ca_path.display()))?;
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTPS client")?;
    let name = secret["metadata"]["name"].as_str().unwrap_or_default();
    let url = format!("{api}/api/v1/namespaces/{namespace}/secrets");
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(secret.to_string())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    match status.as_u16() {
        201 => {
            println!("secret {namespace}/{name} created");
            Ok(())
        }
        409 => {
            println!("secret {namespace}/{name} exists already: left as it is");
            Ok(())
        }
        _ => {
            let body = resp.text().await.unwrap_or_default();
            bail!("POST {url}: {status}: {body}")
        }
    }
}
