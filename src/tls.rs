//! TLS like the stock DSDL image: a given cert/key pair, or a self-signed pair made at start-up.

use std::path::Path;

use axum_server::tls_rustls::RustlsConfig;
use sha2::{Digest, Sha256};

/// A TLS configuration and the SHA-256 fingerprint of its certificate (to log for clients that pin it).
pub struct Tls {
    pub config: RustlsConfig,
    pub fingerprint: String,
    pub self_signed: bool,
}

/// Installs ring as the process's TLS crypto provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the PEM pair from `cert` and `key`.
pub async fn from_files(cert: &Path, key: &Path) -> Result<Tls, String> {
    install_crypto_provider();
    let cert_pem = std::fs::read(cert)
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}", key.display()))?;
    let fingerprint = fingerprint_of_pem(&cert_pem)
        .ok_or_else(|| format!("{} holds no PEM certificate", cert.display()))?;
    let config = RustlsConfig::from_pem(cert_pem, key_pem)
        .await
        .map_err(|e| {
            format!(
                "cannot use the TLS pair {} / {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Tls {
        config: http1_only(config),
        fingerprint,
        self_signed: false,
    })
}

/// Generates a self-signed certificate for `localhost` and the given host names.
pub async fn self_signed(hosts: &[String]) -> Result<Tls, String> {
    install_crypto_provider();
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(
        hosts
            .iter()
            .filter(|h| !h.is_empty() && *h != "0.0.0.0" && *h != "::")
            .cloned(),
    );
    names.dedup();
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let cert_pem = certified.cert.pem();
    let key_pem = certified.key_pair.serialize_pem();
    let fingerprint = colon_hex(&Sha256::digest(certified.cert.der()));
    let config = RustlsConfig::from_pem(cert_pem.into_bytes(), key_pem.into_bytes())
        .await
        .map_err(|e| format!("cannot use the generated certificate: {e}"))?;
    Ok(Tls {
        config: http1_only(config),
        fingerprint,
        self_signed: true,
    })
}

/// `config` offering only HTTP/1.1 in the TLS handshake (axum-server offers HTTP/2 first): the
/// service speaks HTTP/1.1 only (see `connections.rs`), so clients must not pick HTTP/2.
fn http1_only(config: RustlsConfig) -> RustlsConfig {
    let mut server_config = (*config.get_inner()).clone();
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    RustlsConfig::from_config(std::sync::Arc::new(server_config))
}

fn fingerprint_of_pem(pem: &[u8]) -> Option<String> {
    let der = rustls_pemfile::certs(&mut &pem[..]).next()?.ok()?;
    Some(colon_hex(&Sha256::digest(der.as_ref())))
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
