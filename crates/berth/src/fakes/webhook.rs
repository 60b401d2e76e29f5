//! A [`WebhookSender`] that records every request and answers what it is
//! told: a status, or a transport failure, for the next N requests.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::ports::webhook::{WebhookError, WebhookRequest, WebhookSender};

/// A request as the fake saw it, with tokio's (pausable) time of arrival.
#[derive(Debug, Clone)]
pub struct Received {
    pub request: WebhookRequest,
    pub at: tokio::time::Instant,
    /// What the fake answered.
    pub answer: Result<u16, String>,
}

#[derive(Clone, Default)]
pub struct FakeWebhookSender {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    /// Answers for the next requests, in order; then 200.
    script: VecDeque<Result<u16, String>>,
    /// While set, every request gets this answer (after the script).
    always: Option<Result<u16, String>>,
}

impl FakeWebhookSender {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` requests are answered with `status`.
    pub fn answer_next(&self, n: usize, status: u16) {
        let mut inner = self.inner.lock().unwrap();
        inner.script.extend(std::iter::repeat_n(Ok(status), n));
    }

    /// The next `n` requests fail without an HTTP answer.
    pub fn fail_next(&self, n: usize, error: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner
            .script
            .extend(std::iter::repeat_n(Err(error.to_string()), n));
    }

    /// Every request (after the script) is answered with `status`; `None`
    /// goes back to 200.
    pub fn answer_always(&self, status: Option<u16>) {
        self.inner.lock().unwrap().always = status.map(Ok);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }
}

#[async_trait]
impl WebhookSender for FakeWebhookSender {
    async fn send(&self, request: &WebhookRequest) -> Result<u16, WebhookError> {
        let mut inner = self.inner.lock().unwrap();
        let answer = inner
            .script
            .pop_front()
            .or_else(|| inner.always.clone())
            .unwrap_or(Ok(200));
        inner.received.push(Received {
            request: request.clone(),
            at: tokio::time::Instant::now(),
            answer: answer.clone(),
        });
        answer.map_err(WebhookError::Transport)
    }
}
