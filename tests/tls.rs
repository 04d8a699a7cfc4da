//! HTTPS with a real TLS client: a generated self-signed pair, and a given cert/key pair that the
//! client verifies.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn self_signed_https_serves_dsdl_requests() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = rt.block_on(dnsexfil::http::tls::self_signed(&[])).unwrap();
    assert!(tls.self_signed);
    assert_eq!(
        tls.fingerprint.len(),
        32 * 3 - 1,
        "SHA-256 as colon-separated hex"
    );
    let server = TestServer::start_with(ServerOptions {
        https: Some(tls.config),
        ..Default::default()
    });
    assert!(server.url.starts_with("https://"));

    // Like Splunk's client by default: no certificate verification.
    let client = unverified_tls_client();
    let resp = client
        .post(format!("{}/apply", server.url))
        .header("Authorization", TOKEN)
        .json(&escu_envelope(
            "src,query,rank\n10.1.1.1,www.google.com,1\n",
        ))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().unwrap();
    assert_eq!(v["status"], "success");

    // A verifying client refuses the self-signed certificate, and plain HTTP gets no answer.
    let strict = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(strict
        .get(format!("{}/healthz", server.url))
        .send()
        .is_err());
    let plain = server.url.replacen("https://", "http://", 1);
    assert!(
        strict
            .get(format!("{plain}/healthz"))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
            == false
    );
}

#[test]
fn a_given_certificate_is_served_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = dir.path().join("dltk.pem");
    let key_path = dir.path().join("dltk.key");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = rt
        .block_on(dnsexfil::http::tls::from_files(&cert_path, &key_path))
        .unwrap();
    assert!(!tls.self_signed);
    let server = TestServer::start_with(ServerOptions {
        https: Some(tls.config),
        ..Default::default()
    });
    let port = server.url.rsplit(':').next().unwrap().to_string();

    // A client that trusts exactly this certificate verifies it for `localhost`.
    let client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://localhost:{port}/summary"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A client offering HTTP/2 first is given HTTP/1.1: the service speaks only that.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let mut offer_h2 = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    offer_h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut conn = rustls::ClientConnection::new(
        std::sync::Arc::new(offer_h2),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let mut socket = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).unwrap();
    }
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));

    // Missing or mismatched files give a message naming the file.
    let missing = rt.block_on(dnsexfil::http::tls::from_files(
        &dir.path().join("nope.pem"),
        &key_path,
    ));
    assert!(missing.err().unwrap().to_string().contains("nope.pem"));
}

/// The SHA-256 of the DER certificate a TLS server at `address` presents, as
/// `openssl x509 -fingerprint -sha256` prints it (upper-case hex, colons).
fn served_fingerprint(address: &str) -> String {
    use sha2::Digest;
    dnsexfil::http::tls::install_crypto_provider();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(
            dnsexfil::app::healthcheck::AnyCertificate::new(),
        ))
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).unwrap();
    }
    let cert = &conn
        .peer_certificates()
        .expect("the server presents a certificate")[0];
    sha2::Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn logged(served: &ServedBinary, text: &str) -> bool {
    served.startup_logs.iter().any(|l| l.contains(text))
}

#[test]
fn the_generated_certificate_is_stored_reused_after_a_restart_and_is_the_one_served() {
    let data = tempfile::tempdir().unwrap();
    let first = ServedBinary::start_in(data.path(), &[]);
    let fingerprint = first
        .fingerprint
        .clone()
        .expect("the fingerprint is logged");
    assert_eq!(served_fingerprint(&first.address), fingerprint);
    assert!(
        logged(&first, "generated and stored"),
        "{:?}",
        first.startup_logs
    );
    assert!(first.terminate().success());

    // The key is private; the certificate alone is beside it, for clients that pin it.
    let pair = data.path().join("tls/self-signed.pem");
    let cert = data.path().join("tls/self-signed.crt");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pair).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let cert_pem = std::fs::read(&cert).unwrap();
    assert!(!String::from_utf8_lossy(&cert_pem).contains("PRIVATE KEY"));

    let second = ServedBinary::start_in(data.path(), &[]);
    assert_eq!(second.fingerprint.as_deref(), Some(fingerprint.as_str()));
    assert_eq!(served_fingerprint(&second.address), fingerprint);
    assert!(logged(&second, "reused"), "{:?}", second.startup_logs);

    // Pinned like DSDL pins it (the certificate file as the only trusted one): verifies.
    let port = second.address.rsplit(':').next().unwrap();
    let pinned = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&cert_pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let resp = pinned
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(second.terminate().success());

    // An unreadable pair is replaced, and the log says why.
    std::fs::write(&pair, "garbage").unwrap();
    let third = ServedBinary::start_in(data.path(), &[]);
    assert_ne!(third.fingerprint.as_deref(), Some(fingerprint.as_str()));
    assert_eq!(
        served_fingerprint(&third.address),
        third.fingerprint.clone().unwrap()
    );
    assert!(logged(&third, "replaced"), "{:?}", third.startup_logs);
}

#[test]
fn healthcheck_answers_0_for_a_serving_service_and_1_otherwise() {
    let served = ServedBinary::start(&[]);
    let port = served.address.rsplit(':').next().unwrap().to_string();
    let out = dnsexfil_command()
        .args(["healthcheck", "--host", "127.0.0.1", "--port", &port])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("answered 200"), "{stdout}");
    assert!(
        stdout.contains(served.fingerprint.as_deref().unwrap()),
        "the check names the certificate it saw: {stdout}"
    );

    // The wrong scheme, and a port nothing listens on: 1, with a reason.
    let wrong_scheme = dnsexfil_command()
        .args(["healthcheck", "--host", "127.0.0.1", "--port", &port])
        .env("ENABLE_HTTPS", "false")
        .output()
        .unwrap();
    assert_eq!(wrong_scheme.status.code(), Some(1));
    drop(served);
    let closed = dnsexfil_command()
        .args(["healthcheck", "--port", &port])
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&closed.stderr).contains("unhealthy"));

    // Plain HTTP when the service serves it.
    let plain = ServedBinary::start(&["--enable-https".as_ref(), "false".as_ref()]);
    let port = plain.address.rsplit(':').next().unwrap().to_string();
    let out = dnsexfil_command()
        .args(["healthcheck", "--port", &port])
        .env("ENABLE_HTTPS", "false")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
