//! The history in a Redis shared by replicas (`--history redis://host:port/db`).
//!
//! Not written yet: every call answers that the store is unreachable, which the service treats
//! as its degraded mode (scores from the request alone).

use super::{Batch, HistoryConfig, HistoryError, HistoryStore, Recorded, SourceReport, Usage};

pub struct RedisHistory {
    config: HistoryConfig,
    url: String,
}

impl RedisHistory {
    pub fn new(url: &str, config: HistoryConfig) -> Result<RedisHistory, HistoryError> {
        Ok(RedisHistory {
            config,
            url: url.to_string(),
        })
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    fn unreachable(&self) -> HistoryError {
        HistoryError::Unreachable {
            error: format!("no Redis client in this build ({})", self.url),
        }
    }
}

impl HistoryStore for RedisHistory {
    async fn record(&self, _batch: Batch, _now: i64) -> Result<Recorded, HistoryError> {
        Err(self.unreachable())
    }

    async fn source(&self, _src: &str, _now: i64) -> Result<Option<SourceReport>, HistoryError> {
        Err(self.unreachable())
    }

    async fn forget(&self, _src: &str) -> Result<bool, HistoryError> {
        Err(self.unreachable())
    }

    fn usage(&self) -> Usage {
        Usage::default()
    }
}
