//! TLS like the stock DSDL image: a given cert/key pair, or a self-signed pair. The self-signed
//! pair is generated once into the data directory and reused at every start, so a client that
//! pins the certificate (DSDL's `endpoint_cert_filename_or_path`) keeps working across restarts.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum_server::tls_rustls::RustlsConfig;
use sha2::{Digest, Sha256};

/// A TLS configuration and the SHA-256 fingerprint of its certificate (to log for clients that pin it).
pub struct Tls {
    pub config: RustlsConfig,
    pub fingerprint: String,
    pub self_signed: bool,
}

/// Why no TLS configuration could be made; each message names the file or names involved.
/// (Causes are part of the messages, not chained: the command line prints the chain too.)
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {error}", .path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("cannot use the TLS pair {} / {}: {error}", .cert.display(), .key.display())]
    UnusablePair {
        cert: PathBuf,
        key: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot generate a certificate for {names:?}: {error}")]
    CertificateNames {
        names: Vec<String>,
        error: rcgen::Error,
    },
    #[error("cannot generate a key: {0}")]
    Key(rcgen::Error),
    #[error("cannot generate a certificate: {0}")]
    Certificate(rcgen::Error),
    /// A pair just generated (or just stored by another replica) cannot be used: the reason.
    #[error("{0}")]
    UnusableSelfSigned(String),
}

/// Installs ring as the process's TLS crypto provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads the PEM pair from `cert` and `key`.
pub async fn from_files(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
    install_crypto_provider();
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|error| TlsError::Unreadable {
            what,
            path: path.to_path_buf(),
            error,
        })
    };
    let cert_pem = read("certificate", cert)?;
    let key_pem = read("key", key)?;
    let fingerprint =
        fingerprint_of_pem(&cert_pem).ok_or_else(|| TlsError::NoCertificate(cert.to_path_buf()))?;
    let config = RustlsConfig::from_pem(cert_pem, key_pem)
        .await
        .map_err(|error| TlsError::UnusablePair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            error,
        })?;
    Ok(Tls {
        config: http1_only(config),
        fingerprint,
        self_signed: false,
    })
}

/// Generates a self-signed certificate for `localhost` and the given host names, in memory only.
pub async fn self_signed(hosts: &[String]) -> Result<Tls, TlsError> {
    install_crypto_provider();
    let pair = generate_pair(&certificate_names(hosts), SystemTime::now())?;
    tls_of(&pair).await
}

/// How long a generated certificate is valid.
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// A stored certificate with less than this left is replaced at start-up.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// The stored pair, relative to the data directory: the private key then the certificate, PEM,
/// mode 0600.
pub const STORED_PAIR: &str = "tls/self-signed.pem";
/// The certificate alone (PEM, mode 0644): the file to give clients that pin it.
pub const STORED_CERT: &str = "tls/self-signed.crt";

/// What `self_signed_stored` did with the pair in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredOutcome {
    /// The stored pair was used as it is.
    Reused,
    /// A new pair was generated and stored; the reason says why (none stored yet, unreadable,
    /// expiring).
    Generated { reason: String },
    /// The pair could not be stored (the directory is not writable): it lives in memory and
    /// changes at every start.
    NotStored { problem: String },
}

/// A self-signed pair kept in the data directory, and what was done with it.
pub struct StoredTls {
    pub tls: Tls,
    pub outcome: StoredOutcome,
    /// The stored pair (key + certificate) and the certificate alone.
    pub pair_file: PathBuf,
    pub cert_file: PathBuf,
    /// When the certificate expires (seconds since the epoch).
    pub not_after: i64,
    /// Names the caller asked for that the certificate does not cover (a pair stored before
    /// they were asked for): the certificate is kept; deleting the pair regenerates it.
    pub missing_names: Vec<String>,
}

