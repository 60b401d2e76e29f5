//! Webhook delivery: every notification intent a change commits is also
//! written, in that change's transaction, as one delivery row per webhook
//! whose `types` match (see [`Context::webhook_deliveries_for`]). One loop
//! per webhook POSTs them strictly in commit order: the head is retried
//! with exponential backoff (1 s doubling to 5 min) until the receiver
//! answers 2xx, and nothing behind it is sent before. A receiver that is
//! down loses nothing; a restart of berth picks the queue up where it was.
//!
//! Each POST carries `X-Berth-Signature: sha256=<hex HMAC-SHA256(secret,
//! body)>` and `X-Berth-Delivery: <id>` (the same id on every retry).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::event::Notification;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::error::Result;
use crate::ports::store::{NewWebhookDelivery, WebhookDelivery};
use crate::ports::webhook::{WebhookRequest, WebhookSender};

/// The first retry waits this long; each further one twice as long…
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// …up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// With nothing pending, the queue is looked at again this often even
/// without a wake-up (another replica may have written to it).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Delivered rows are kept this long for the delivery log…
pub const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
/// …and at most this many per webhook.
pub const KEEP_DELIVERED_ROWS: u32 = 10_000;
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Backlogs are counted up to this (status shows "more than").
pub const BACKLOG_CAP: u32 = 10_000;
/// The longest error text kept for a failed attempt.
const ERROR_MAX: usize = 500;

/// One `[[webhooks]]` entry, validated (see `config.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    /// Unique among the webhooks; the key of its queue and metrics label.
    pub name: String,
    pub url: String,
    pub secret: String,
    /// Notification types delivered; empty = all.
    pub types: Vec<String>,
}

impl WebhookSpec {
    pub fn wants(&self, notification_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == notification_type)
    }
}

/// What the status shows of a webhook besides its backlog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookHealth {
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    pub last_delivered_at_ms: Option<i64>,
}

/// A configured webhook and its loop's shared state.
pub struct Webhook {
    pub spec: WebhookSpec,
    /// Woken after a commit that wrote a delivery for this webhook (one
    /// loop waits on it: a wake-up while it is busy is kept as a permit).
    pub wake: tokio::sync::Notify,
    health: Mutex<WebhookHealth>,
}

impl Webhook {
    pub fn health(&self) -> WebhookHealth {
        self.health.lock().unwrap().clone()
    }
}

/// Every configured webhook (none by default).
#[derive(Default)]
pub struct Webhooks {
    hooks: Vec<Arc<Webhook>>,
}

impl Webhooks {
    pub fn new(specs: Vec<WebhookSpec>) -> Self {
        Webhooks {
            hooks: specs
                .into_iter()
                .map(|spec| {
                    Arc::new(Webhook {
                        spec,
                        wake: tokio::sync::Notify::new(),
                        health: Mutex::new(WebhookHealth::default()),
                    })
                })
                .collect(),
        }
    }

    pub fn all(&self) -> &[Arc<Webhook>] {
        &self.hooks
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Webhook>> {
        self.hooks.iter().find(|h| h.spec.name == name)
    }
}

/// The JSON body of a delivery: the intent in the shape of the items of
/// `GET /v1/notifications`.
pub fn delivery_body(n: &Notification) -> String {
    serde_json::json!({
        "id": n.id,
        "notification_type": n.notification_type,
        "audience": n.audience,
        "payload": n.payload,
        "created_at": n.created_at_ms,
    })
    .to_string()
}

impl Context {
    /// The delivery rows `notifications` make: one per notification and
    /// matching webhook, notifications in order.
    pub fn webhook_deliveries_for(
        &self,
        notifications: &[Notification],
    ) -> Vec<NewWebhookDelivery> {
        let mut out = Vec::new();
        for n in notifications {
            let mut body = None;
            for hook in self.webhooks.all() {
                if !hook.spec.wants(&n.notification_type) {
                    continue;
                }
                let body = body.get_or_insert_with(|| delivery_body(n));
                out.push(NewWebhookDelivery {
                    id: uuid::Uuid::now_v7().to_string(),
                    webhook: hook.spec.name.clone(),
                    notification_id: n.id.clone(),
                    notification_type: n.notification_type.clone(),
                    body: body.clone(),
                    created_at_ms: n.created_at_ms,
                });
            }
        }
        out
    }

    /// Wakes the loops of the webhooks `deliveries` were written for.
    pub(crate) fn wake_webhooks(&self, deliveries: &[NewWebhookDelivery]) {
        for hook in self.webhooks.all() {
            if deliveries.iter().any(|d| d.webhook == hook.spec.name) {
                hook.wake.notify_one();
            }
        }
    }
}

/// RFC 2104 HMAC with SHA-256.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // Any key length is valid for HMAC, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The `X-Berth-Signature` value of `body` under `secret`.
pub fn signature(secret: &str, body: &str) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), body.as_bytes()))
    )
}

/// The wait after the `failures`-th failed attempt in a row (1-based).
pub fn backoff(failures: i64) -> Duration {
    let doublings = u32::try_from(failures.max(1) - 1)
        .unwrap_or(u32::MAX)
        .min(16);
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// What one step of a delivery loop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing pending.
    Idle,
    /// The head was delivered.
    Delivered,
    /// The head failed, for the `attempts`-th time.
    Failed { attempts: i64 },
}

