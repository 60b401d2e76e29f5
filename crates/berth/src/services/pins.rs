//! Image pins: the single source of truth for the digest a template's
//! runtimes must run. Promote, unpin, history, and seeding from config.

use std::sync::Arc;

use berth_core::id::validate_template_name;
use berth_core::image::Digest;
use berth_core::operation::{Operation, OperationKind};
use berth_core::pin::{Pin, PinAction, PinHistoryEntry};
use berth_core::ErrorCode;

use super::{Caller, Context, Effects};
use crate::error::{Error, Result};
use crate::ports::store::{Change, PinChange, RejectionChange};
use crate::ports::RegistryError;

/// A promote's pin, history entry and operation row, not yet written.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub pin: Pin,
    pub entry: PinHistoryEntry,
    pub op: Operation,
}

impl Promotion {
    /// The pin, its history entry and operation, and the lift of any
    /// rejection of this digest.
    pub fn change(&self) -> Change<'_> {
        Change {
            pin: Some(PinChange {
                pin: &self.pin,
                entry: &self.entry,
            }),
            operation: Some(&self.op),
            rejection: Some(RejectionChange::Lift {
                template: &self.pin.template,
                digest: self.pin.digest.as_str(),
            }),
            ..Change::default()
        }
    }
}

pub struct PinService {
    ctx: Arc<Context>,
}

impl PinService {
    pub fn new(ctx: Arc<Context>) -> Self {
        PinService { ctx }
    }

    async fn require_template(&self, name: &str) -> Result<()> {
        validate_template_name(name)?;
        match self.ctx.store.get_template(name).await? {
            Some(_) => Ok(()),
            None => Err(Error::template_not_found(name)),
        }
    }

    fn not_pinned(name: &str) -> Error {
        Error::new(ErrorCode::NotFound, format!("template {name:?} has no pin"))
    }

    pub async fn get(&self, template: &str) -> Result<Pin> {
        self.require_template(template).await?;
        self.ctx
            .store
            .get_pin(template)
            .await?
            .ok_or_else(|| Self::not_pinned(template))
    }

    /// The template's pin, `None` when it has none (or no longer exists);
    /// a storage failure is an error, never "not pinned".
    pub async fn current(&self, template: &str) -> Result<Option<Pin>> {
        Ok(self.ctx.store.get_pin(template).await?)
    }

    /// Promotes `digest` for `template`. Running runtimes are not touched;
    /// the next create resolves to the new pin. Promoting a digest by hand
    /// lifts a rejection the watcher keeps for it after a halted rollout.
    pub async fn promote(
        &self,
        template: &str,
        digest: &str,
        reason: Option<&str>,
        caller: &Caller,
    ) -> Result<Pin> {
        let digest = Digest::parse(digest)?;
        let reason = check_reason(reason)?;
        self.require_template(template).await?;
        let promotion = self.promotion(template, &digest, reason, caller).await?;
        self.ctx
            .commit_change(promotion.change(), &Effects::default())
            .await?;
        Ok(promotion.pin)
    }

    /// What promoting `digest` writes, for a decision that commits it
    /// together with more (a watcher's rollout, a rollout's halt).
    pub async fn promotion(
        &self,
        template: &str,
        digest: &Digest,
        reason: Option<String>,
        caller: &Caller,
    ) -> Result<Promotion> {
        let previous = self.ctx.store.get_pin(template).await?.map(|p| p.digest);
        let now = self.ctx.now_ms();
        let (pin, entry) = promotion(template, digest, previous.clone(), reason, caller, now);
        let mut op = self
            .ctx
            .begin_op(OperationKind::PinPromote, caller)
            .for_template(template)
            .detail("digest", digest.as_str());
        if let Some(prev) = &previous {
            op = op.detail("previous_digest", prev.as_str());
        }
        op.succeed(now);
        Ok(Promotion { pin, entry, op })
    }