/// The self-signed pair of `data_dir` (`tls/self-signed.pem`): reused when it is readable,
/// holds a matching key and certificate, and is valid for more than 30 days; generated and
/// stored (atomically, the key file mode 0600) otherwise. `hosts` are added to the names of a
/// new certificate (`localhost`, `127.0.0.1` and `::1` always are).
pub async fn self_signed_stored(data_dir: &Path, hosts: &[String]) -> Result<StoredTls, TlsError> {
    install_crypto_provider();
    let pair_file = data_dir.join(STORED_PAIR);
    let cert_file = data_dir.join(STORED_CERT);
    let names = certificate_names(hosts);
    let now = SystemTime::now();

    let reason = match std::fs::read_to_string(&pair_file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "none was stored yet".to_string(),
        Err(e) => format!("the stored one cannot be read ({e})"),
        Ok(text) => match usable(&text, now).await {
            Ok((tls, not_after)) => {
                write_cert_copy(&cert_file, &text);
                let missing_names = names
                    .iter()
                    .filter(|n| !covers(tls_cert_der(&text).as_deref(), n))
                    .cloned()
                    .collect();
                return Ok(StoredTls {
                    tls,
                    outcome: StoredOutcome::Reused,
                    pair_file,
                    cert_file,
                    not_after,
                    missing_names,
                });
            }
            Err(problem) => problem,
        },
    };

    let generated = generate_pair(&names, now)?;
    let text = format!("{}{}", generated.key_pem, generated.cert_pem);
    let stored = if reason == "none was stored yet" {
        // Replicas sharing the volume may start together: the first pair stored wins, and
        // the others take it instead of replacing it.
        crate::util::fs::create_atomic(&pair_file, text.as_bytes(), 0o600).map(|created| {
            if created {
                None
            } else {
                std::fs::read_to_string(&pair_file).ok()
            }
        })
    } else {
        crate::util::fs::write_atomic_mode(&pair_file, text.as_bytes(), 0o600).map(|()| None)
    };
    let (text, outcome) = match stored {
        Ok(None) => (text, StoredOutcome::Generated { reason }),
        Ok(Some(theirs)) => (theirs, StoredOutcome::Reused),
        Err(e) => (
            text,
            StoredOutcome::NotStored {
                problem: format!("cannot write {}: {e}", pair_file.display()),
            },
        ),
    };
    let (tls, not_after) = usable(&text, now)
        .await
        .map_err(TlsError::UnusableSelfSigned)?;
    if !matches!(outcome, StoredOutcome::NotStored { .. }) {
        write_cert_copy(&cert_file, &text);
    }
    Ok(StoredTls {
        tls,
        outcome,
        pair_file,
        cert_file,
        not_after,
        missing_names: Vec::new(),
    })
}

