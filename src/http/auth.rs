//! DSDL token authentication: the `api_token` environment variable, sent raw or as a Bearer token.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// The configured token, keeping the difference between unset and empty that DSDL reports.
#[derive(Clone)]
pub enum Token {
    Unset,
    Empty,
    Set(String),
}

impl Token {
    pub fn from_env_value(value: Option<String>) -> Self {
        match value {
            None => Token::Unset,
            Some(v) if v.is_empty() => Token::Empty,
            Some(v) => Token::Set(v),
        }
    }

    /// Why a request with this `Authorization` header is refused, or `None` to let it through.
    /// The stock container's reasons, checked in its order.
    pub fn refusal(&self, authorization: Option<&[u8]>) -> Option<&'static str> {
        let Some(given) = authorization else {
            return Some("No header with token");
        };
        let token = match self {
            Token::Unset => return Some("No token setup"),
            Token::Empty => return Some("No token defined"),
            Token::Set(t) => t.as_bytes(),
        };
        let raw_ok = given.ct_eq(token);
        // The scheme name is case-insensitive (RFC 9110): `bearer` and `BEARER` are `Bearer`.
        let bearer_ok = match given.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"Bearer ") => rest.ct_eq(token),
            _ => 0u8.ct_eq(&1u8),
        };
        if bool::from(raw_ok | bearer_ok) {
            None
        } else {
            Some("Invalid token")
        }
    }
}

pub async fn require_token(State(token): State<Token>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match token.refusal(given) {
        None => next.run(req).await,
        Some(reason) => {
            // Splunk only shows "unable to read JSON response" for a 401, so the log says why.
            tracing::warn!(path = %req.uri().path(), reason, "request refused");
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({ "detail": reason })),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_follow_the_stock_container() {
        let t = Token::Set("abc".into());
        assert_eq!(t.refusal(None), Some("No header with token"));
        assert_eq!(t.refusal(Some(b"abc")), None);
        assert_eq!(t.refusal(Some(b"Bearer abc")), None);
        assert_eq!(t.refusal(Some(b"Bearer abd")), Some("Invalid token"));
        assert_eq!(t.refusal(Some(b"bearer abc")), None);
        assert_eq!(t.refusal(Some(b"BEARER abc")), None);
        assert_eq!(t.refusal(Some(b"Bearerabc")), Some("Invalid token"));
        assert_eq!(t.refusal(Some(b"xabc")), Some("Invalid token"));
        assert_eq!(t.refusal(Some(b"")), Some("Invalid token"));
        assert_eq!(Token::Unset.refusal(Some(b"abc")), Some("No token setup"));
        assert_eq!(Token::Empty.refusal(Some(b"abc")), Some("No token defined"));
    }
}
