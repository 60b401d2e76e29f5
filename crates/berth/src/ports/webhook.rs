//! Sending one webhook delivery: an HTTP `POST` of a body with headers.
//! The service decides what to send, when, and what counts as delivered;
//! adapters: `adapters::webhook::HttpWebhookSender` (reqwest) and
//! `fakes::webhook::FakeWebhookSender`.

use async_trait::async_trait;

/// One attempt of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    /// Sent as given, in order (`Content-Type`, `X-Berth-Signature`,
    /// `X-Berth-Delivery`).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookError {
    /// No HTTP answer: connection refused, timeout, TLS failure…
    #[error("{0}")]
    Transport(String),
}

#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    /// POSTs the request and returns the HTTP status the receiver answered
    /// (any status: the caller decides what a success is).
    async fn send(&self, request: &WebhookRequest) -> Result<u16, WebhookError>;
}
