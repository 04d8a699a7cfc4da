//! The JSON answer of every DSDL endpoint and the endpoint a message is about.

use super::response_body as body;
use crate::dsdl::results;
/// The JSON body of every DSDL application outcome.
#[derive(Debug)]
pub struct DsdlResponse {
    pub status: &'static str,
    pub message: String,
    /// The results CSV, already escaped as the contents of a JSON string; absent on errors and
    /// staging.
    pub results: Option<results::EscapedResults>,
}

impl axum::response::IntoResponse for DsdlResponse {
    fn into_response(self) -> axum::response::Response {
        json_response(self.into_body())
    }
}

/// A DSDL answer's body as a JSON response.
pub(crate) fn json_response(body: body::ResponseBody) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::new(body),
    )
        .into_response()
}

/// Which endpoint a message is about (its messages start with `/apply` or `/fit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Apply,
    Fit,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Apply => "/apply",
            Endpoint::Fit => "/fit",
        }
    }
}

impl DsdlResponse {
    /// `{"status": ..., "message": ..., "results": "..."}` as the stock container sends it. The
    /// results (megabytes for a large batch) are not copied: the rest is written around them.
    pub fn into_body(self) -> body::ResponseBody {
        let mut head = Vec::with_capacity(64 + self.message.len());
        head.extend_from_slice(b"{\"status\":");
        serde_json::to_writer(&mut head, self.status).expect("writing to a Vec cannot fail");
        head.extend_from_slice(b",\"message\":");
        serde_json::to_writer(&mut head, &self.message).expect("writing to a Vec cannot fail");
        match self.results {
            Some(results) => {
                head.extend_from_slice(b",\"results\":\"");
                let (first, second) = results.wrap(&head, b"\"}");
                body::ResponseBody::new(first, second)
            }
            None => {
                head.push(b'}');
                bytes::Bytes::from(head).into()
            }
        }
    }

    pub fn error(endpoint: Endpoint, what: impl std::fmt::Display) -> Self {
        Self {
            status: "error",
            message: format!("{}: ERROR: {what}", endpoint.path()),
            results: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsdl::table::Table;

    #[test]
    fn body_is_the_stock_json_whether_or_not_the_message_fits_the_headroom() {
        // A small table's results are one part; a large one's are written on two cores and
        // sent in two parts.
        let mut large = String::from("src,query,rank\n");
        for i in 0..(2 * crate::features::PARALLEL_MIN_ROWS + 5) {
            large.push_str(&format!("h{},q{i}.example,{}\n", i % 7, 1 + i % 2));
        }
        for csv in ["src,query,rank\na,\"x\"\"y\",1\n", large.as_str()] {
            let table = Table::parse(csv).unwrap();
            let rows: Vec<usize> = (0..table.len()).step_by(2).collect();
            let probabilities = vec![0.25; rows.len()];
            let mut expected = String::new();
            let predictions = results::Predictions {
                rows: &rows,
                probabilities: &probabilities,
                suppressed: None,
            };
            results::write_results(&mut expected, &table, "t", predictions, 0.5);
            if table.len() == 1 {
                assert_eq!(
                    expected,
                    "src,query,rank,pred_t_proba,pred_t\na,\"x\"\"y\",1,0.25,0\n"
                );
            }
            for message in ["/apply done successfully".to_string(), "é\"".repeat(3000)] {
                let results = results::json_results(&table, "t", predictions, 0.5, 64);
                let body = DsdlResponse {
                    status: "success",
                    message: message.clone(),
                    results: Some(results),
                }
                .into_body();
                let length = body.len();
                let body = body.to_bytes();
                assert_eq!(body.len(), length);
                let text = std::str::from_utf8(&body).unwrap();
                assert!(
                    text.starts_with("{\"status\":\"success\",\"message\":"),
                    "{text}"
                );
                let parsed: serde_json::Value = serde_json::from_str(text).unwrap();
                assert_eq!(parsed["message"], message.as_str());
                assert_eq!(parsed["results"], expected.as_str());
            }
        }
        let error = DsdlResponse::error(Endpoint::Apply, "bad")
            .into_body()
            .to_bytes();
        assert_eq!(
            &error[..],
            b"{\"status\":\"error\",\"message\":\"/apply: ERROR: bad\"}"
        );
    }
}
