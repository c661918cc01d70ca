//! TLS for the control plane: the identity the coordinator's gRPC API presents
//! (`cluster.tls_cert`, `cluster.tls_key`), read and checked before any worker starts.

use anyhow::Context;
use incept_common::config::ClusterSection;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// The server side of TLS for `cluster`, `None` without a certificate. An unreadable file or
/// a certificate and key that do not make an identity is an error naming the keys.
pub fn server_config(cluster: &ClusterSection) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&cluster.tls_cert, &cluster.tls_key) else {
        return Ok(None);
    };
    let read = |name: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {name} = {}", path.display()))
    };
    let identity = Identity::from_pem(
        read("cluster.tls_cert", cert)?,
        read("cluster.tls_key", key)?,
    );
    let config = ServerTlsConfig::new().identity(identity);
    // Building an acceptor parses both: a bad pair is found now, not by the first worker.
    Server::builder()
        .tls_config(config.clone())
        .map_err(anyhow::Error::new)
        .with_context(|| {
            format!(
                "cluster.tls_cert = {} and cluster.tls_key = {} are not a PEM certificate and its \
                 private key",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Some(config))
}
