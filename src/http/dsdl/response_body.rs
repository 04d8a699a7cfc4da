//! A response body sent as up to two byte buffers, one after the other, with its exact length
//! known: the two halves of a large batch's results (written at once on two cores) go out as
//! they were written, instead of being copied into one buffer first.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};

#[derive(Debug, Default)]
pub struct ResponseBody {
    /// Sent in order; an empty part is skipped.
    parts: [Bytes; 2],
    /// Set by [`ResponseBody::timed`]: when the body was handed to the server.
    handed_over: Option<(Instant, usize)>,
}

impl ResponseBody {
    pub fn new(first: Bytes, second: Bytes) -> Self {
        Self {
            parts: [first, second],
            handed_over: None,
        }
    }

    /// This body, logging at debug level how long the server took to send it (until it
    /// dropped the body: its last piece may still be on its way).
    pub fn timed(mut self) -> Self {
        self.handed_over = Some((Instant::now(), self.len()));
        self
    }

    /// Length in bytes (what `Content-Length` says).
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body as one buffer (copied only when it is in two parts).
    pub fn to_bytes(&self) -> Bytes {
        match &self.parts {
            [first, second] if second.is_empty() => first.clone(),
            [first, second] if first.is_empty() => second.clone(),
            [first, second] => [&first[..], &second[..]].concat().into(),
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        Self::new(bytes, Bytes::new())
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some((at, bytes)) = self.handed_over {
            tracing::debug!(
                body_bytes = bytes,
                unsent_bytes = self.len(),
                write_ms = at.elapsed().as_secs_f64() * 1e3,
                "answer sent"
            );
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self
            .get_mut()
            .parts
            .iter_mut()
            .find(|part| !part.is_empty())
            .map(std::mem::take);
        Poll::Ready(next.map(|part| Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn parts_are_sent_in_order_with_their_exact_length() {
        let body = ResponseBody::new(
            Bytes::from_static(b"{\"a\":\"xy"),
            Bytes::from_static(b"z\"}"),
        );
        assert_eq!(body.size_hint().exact(), Some(11));
        assert_eq!(&body.to_bytes()[..], b"{\"a\":\"xyz\"}");
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"{\"a\":\"xyz\"}");

        // One part, either one, and none.
        for body in [
            ResponseBody::from(Bytes::from_static(b"abc")),
            ResponseBody::new(Bytes::new(), Bytes::from_static(b"abc")),
        ] {
            assert_eq!(&body.to_bytes()[..], b"abc");
            assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abc");
        }
        let empty = ResponseBody::default();
        assert!(empty.is_end_stream());
        assert_eq!(empty.collect().await.unwrap().to_bytes().len(), 0);
    }
}
