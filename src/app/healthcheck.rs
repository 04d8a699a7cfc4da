//! `dnsexfil healthcheck`: asks the local service for `GET /healthz`, the image's HEALTHCHECK.
//! The runtime image has no shell and no curl, so the binary checks itself: it connects to the
//! port the service listens on (following the same settings), over HTTPS unless ENABLE_HTTPS is
//! false, accepting any certificate (a self-signed one, or one issued for a name other than the
//! loopback address: this checks that the service answers, not whom to trust), and exits 0 when
//! the answer is 200, 1 otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use clap::ArgAction;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    /// The service's listen address (a wildcard address means the loopback one).
    #[arg(long, env = "DNSEXFIL_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// The service's port.
    #[arg(long, env = "DNSEXFIL_PORT", default_value_t = 5000)]
    pub port: u16,
    /// Whether the service speaks HTTPS (true) or plain HTTP (false), like its ENABLE_HTTPS.
    #[arg(long, env = "ENABLE_HTTPS", default_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub enable_https: bool,
    /// Seconds the whole check may take (connection, handshake, answer).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_secs: u64,
}

/// Runs the check; an error (printed by `main`, exit status 1) means unhealthy.
pub fn run(args: &HealthcheckArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let addr = target(&args.host, args.port)?;
    let scheme = if args.enable_https { "https" } else { "http" };
    let url = format!("{scheme}://{addr}/healthz");
    let stream = TcpStream::connect_timeout(&addr, left(deadline)?)
        .with_context(|| format!("unhealthy: cannot connect to {addr}"))?;
    let (status, fingerprint) = if args.enable_https {
        crate::http::tls::install_crypto_provider();
        let config = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new()))
            .with_no_client_auth();
        let name = ServerName::IpAddress(addr.ip().into());
        let conn = rustls::ClientConnection::new(Arc::new(config), name)
            .context("unhealthy: cannot set up TLS")?;
        let mut tls = rustls::StreamOwned::new(conn, stream);
        let status = exchange(&mut tls, &addr, deadline)?;
        let fingerprint = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| crate::http::tls::colon_hex(&Sha256::digest(c.as_ref())));
        (status, fingerprint)
    } else {
        let mut plain = stream;
        (exchange(&mut plain, &addr, deadline)?, None)
    };
    if status != 200 {
        bail!("unhealthy: {url} answered {status}");
    }
    match fingerprint {
        Some(f) => println!("healthy: {url} answered 200 (certificate SHA-256 {f})"),
        None => println!("healthy: {url} answered 200"),
    }
    Ok(())
}

/// The address to check: the loopback address for a wildcard listen address.
fn target(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "" | "0.0.0.0" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        "::" => IpAddr::V6(Ipv6Addr::LOCALHOST),
        _ => match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                return (host, port)
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .with_context(|| format!("unhealthy: cannot resolve the host `{host}`"))
            }
        },
    };
    Ok(SocketAddr::new(ip, port))
}

fn left(deadline: Instant) -> anyhow::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("unhealthy: no answer in time");
    }
    Ok(left)
}

/// Sends `GET /healthz` and reads the status code of the answer.
fn exchange<S: Read + Write + AsSocket>(
    stream: &mut S,
    addr: &SocketAddr,
    deadline: Instant,
) -> anyhow::Result<u16> {
    stream.socket().set_write_timeout(Some(left(deadline)?))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: dnsexfil-healthcheck\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| stream.flush())
    .with_context(|| format!("unhealthy: cannot send the request to {addr}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        stream.socket().set_read_timeout(Some(left(deadline)?))?;
        let n = stream
            .read(&mut buf)
            .with_context(|| format!("unhealthy: no answer from {addr}"))?;
        if n == 0 || head.len() > 4096 {
            bail!("unhealthy: {addr} closed the connection without an HTTP answer");
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .with_context(|| {
            format!(
                "unhealthy: {addr} answered `{}`, not HTTP",
                line.lines().next().unwrap_or("")
            )
        })?;
    Ok(status)
}

/// The TCP socket under a stream, for its timeouts.
trait AsSocket {
    fn socket(&self) -> &TcpStream;
}

impl AsSocket for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl AsSocket for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// Accepts any certificate, but still checks the handshake's signatures with it (so the
/// connection is real TLS with the certificate the server presented). Tests use it to read the
/// certificate a server presents.
#[derive(Debug)]
pub struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl AnyCertificate {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(Arc::new(rustls::crypto::ring::default_provider()))
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_checked_on_loopback() {
        assert_eq!(
            target("0.0.0.0", 5000).unwrap().to_string(),
            "127.0.0.1:5000"
        );
        assert_eq!(target("::", 5001).unwrap().to_string(), "[::1]:5001");
        assert_eq!(target("[::]", 5001).unwrap().to_string(), "[::1]:5001");
        assert_eq!(target("10.0.0.7", 80).unwrap().to_string(), "10.0.0.7:80");
        assert_eq!(target("[fd00::7]", 80).unwrap().to_string(), "[fd00::7]:80");
    }
}