/// The names of a generated certificate: `localhost`, the loopback addresses, and `hosts`
/// (wildcard listen addresses and empty names left out), without duplicates.
fn certificate_names(hosts: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for h in hosts {
        let h = h.trim();
        if !h.is_empty() && h != "0.0.0.0" && h != "::" && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    names
}

struct GeneratedPair {
    cert_pem: String,
    key_pem: String,
}

/// A self-signed certificate for `names`, valid from a day before `now` (clocks differ) for
/// `SELF_SIGNED_VALIDITY`.
fn generate_pair(names: &[String], now: SystemTime) -> Result<GeneratedPair, TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|error| {
        TlsError::CertificateNames {
            names: names.to_vec(),
            error,
        }
    })?;
    let secs = unix_secs(now);
    let (y, m, d) = ymd(secs - 86_400);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(secs + SELF_SIGNED_VALIDITY.as_secs() as i64);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "dnsexfil self-signed");
    params.distinguished_name = dn;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(TlsError::Key)?;
    let cert = params.self_signed(&key).map_err(TlsError::Certificate)?;
    Ok(GeneratedPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The TLS configuration of a stored pair's text and its expiry, or why it cannot be used (a
/// reason to generate a new pair, not an error).
async fn usable(text: &str, now: SystemTime) -> Result<(Tls, i64), String> {
    let der = tls_cert_der(text).ok_or("the stored one holds no certificate")?;
    let not_after = der::not_after(&der).ok_or("the stored certificate cannot be parsed")?;
    let left = not_after - unix_secs(now);
    if left < RENEW_BEFORE.as_secs() as i64 {
        return Err(format!(
            "the stored one {} on {}",
            if left < 0 { "expired" } else { "expires" },
            date_text(not_after)
        ));
    }
    let tls = tls_of_pem(text.as_bytes(), text.as_bytes())
        .await
        .map_err(|e| format!("the stored one cannot be used ({e})"))?;
    Ok((tls, not_after))
}

async fn tls_of(pair: &GeneratedPair) -> Result<Tls, TlsError> {
    tls_of_pem(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes())
        .await
        .map_err(TlsError::UnusableSelfSigned)
}

/// A self-signed TLS configuration from PEM text (the key may be in the same text), or why not.
async fn tls_of_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Tls, String> {
    let fingerprint = fingerprint_of_pem(cert_pem).ok_or("no PEM certificate")?;
    let config = RustlsConfig::from_pem(cert_pem.to_vec(), key_pem.to_vec())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Tls {
        config: http1_only(config),
        fingerprint,
        self_signed: true,
    })
}

fn tls_cert_der(pem: &str) -> Option<Vec<u8>> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()?;
    Some(der.as_ref().to_vec())
}

/// Writes the certificate alone beside the pair, for copying to clients (best effort: the
/// pair is what the service uses).
fn write_cert_copy(path: &Path, pair_text: &str) {
    let Some(start) = pair_text.find("-----BEGIN CERTIFICATE-----") else {
        return;
    };
    let cert = &pair_text[start..];
    if std::fs::read_to_string(path).ok().as_deref() != Some(cert) {
        if let Err(e) = crate::util::fs::write_atomic_mode(path, cert.as_bytes(), 0o644) {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the certificate copy");
        }
    }
}

