//! Health probes: `GET` on a runtime's health path. The real adapter is
//! `adapters::http_probe::HttpProbe`.

use std::time::Duration;

use async_trait::async_trait;

#[async_trait]
pub trait HealthProbe: Send + Sync + 'static {
    /// True when `url` answers 2xx within `timeout`.
    async fn healthy(&self, url: &str, timeout: Duration) -> bool;
}
