//! Where a request's time went, stage by stage: logged at debug level for each `/apply` and
//! `/v1/score`, which `benches/http_roundtrip.sh` reads.

use std::time::Duration;

/// A request's CPU time on its compute thread, by stage.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stages {
    /// The body into rows or events, whichever way they were read.
    pub decode: Duration,
    /// Everything of the scoring but the network.
    pub features: Duration,
    pub forward: Duration,
    /// The answer written (`/apply`) or measured (`/v1/score`, whose answer is written as the
    /// client reads it), with the request's events remembered alongside.
    pub encode: Duration,
}

impl Stages {
    /// Logs the stages with the time the body took to `read`, and the answer's size.
    pub fn log(&self, route: &str, read: Duration, answer_bytes: usize) {
        tracing::debug!(
            route,
            answer_bytes,
            read_ms = ms(read),
            decode_ms = ms(self.decode),
            features_ms = ms(self.features),
            forward_ms = ms(self.forward),
            encode_ms = ms(self.encode),
            "request stages"
        );
    }
}

/// Milliseconds, as the logs give times.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
