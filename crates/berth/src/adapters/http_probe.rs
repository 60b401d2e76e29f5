//! Health probes over plain HTTP to a container's address.

use std::time::Duration;

use async_trait::async_trait;

use crate::ports::probe::HealthProbe;

pub struct HttpProbe {
    client: reqwest::Client,
}

impl HttpProbe {
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(HttpProbe {
            // Runtimes are on a local bridge network; a proxy must not be used.
            client: reqwest::Client::builder().no_proxy().build()?,
        })
    }
}

#[async_trait]
impl HealthProbe for HttpProbe {
    async fn healthy(&self, url: &str, timeout: Duration) -> bool {
        match self.client.get(url).timeout(timeout).send().await {
            Ok(resp) => resp.status().is_success(),
            Err(_) => false,
        }
    }
}