/// The delivery loop of one webhook.
pub struct WebhookDeliverer {
    ctx: Arc<Context>,
    hook: Arc<Webhook>,
    sender: Arc<dyn WebhookSender>,
}

impl WebhookDeliverer {
    pub fn new(ctx: Arc<Context>, hook: Arc<Webhook>, sender: Arc<dyn WebhookSender>) -> Self {
        WebhookDeliverer { ctx, hook, sender }
    }

    /// One deliverer per configured webhook.
    pub fn for_all(ctx: &Arc<Context>, sender: &Arc<dyn WebhookSender>) -> Vec<Arc<Self>> {
        ctx.webhooks
            .all()
            .iter()
            .map(|hook| Arc::new(Self::new(ctx.clone(), hook.clone(), sender.clone())))
            .collect()
    }

    fn name(&self) -> &str {
        &self.hook.spec.name
    }

    /// Delivers until `cancel`: the head first, retried with backoff.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut store_failures = 0i64;
        let mut last_prune: Option<tokio::time::Instant> = None;
        loop {
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(tokio::time::Instant::now());
                if let Err(e) = self.prune().await {
                    tracing::warn!(webhook = self.name(), error = %e, "could not prune the delivery log");
                }
            }
            let step = self.deliver_once().await;
            let wait = match &step {
                Ok(Step::Delivered) => {
                    store_failures = 0;
                    if cancel.is_cancelled() {
                        return;
                    }
                    continue;
                }
                Ok(Step::Idle) => {
                    store_failures = 0;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        _ = self.hook.wake.notified() => {}
                    }
                    continue;
                }
                Ok(Step::Failed { attempts }) => {
                    store_failures = 0;
                    backoff(*attempts)
                }
                Err(e) => {
                    store_failures += 1;
                    tracing::warn!(webhook = self.name(), error = %e, "webhook delivery paused; will retry");
                    backoff(store_failures)
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends the head of the queue once, and records the outcome.
    pub async fn deliver_once(&self) -> Result<Step> {
        let store = &self.ctx.store;
        let Some(head) = store.webhook_head(self.name()).await? else {
            self.ctx.metrics.webhook_backlog_set(self.name(), 0);
            return Ok(Step::Idle);
        };
        let request = self.request(&head);
        let outcome = match self.sender.send(&request).await {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(format!("the receiver answered HTTP {status}")),
            Err(e) => Err(e.to_string()),
        };
        let now = self.ctx.now_ms();
        let step = match outcome {
            Ok(()) => {
                store.webhook_delivered(head.seq, now).await?;
                self.hook.health.lock().unwrap().last_delivered_at_ms = Some(now);
                self.ctx.metrics.webhook_attempt(self.name(), "delivered");
                Step::Delivered
            }
            Err(error) => {
                let error: String = error.chars().take(ERROR_MAX).collect();
                store.webhook_failed(head.seq, &error, now).await?;
                tracing::info!(
                    webhook = self.name(),
                    delivery = %head.id,
                    attempts = head.attempts + 1,
                    %error,
                    "webhook delivery failed; will retry"
                );
                {
                    let mut health = self.hook.health.lock().unwrap();
                    health.last_error = Some(error);
                    health.last_error_at_ms = Some(now);
                }
                self.ctx.metrics.webhook_attempt(self.name(), "failed");
                Step::Failed {
                    attempts: head.attempts + 1,
                }
            }
        };
        let backlog = store
            .webhook_pending_count(self.name(), BACKLOG_CAP)
            .await?;
        self.ctx.metrics.webhook_backlog_set(self.name(), backlog);
        Ok(step)
    }

    fn request(&self, d: &WebhookDelivery) -> WebhookRequest {
        WebhookRequest {
            url: self.hook.spec.url.clone(),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                (
                    "X-Berth-Signature".into(),
                    signature(&self.hook.spec.secret, &d.body),
                ),
                ("X-Berth-Delivery".into(), d.id.clone()),
            ],
            body: d.body.clone(),
        }
    }

    /// Drops delivered rows older than a week or beyond the newest 10,000.
    pub async fn prune(&self) -> Result<u64> {
        let before = self.ctx.now_ms() - KEEP_DELIVERED.as_millis() as i64;
        Ok(self
            .ctx
            .store
            .prune_webhook_deliveries(self.name(), before, KEEP_DELIVERED_ROWS)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test cases 1, 2, 3, 6 and 7 (HMAC-SHA-256).
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 5] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, want) in cases {
            assert_eq!(hex::encode(hmac_sha256(&key, &data)), want);
            assert_eq!(
                hex::decode(want).unwrap(),
                hmac_sha256(&key, &data).to_vec()
            );
        }
        assert_eq!(
            signature("Jefe", "what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let waits: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(0), BACKOFF_FIRST);
        assert_eq!(backoff(i64::MAX), BACKOFF_MAX);
    }

    #[test]
    fn types_filter_and_empty_means_all() {
        let mut spec = WebhookSpec {
            name: "a".into(),
            url: "http://x/".into(),
            secret: "s".into(),
            types: vec![],
        };
        assert!(spec.wants("anything"));
        spec.types = vec!["runtime.start_failed".into()];
        assert!(spec.wants("runtime.start_failed"));
        assert!(!spec.wants("image.update_available"));
    }
}
