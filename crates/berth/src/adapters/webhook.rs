//! Webhook deliveries over HTTP(S) with reqwest (rustls).

use std::time::Duration;

use async_trait::async_trait;
use berth_core::error_chain::describe;

use crate::ports::webhook::{WebhookError, WebhookRequest, WebhookSender};

/// The longest one attempt may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct HttpWebhookSender {
    client: reqwest::Client,
}

impl HttpWebhookSender {
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(HttpWebhookSender {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .connect_timeout(TIMEOUT)
                // A receiver's redirect is not followed: a delivery goes to
                // the configured URL or fails.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                .build()?,
        })
    }
}

#[async_trait]
impl WebhookSender for HttpWebhookSender {
    async fn send(&self, request: &WebhookRequest) -> Result<u16, WebhookError> {
        let mut req = self.client.post(&request.url).body(request.body.clone());
        for (name, value) in &request.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let response = req
            .send()
            .await
            .map_err(|e| WebhookError::Transport(describe(&e)))?;
        Ok(response.status().as_u16())
    }
}
