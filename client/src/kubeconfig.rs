//! A kubeconfig for a member's Kubernetes API (`gwadm kubeconfig`, the test kit): the server, the
//! cluster's CA, and the caller's certificate and key, embedded. JSON, which kubectl reads as the YAML
//! it is.

use crate::tls::TlsArgs;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The kubeconfig of a client with these TLS flags for the Kubernetes API at `server` (`HOST:PORT`);
/// plaintext (`http://`) with `--insecure`.
pub fn kubeconfig(server: &str, tls: &TlsArgs, name: &str) -> Result<Value, String> {
    let read = |p: &Option<std::path::PathBuf>, what: &str| -> Result<String, String> {
        let p = p
            .as_ref()
            .ok_or_else(|| format!("{what} is needed (or --insecure)"))?;
        std::fs::read(p)
            .map(|b| B64.encode(b))
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (cluster, user) = if tls.insecure {
        (json!({"server": format!("http://{server}")}), json!({}))
    } else {
        (
            json!({
                "server": format!("https://{server}"),
                "certificate-authority-data": read(&tls.tls_ca, "--tls-ca")?,
            }),
            json!({
                "client-certificate-data": read(&tls.tls_cert, "--tls-cert")?,
                "client-key-data": read(&tls.tls_key, "--tls-key")?,
            }),
        )
    };
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }))
}