    /// Refuses a digest the template's registry repository does not have.
    pub async fn verify(&self, template: &str, digest: &str) -> Result<()> {
        let digest = Digest::parse(digest)?;
        validate_template_name(template)?;
        let t = self
            .ctx
            .store
            .get_template(template)
            .await?
            .ok_or_else(|| Error::template_not_found(template))?;
        // The registry answering "no such manifest" (or repository) is the
        // caller naming something absent (422); failing to answer is a 502.
        match self.ctx.registry.has_digest(&t.image, &digest).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::absent_upstream(
                ErrorCode::InvalidDigest,
                format!("the registry has no manifest {digest} in {}", t.image),
            )),
            Err(e @ RegistryError::NotFound(_)) => Err(Error::absent_upstream(
                ErrorCode::InvalidDigest,
                format!("the registry has no manifest {digest} in {}: {e}", t.image),
            )
            .caused_by(e)),
            Err(e) => Err(Error::new(
                ErrorCode::ImagePullFailed,
                format!("could not verify the digest: {e}"),
            )
            .caused_by(e)),
        }
    }

    /// Seeds a pin from `berth.toml`; never overwrites a pin that was ever
    /// promoted. Returns whether it seeded.
    pub async fn seed(&self, template: &str, digest: &Digest, caller: &Caller) -> Result<bool> {
        let now = self.ctx.now_ms();
        let reason = Some("seeded from configuration".to_string());
        let (pin, entry) = promotion(template, digest, None, reason, caller, now);
        let mut op = self
            .ctx
            .begin_op(OperationKind::PinPromote, caller)
            .for_template(template)
            .detail("digest", digest.as_str())
            .detail("seed", "true");
        op.succeed(now);
        let seeded = self.ctx.store.seed_pin(&pin, &entry, &op).await?;
        if seeded {
            self.ctx.changed();
        }
        Ok(seeded)
    }

    pub async fn unpin(&self, template: &str, reason: Option<&str>, caller: &Caller) -> Result<()> {
        let reason = check_reason(reason)?;
        self.require_template(template).await?;
        let previous = self
            .ctx
            .store
            .get_pin(template)
            .await?
            .ok_or_else(|| Self::not_pinned(template))?;
        let now = self.ctx.now_ms();
        let entry = PinHistoryEntry {
            template: template.to_string(),
            action: PinAction::Unpin,
            digest: None,
            previous_digest: Some(previous.digest.clone()),
            at_ms: now,
            by: caller.by.clone(),
            reason,
        };
        let mut op = self
            .ctx
            .begin_op(OperationKind::PinUnpin, caller)
            .for_template(template)
            .detail("previous_digest", previous.digest.as_str());
        op.succeed(now);
        if !self.ctx.store.unpin(template, &entry, &op).await? {
            return Err(Self::not_pinned(template));
        }
        self.ctx.changed();
        self.ctx.metrics.operation_done(&op);
        Ok(())
    }

    pub async fn history(
        &self,
        template: &str,
        limit: Option<u32>,
    ) -> Result<Vec<PinHistoryEntry>> {
        let limit = super::operations::check_limit(limit)?;
        self.require_template(template).await?;
        Ok(self.ctx.store.pin_history(template, limit).await?)
    }
}

/// The pin and its history entry for promoting `digest`.
fn promotion(
    template: &str,
    digest: &Digest,
    previous: Option<Digest>,
    reason: Option<String>,
    caller: &Caller,
    now: i64,
) -> (Pin, PinHistoryEntry) {
    let pin = Pin {
        template: template.to_string(),
        digest: digest.clone(),
        promoted_at_ms: now,
        promoted_by: caller.by.clone(),
        reason: reason.clone(),
    };
    let entry = PinHistoryEntry {
        template: template.to_string(),
        action: PinAction::Promote,
        digest: Some(digest.clone()),
        previous_digest: previous,
        at_ms: now,
        by: caller.by.clone(),
        reason,
    };
    (pin, entry)
}

fn check_reason(reason: Option<&str>) -> Result<Option<String>> {
    match reason {
        Some(r) if r.len() > 1024 => Err(Error::invalid("reason is longer than 1024 characters")),
        Some(r) if r.trim().is_empty() => Ok(None),
        other => Ok(other.map(str::to_string)),
    }
}