/// Whether the certificate `der` names `name` (a DNS name, case-insensitive, or an address).
fn covers(der: Option<&[u8]>, name: &str) -> bool {
    let Some(sans) = der.and_then(der::subject_alt_names) else {
        return false;
    };
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => sans.iter().any(|s| *s == der::San::Ip(ip)),
        Err(_) => sans
            .iter()
            .any(|s| matches!(s, der::San::Dns(d) if d.eq_ignore_ascii_case(name))),
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The day (UTC) of `secs`: year, month, day, as `rcgen::date_time_ymd` takes them.
fn ymd(secs: i64) -> (i32, u8, u8) {
    let (y, m, d) = der::civil_from_days(secs.div_euclid(86_400));
    (y as i32, m as u8, d as u8)
}

/// `YYYY-MM-DD` of `secs` (UTC).
pub fn date_text(secs: i64) -> String {
    let (y, m, d) = der::civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
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

/// Upper-case hex bytes joined by colons, as `openssl x509 -fingerprint` prints them.
pub(crate) fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Just enough DER to read a certificate's expiry and subject alternative names.
mod der {
    use std::net::IpAddr;

    /// One TLV: tag, content, and what follows it.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The fields of the TBSCertificate, from the serial number on (the version skipped).
    fn tbs_fields(cert: &[u8]) -> Option<&[u8]> {
        let (0x30, cert, _) = tlv(cert)? else {
            return None;
        };
        let (0x30, tbs, _) = tlv(cert)? else {
            return None;
        };
        let (tag, _, rest) = tlv(tbs)?;
        Some(if tag == 0xa0 { rest } else { tbs })
    }

    /// notAfter, in seconds since the epoch.
    pub fn not_after(cert: &[u8]) -> Option<i64> {
        let fields = tbs_fields(cert)?;
        let (_serial, _, fields) = tlv(fields)?;
        let (_signature, _, fields) = tlv(fields)?;
        let (_issuer, _, fields) = tlv(fields)?;
        let (0x30, validity, _) = tlv(fields)? else {
            return None;
        };
        let (_, _, validity) = tlv(validity)?;
        let (tag, time, _) = tlv(validity)?;
        let text = std::str::from_utf8(time).ok()?;
        let digits = |s: &str| -> Option<i64> {
            s.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| s.parse().ok())?
        };
        let (year, rest) = match tag {
            // UTCTime YYMMDDHHMMSSZ: 50 to 99 are 19xx.
            0x17 => {
                let yy = digits(text.get(..2)?)?;
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
            }
            // GeneralizedTime YYYYMMDDHHMMSSZ.
            0x18 => (digits(text.get(..4)?)?, text.get(4..)?),
            _ => return None,
        };
        let month = digits(rest.get(..2)?)?;
        let day = digits(rest.get(2..4)?)?;
        let hour = digits(rest.get(4..6)?)?;
        let minute = digits(rest.get(6..8)?)?;
        let second = digits(rest.get(8..10)?)?;
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum San {
        Dns(String),
        Ip(IpAddr),
    }

    /// The DNS names and addresses of the subjectAltName extension.
    pub fn subject_alt_names(cert: &[u8]) -> Option<Vec<San>> {
        let mut fields = tbs_fields(cert)?;
        // serial, signature, issuer, validity, subject, subjectPublicKeyInfo
        for _ in 0..6 {
            fields = tlv(fields)?.2;
        }
        while !fields.is_empty() {
            let (tag, content, rest) = tlv(fields)?;
            fields = rest;
            if tag != 0xa3 {
                continue;
            }
            let (0x30, mut extensions, _) = tlv(content)? else {
                return None;
            };
            while !extensions.is_empty() {
                let (_, extension, rest) = tlv(extensions)?;
                extensions = rest;
                let (0x06, oid, mut value) = tlv(extension)? else {
                    return None;
                };
                if oid != [0x55, 0x1d, 0x11] {
                    continue;
                }
                if let Some((0x01, _, rest)) = tlv(value) {
                    value = rest; // critical
                }
                let (0x04, octets, _) = tlv(value)? else {
                    return None;
                };
                let (0x30, mut names, _) = tlv(octets)? else {
                    return None;
                };
                let mut sans = Vec::new();
                while !names.is_empty() {
                    let (tag, name, rest) = tlv(names)?;
                    names = rest;
                    match (tag, name.len()) {
                        (0x82, _) => sans.push(San::Dns(String::from_utf8_lossy(name).into())),
                        (0x87, 4) => {
                            let b: [u8; 4] = name.try_into().ok()?;
                            sans.push(San::Ip(IpAddr::from(b)));
                        }
                        (0x87, 16) => {
                            let b: [u8; 16] = name.try_into().ok()?;
                            sans.push(San::Ip(IpAddr::from(b)));
                        }
                        _ => {}
                    }
                }
                return Some(sans);
            }
        }
        Some(Vec::new())
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date of a day number since 1970-01-01: year, month, day.
    pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (
            if m <= 2 {
                yoe + era * 400 + 1
            } else {
                yoe + era * 400
            },
            m,
            d,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(der::days_from_civil(1970, 1, 1), 0);
        assert_eq!(der::days_from_civil(2000, 3, 1), 11_017);
        for day in [-1, 0, 59, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = der::civil_from_days(day);
            assert_eq!(der::days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn a_generated_certificate_reads_back_its_expiry_and_names() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let names = certificate_names(&["dnsexfil.example".into(), "10.1.2.3".into()]);
        let pair = generate_pair(&names, now).unwrap();
        let der = tls_cert_der(&pair.cert_pem).unwrap();
        let not_after = der::not_after(&der).unwrap();
        let expected = unix_secs(now) + SELF_SIGNED_VALIDITY.as_secs() as i64;
        // rcgen takes whole days.
        assert!(
            (expected - 86_400..=expected).contains(&not_after),
            "{not_after}"
        );
        for name in [
            "localhost",
            "127.0.0.1",
            "::1",
            "dnsexfil.example",
            "DNSEXFIL.example",
            "10.1.2.3",
        ] {
            assert!(covers(Some(&der), name), "{name}");
        }
        assert!(!covers(Some(&der), "other.example"));
        assert!(!covers(Some(&der), "10.1.2.4"));
    }

    #[tokio::test]
    async fn the_stored_pair_is_reused_and_replaced_only_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed_stored(dir.path(), &[]).await.unwrap();
        assert_eq!(
            first.outcome,
            StoredOutcome::Generated {
                reason: "none was stored yet".into()
            }
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&first.pair_file), 0o600, "the key is private");
            assert_eq!(mode(&first.cert_file), 0o644);
        }
        let again = self_signed_stored(dir.path(), &["dnsexfil.example".into()])
            .await
            .unwrap();
        assert_eq!(again.outcome, StoredOutcome::Reused);
        assert_eq!(again.tls.fingerprint, first.tls.fingerprint);
        assert_eq!(again.missing_names, vec!["dnsexfil.example".to_string()]);
        let copy = std::fs::read_to_string(&again.cert_file).unwrap();
        assert_eq!(
            fingerprint_of_pem(copy.as_bytes()).unwrap(),
            first.tls.fingerprint
        );

        // Unreadable: replaced, and the reason says so.
        std::fs::write(&first.pair_file, "not a certificate").unwrap();
        let replaced = self_signed_stored(dir.path(), &[]).await.unwrap();
        assert!(
            matches!(&replaced.outcome, StoredOutcome::Generated { reason } if reason.contains("no certificate")),
            "{:?}",
            replaced.outcome
        );
        assert_ne!(replaced.tls.fingerprint, first.tls.fingerprint);

        // Expiring within 30 days: replaced.
        let soon = generate_pair(
            &certificate_names(&[]),
            SystemTime::now() - SELF_SIGNED_VALIDITY + Duration::from_secs(20 * 86_400),
        )
        .unwrap();
        std::fs::write(
            &first.pair_file,
            format!("{}{}", soon.key_pem, soon.cert_pem),
        )
        .unwrap();
        let renewed = self_signed_stored(dir.path(), &[]).await.unwrap();
        assert!(
            matches!(&renewed.outcome, StoredOutcome::Generated { reason } if reason.contains("expires on")),
            "{:?}",
            renewed.outcome
        );
        assert!(renewed.not_after - unix_secs(SystemTime::now()) > 3000 * 86_400);

        // A key that does not match the certificate: replaced.
        let other = generate_pair(&certificate_names(&[]), SystemTime::now()).unwrap();
        let stored = std::fs::read_to_string(&renewed.pair_file).unwrap();
        let cert_start = stored.find("-----BEGIN CERTIFICATE-----").unwrap();
        std::fs::write(
            &renewed.pair_file,
            format!("{}{}", other.key_pem, &stored[cert_start..]),
        )
        .unwrap();
        let rematched = self_signed_stored(dir.path(), &[]).await.unwrap();
        assert!(
            matches!(&rematched.outcome, StoredOutcome::Generated { reason } if reason.contains("cannot be used")),
            "{:?}",
            rematched.outcome
        );
    }

    #[tokio::test]
    async fn an_unwritable_data_directory_still_serves_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the tls folder should be.
        std::fs::write(dir.path().join("tls"), "").unwrap();
        let stored = self_signed_stored(dir.path(), &[]).await.unwrap();
        assert!(
            matches!(&stored.outcome, StoredOutcome::NotStored { .. }),
            "{:?}",
            stored.outcome
        );
    }
}
