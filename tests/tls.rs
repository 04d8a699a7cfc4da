//! HTTPS with a real TLS client: a generated self-signed pair, and a given cert/key pair that the
//! client verifies.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn self_signed_https_serves_dsdl_requests() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls = rt.block_on(dnsexfil::tls::self_signed(&[])).unwrap();
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
        .block_on(dnsexfil::tls::from_files(&cert_path, &key_path))
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
    let missing = rt.block_on(dnsexfil::tls::from_files(
        &dir.path().join("nope.pem"),
        &key_path,
    ));
    assert!(missing.err().unwrap().contains("nope.pem"));
}
