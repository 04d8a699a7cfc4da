//! A request id per request: the caller's `x-request-id` when it is sensible, else a new one.
//! It is echoed in the response and carried by the request's tracing span, so every log line
//! of a request can be found from what the client saw.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id kept; longer (or odd) ones are replaced rather than logged.
const MAX_LEN: usize = 128;

/// Middleware: makes sure the request has a usable id and echoes it in the response.
pub async fn assign(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(&HEADER) {
        Some(given) if acceptable(given.as_bytes()) => given.clone(),
        _ => HeaderValue::from_str(&generate()).expect("hex is a valid header value"),
    };
    req.headers_mut().insert(HEADER.clone(), id.clone());
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(HEADER.clone(), id);
    resp
}

/// The request's id (set by [`assign`], which runs first).
pub fn of(req: &Request) -> &str {
    req.headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// 1 to 128 visible ASCII characters: safe to log and to echo.
fn acceptable(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic())
}

/// 32 hex digits: a random per-process prefix and a counter, so ids never repeat within a
/// process and practically never across restarts.
fn generate() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS's randomness; hashing the time adds per-start noise.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    format!(
        "{prefix:016x}{:016x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_incoming_ids_are_replaced_and_new_ids_differ() {
        assert!(acceptable(b"req-42_a.b"));
        assert!(!acceptable(b""));
        assert!(!acceptable(b"has space"));
        assert!(!acceptable(&[b'a'; 129]));
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(a[..16], b[..16]);
    }
}
