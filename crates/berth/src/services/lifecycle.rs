//! Runtime lifecycle: start, stop, restart, remove, read.
//!
//! Each change is written as the runtime record plus its operation row in
//! one transaction: first `in_progress` with a transitional status, then
//! the outcome. A failure leaves no stray container and no running record,
//! and is in the log with a stable code.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_core::container::{
    engine_endpoint, plan_container, Placement, LABEL_OWNER, LABEL_RUNTIME_ID,
};
use berth_core::id::{validate_runtime_id, validate_template_name};
use berth_core::image::{digest_from_repo_digests, resolve_image, ImageRef};
use berth_core::operation::{Operation, OperationKind, Source};
use berth_core::runtime::{LastError, RuntimeRecord};
use berth_core::status::{next_status, LifecycleEvent, RuntimeStatus, TransitionError};
use berth_core::template::{validate_env, Template};
use berth_core::ErrorCode;

mod recreate;

use super::locks::KeyedLocks;
use super::{Caller, Context, Effects};
use crate::error::{Error, Result};
use crate::ports::engine::ProgressFn;
use crate::ports::{EngineError, PullProgress, RuntimePage};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub id: String,
    pub template: String,
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// berth started it now.
    Started(RuntimeRecord),
    /// It was already running; nothing was done.
    AlreadyRunning(RuntimeRecord),
}

/// The operations on an existing runtime that need no request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeAction {
    Stop,
    Restart,
    Remove,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub template: Option<String>,
    pub status: Option<String>,
    /// Only runtimes whose running digest is not their template's pin.
    pub stale: bool,
    /// At most this many (1 to [`MAX_PAGE`]); all when `None`.
    pub limit: Option<u32>,
    /// Only ids after this one: the `next` of the previous page.
    pub after: Option<String>,
}

/// The largest page of `GET /v1/runtimes`.
pub const MAX_PAGE: u32 = 10_000;

pub struct LifecycleService {
    ctx: Arc<Context>,
    /// State stores: recovery and a new run id before every container start.
    pub stores: Arc<super::stores::StoreService>,
    locks: KeyedLocks,
    network_ready: AtomicBool,
}

fn transition_error(id: &str, e: TransitionError) -> Error {
    match e {
        TransitionError::Removed => Error::new(
            ErrorCode::RuntimeRemoved,
            format!("runtime {id:?} was removed; a removed id cannot be used again"),
        ),
        other => Error::new(ErrorCode::Conflict, format!("runtime {id:?}: {other}")),
    }
}

/// Under the runtime's lock no operation of this process is in flight, so a
/// transitional status can only be left over from a crash: treat it as failed.
fn settled(status: RuntimeStatus) -> RuntimeStatus {
    if status.is_transitional() {
        RuntimeStatus::Failed
    } else {
        status
    }
}

/// Moves an operation that is under way to its next status.
fn advance(rec: &mut RuntimeRecord, event: LifecycleEvent) -> Result<()> {
    rec.status = next_status(Some(rec.status), event).map_err(|e| transition_error(&rec.id, e))?;
    Ok(())
}

/// The failed end of an operation: the record keeps the error, the
/// operation row says why; written together by the caller.
pub(super) fn note_failure(rec: &mut RuntimeRecord, op: &mut Operation, err: &Error, now: i64) {
    rec.last_error = Some(LastError {
        code: err.code.as_str().to_string(),
        message: err.message.clone(),
    });
    rec.updated_at_ms = now;
    op.fail(err.code.as_str(), &err.message, now);
}

/// The first step of a new operation, from the record's settled status.
fn begin(rec: &mut RuntimeRecord, event: LifecycleEvent) -> Result<()> {
    rec.status =
        next_status(Some(settled(rec.status)), event).map_err(|e| transition_error(&rec.id, e))?;
    Ok(())
}

/// What `prepare_create` readied.
struct Prepared {
    image_ref: String,
    digest: Option<String>,
    state_dir: PathBuf,
    plugins_dir: PathBuf,
}

/// The facts of a runtime's new container, for its operation row.
fn with_container_details(mut op: Operation, rec: &RuntimeRecord) -> Operation {
    op = op.detail("container_id", rec.container_id.clone().unwrap_or_default());
    if let Some(r) = &rec.image_ref {
        op = op.detail("image_ref", r.clone());
    }
    if let Some(d) = &rec.image_digest {
        op = op.detail("image_digest", d.clone());
    }
    op
}

pub(crate) fn no_progress(_: PullProgress) {}

impl LifecycleService {
    pub fn new(ctx: Arc<Context>) -> Self {
        LifecycleService {
            stores: Arc::new(super::stores::StoreService::new(ctx.clone())),
            ctx,
            locks: KeyedLocks::default(),
            network_ready: AtomicBool::new(false),
        }
    }

    pub async fn get(&self, id: &str) -> Result<RuntimeRecord> {
        validate_runtime_id(id)?;
        self.ctx
            .store
            .get_runtime(id)
            .await?
            .ok_or_else(|| Error::runtime_not_found(id))
    }

    /// A keyset page of runtime records by id (all of them without a
    /// limit); `next` is set when more follow.
    pub async fn list(&self, query: &ListQuery) -> Result<super::Page<RuntimeRecord>> {
        if let Some(t) = &query.template {
            validate_template_name(t)?;
        }
        let status = query
            .status
            .as_deref()
            .map(|s| s.parse::<RuntimeStatus>().map_err(Error::invalid))
            .transpose()?;
        if let Some(l) = query.limit {
            if !(1..=MAX_PAGE).contains(&l) {
                return Err(Error::invalid(format!(
                    "limit {l} is out of range: use 1 to {MAX_PAGE}, or leave it out for all"
                )));
            }
        }
        if let Some(a) = &query.after {
            validate_runtime_id(a).map_err(|e| {
                Error::invalid(format!(
                    "after {a:?} is not a runtime id ({e}): pass the \"next\" of the previous page"
                ))
            })?;
        }
        let runtimes = self
            .ctx
            .store
            .list_runtimes_page(&RuntimePage {
                template: query.template.clone(),
                status,
                stale: query.stale,
                after: query.after.clone(),
                // One more than asked: it tells whether a next page exists.
                limit: query.limit.map(|l| l + 1),
            })
            .await?;
        Ok(super::Page::from_overfetch(runtimes, query.limit, |r| {
            r.id.as_str()
        }))
    }

    async fn template(&self, name: &str) -> Result<Template> {
        self.ctx
            .store
            .get_template(name)
            .await?
            .ok_or_else(|| Error::template_not_found(name))
    }

    /// Starts a runtime; idempotent per id (a running runtime is returned as
    /// it is).
    pub async fn start(&self, req: StartRequest, caller: &Caller) -> Result<StartOutcome> {
        self.start_with_progress(req, caller, &no_progress).await
    }

    pub async fn start_with_progress(
        &self,
        req: StartRequest,
        caller: &Caller,
        progress: &ProgressFn,
    ) -> Result<StartOutcome> {
        validate_runtime_id(&req.id)?;
        validate_template_name(&req.template)?;
        validate_env(&req.env, "request")?;
        let _guard = self.locks.lock(&req.id).await;

        let existing = self.ctx.store.get_runtime(&req.id).await?;
        if let Some(rec) = &existing {
            if rec.status == RuntimeStatus::Removed {
                return Err(transition_error(&rec.id, TransitionError::Removed));
            }
            if rec.template != req.template {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "runtime {:?} already exists with template {:?}, not {:?}",
                        rec.id, rec.template, req.template
                    ),
                ));
            }
            if !req.env.is_empty() && req.env != rec.env {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "runtime {:?} already exists with other env; remove it and start a new id to change its env",
                        rec.id
                    ),
                ));
            }
            if rec.status == RuntimeStatus::Running && self.container_runs(rec).await? {
                return Ok(StartOutcome::AlreadyRunning(rec.clone()));
            }
        }
        let template = self.template(&req.template).await?;

        let now = self.ctx.now_ms();
        let mut rec = match existing {
            Some(mut rec) => {
                if rec.status == RuntimeStatus::Running {
                    // Its container does not run (checked above): it exited
                    // before the reconciler saw it.
                    advance(&mut rec, LifecycleEvent::Exited)?;
                }
                begin(&mut rec, LifecycleEvent::StartRequested)?;
                rec
            }
            None => {
                let mut rec = RuntimeRecord::new(&req.id, &req.template, req.env.clone(), now);
                rec.status = next_status(None, LifecycleEvent::StartRequested)
                    .map_err(|e| transition_error(&req.id, e))?;
                rec
            }
        };
        rec.updated_at_ms = now;
        let op = self
            .ctx
            .begin_op(OperationKind::Start, caller)
            .for_runtime(&rec.id, &rec.template);
        self.bring_up_recorded(rec, op, &template, progress)
            .await
            .map(StartOutcome::Started)
    }

    /// Whether the recorded container exists and runs.
    async fn container_runs(&self, rec: &RuntimeRecord) -> Result<bool> {
        let Some(cid) = &rec.container_id else {
            return Ok(false);
        };
        let info =
            self.ctx.engine.inspect_container(cid).await.map_err(|e| {
                Error::from_engine(e, ErrorCode::StartFailed, "inspect the container")
            })?;
        Ok(info.is_some_and(|i| i.running))
    }

    /// Writes `rec` (already in `starting`) with `op` in progress, brings the
    /// container up, and records the outcome either way.
    async fn bring_up_recorded(
        &self,
        mut rec: RuntimeRecord,
        mut op: Operation,
        template: &Template,
        progress: &ProgressFn,
    ) -> Result<RuntimeRecord> {
        self.ctx.record(Some(&rec), &op).await?;
        let mut created = None;
        let result = self
            .deadline(self.bring_up(template, &mut rec, &mut created, progress, op.source))
            .await;
        let now = self.ctx.now_ms();
        rec.updated_at_ms = now;
        match result {
            Ok(()) => {
                advance(&mut rec, LifecycleEvent::Started)?;
                rec.last_error = None;
                op = with_container_details(op, &rec);
                op.succeed(now);
                self.ctx.record(Some(&rec), &op).await?;
                Ok(rec)
            }
            Err(err) => {
                // Leave no stray container behind.
                if let Some(cid) = created {
                    if let Err(e) = self.ctx.engine.remove_container(&cid).await {
                        tracing::warn!(runtime = %rec.id, container = %cid, error = %e, "could not remove the container of a failed start");
                        op = op.detail("leftover_container_id", cid);
                    }
                }
                advance(&mut rec, LifecycleEvent::Failed)?;
                note_failure(&mut rec, &mut op, &err, now);
                let effects = Effects {
                    notifications: vec![self.start_failed_notification(&rec, &err)],
                    ..Effects::default()
                };
                self.ctx.commit(Some(&rec), Some(&op), &effects).await?;
                Err(err)
            }
        }
    }

    /// `runtime.image_pull_failed` or `runtime.start_failed`, for admins.
    fn start_failed_notification(
        &self,
        rec: &RuntimeRecord,
        err: &Error,
    ) -> berth_core::event::Notification {
        let mut payload = vec![
            ("runtime_id", rec.id.clone()),
            ("template", rec.template.clone()),
            ("error_code", err.code.as_str().to_string()),
            ("error_message", err.message.clone()),
        ];
        if let Some(image) = &rec.image_ref {
            payload.push(("image_ref", image.clone()));
        }
        let kind = if err.code == ErrorCode::ImagePullFailed {
            "runtime.image_pull_failed"
        } else {
            "runtime.start_failed"
        };
        self.ctx.notification(kind, &payload)
    }

    /// Runs `fut` within the operation deadline.
    async fn deadline<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = self.ctx.settings.operation_deadline;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "the operation did not finish within {}",
                    berth_core::duration::format_duration(limit)
                ),
            )),
        }
    }

    /// Starts the recorded container if it still exists, else creates a new
    /// one from the record and template. `created` is set as soon as a new
    /// container exists, so that the caller can clean it up on failure.
    async fn bring_up(
        &self,
        template: &Template,
        rec: &mut RuntimeRecord,
        created: &mut Option<String>,
        progress: &ProgressFn,
        source: Source,
    ) -> Result<()> {
        let engine = &self.ctx.engine;
        if let Some(cid) = rec.container_id.clone() {
            let info = engine.inspect_container(&cid).await.map_err(|e| {
                Error::from_engine(e, ErrorCode::StartFailed, "inspect the container")
            })?;
            if let Some(info) = info {
                if !info.running {
                    self.stores
                        .begin_run(template, rec, &info.image_id, source)
                        .await?;
                }
                match engine.start_container(&cid).await {
                    Ok(()) => return Ok(()),
                    // Its network was deleted under us; Docker keeps the
                    // container bound to the old one, so a new container on
                    // a new network replaces it (from the record, as always).
                    Err(EngineError::NetworkMissing { .. }) => {
                        engine.remove_container(&cid).await.map_err(|e| {
                            Error::from_engine(
                                e,
                                ErrorCode::StartFailed,
                                "remove the container of a deleted network",
                            )
                        })?;
                        self.network_ready.store(false, Ordering::Release);
                    }
                    Err(e) => {
                        return Err(Error::from_engine(
                            e,
                            ErrorCode::StartFailed,
                            "start the container",
                        ))
                    }
                }
            }
            // The container is gone: create a new one below.
            rec.container_id = None;
        }

        let Prepared {
            image_ref,
            digest,
            state_dir,
            plugins_dir,
        } = self.prepare_create(template, rec, progress).await?;

        let generation = rec.generation + 1;
        let state_dir_text = state_dir.to_string_lossy();
        let plugins_dir_text = plugins_dir.to_string_lossy();
        let place = Placement {
            owner: &self.ctx.settings.owner,
            network: &self.ctx.settings.network,
            state_dir: &state_dir_text,
            plugins_dir: &plugins_dir_text,
        };
        let spec = plan_container(
            &place,
            template,
            rec,
            &image_ref,
            generation,
            self.ctx.now_ms(),
        );
        let cid = match engine.create_container(&spec).await {
            Ok(id) => id,
            Err(EngineError::Conflict(_)) => {
                // A container of this name exists without being recorded: a
                // crash between create and record left it. Clear it, once.
                self.remove_leftover(&spec.name, &rec.id).await?;
                engine.create_container(&spec).await.map_err(|e| {
                    Error::from_engine(e, ErrorCode::StartFailed, "create the container")
                })?
            }
            Err(EngineError::NetworkMissing { .. }) => {
                // Someone deleted the network under us; make it again, once.
                self.network_ready.store(false, Ordering::Release);
                self.ensure_network().await?;
                engine.create_container(&spec).await.map_err(|e| {
                    Error::from_engine(e, ErrorCode::StartFailed, "create the container")
                })?
            }
            Err(e) => {
                return Err(Error::from_engine(
                    e,
                    ErrorCode::StartFailed,
                    "create the container",
                ))
            }
        };
        *created = Some(cid.clone());
        self.stores
            .begin_run(template, rec, &image_ref, source)
            .await?;
        self.start_on_network(&cid).await?;
        rec.container_id = Some(cid);
        rec.generation = generation;
        rec.image_ref = Some(image_ref);
        rec.image_digest = digest;
        rec.engine_endpoint = engine_endpoint(template, &rec.id);
        Ok(())
    }

    /// The image a (re)create of `template` runs: the pin, else the tag,
    /// unless the template requires a pin.
    pub(crate) async fn image_for(&self, template: &Template) -> Result<ImageRef> {
        let pin = self.ctx.store.get_pin(&template.name).await?;
        resolve_image(
            &template.name,
            &template.image,
            &template.tag,
            template.require_pin,
            pin.as_ref().map(|p| &p.digest),
        )
        .map_err(|e| {
            Error::new(
                ErrorCode::ImageNotPinned,
                format!(
                    "template {:?} requires a pin and has none; promote one with POST /v1/templates/{}/pin",
                    e.template, e.template
                ),
            )
        })
    }

    /// Everything a new container needs before it is created: its image
    /// present (pulled when missing), the network, the state directory.
    /// The reference is put on `rec` first, so that a failure says what
    /// was asked for.
    async fn prepare_create(
        &self,
        template: &Template,
        rec: &mut RuntimeRecord,
        progress: &ProgressFn,
    ) -> Result<Prepared> {
        let image = self.image_for(template).await?;
        let image_ref = image.to_string();
        rec.image_ref = Some(image_ref.clone());
        let digest = self.ensure_image(&image, progress).await?;
        self.ensure_network().await?;
        let state_dir = self.state_dir(&rec.id);
        let plugins_dir = self.ctx.settings.plugins_dir(&rec.id);
        for (dir, what) in [(&state_dir, "state"), (&plugins_dir, "plugins")] {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                Error::new(
                    ErrorCode::StartFailed,
                    format!(
                        "could not create the {what} directory {}: {e}",
                        dir.display()
                    ),
                )
            })?;
        }
        Ok(Prepared {
            image_ref,
            digest,
            state_dir,
            plugins_dir,
        })
    }

    /// Makes sure the image is present locally, pulling it when missing;
    /// returns the digest it runs, when known.
    async fn ensure_image(
        &self,
        image: &ImageRef,
        progress: &ProgressFn,
    ) -> Result<Option<String>> {
        let engine = &self.ctx.engine;
        let reference = image.to_string();
        let inspect = |e| Error::from_engine(e, ErrorCode::ImagePullFailed, "inspect the image");
        let info = match engine.inspect_image(&reference).await.map_err(inspect)? {
            Some(info) => info,
            None => {
                tracing::info!(image = %reference, "pulling image");
                engine
                    .pull_image(&reference, progress)
                    .await
                    .map_err(|e| match e {
                        EngineError::Unavailable(_)
                        | EngineError::PullFailed { .. }
                        | EngineError::ImageNotFound { .. } => {
                            Error::from_engine(e, ErrorCode::ImagePullFailed, "pull the image")
                        }
                        other => Error::new(
                            ErrorCode::ImagePullFailed,
                            format!("could not pull image {reference}: {other}"),
                        ),
                    })?;
                self.ctx.metrics.image_pulls.inc();
                engine
                    .inspect_image(&reference)
                    .await
                    .map_err(inspect)?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorCode::ImagePullFailed,
                            format!("image {reference} is still missing after a successful pull"),
                        )
                    })?
            }
        };
        Ok(match image.pinned_digest() {
            Some(d) => Some(d.to_string()),
            None => digest_from_repo_digests(
                image.repository(),
                info.repo_digests.iter().map(String::as_str),
            )
            .map(|d| d.to_string()),
        })
    }

    /// Starts a new container; when its network was deleted under us
    /// (Docker 20.10 notices at start, not at create), makes it again, once.
    async fn start_on_network(&self, cid: &str) -> Result<()> {
        let engine = &self.ctx.engine;
        let started = match engine.start_container(cid).await {
            Err(EngineError::NetworkMissing { .. }) => {
                self.network_ready.store(false, Ordering::Release);
                self.ensure_network().await?;
                engine.start_container(cid).await
            }
            other => other,
        };
        started.map_err(|e| Error::from_engine(e, ErrorCode::StartFailed, "start the container"))
    }

    async fn ensure_network(&self) -> Result<()> {
        if self.network_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.ctx
            .engine
            .ensure_network(&self.ctx.settings.network)
            .await
            .map_err(|e| Error::from_engine(e, ErrorCode::StartFailed, "create the network"))?;
        self.network_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Removes a container named `name` if it is this owner's container for
    /// runtime `id`; anything else is a conflict berth must not resolve.
    async fn remove_leftover(&self, name: &str, id: &str) -> Result<Option<String>> {
        let engine = &self.ctx.engine;
        let Some(info) = engine
            .inspect_container(name)
            .await
            .map_err(|e| Error::from_engine(e, ErrorCode::StartFailed, "inspect the container"))?
        else {
            return Ok(None);
        };
        let ours = info.labels.get(LABEL_OWNER).map(String::as_str)
            == Some(self.ctx.settings.owner.as_str())
            && info.labels.get(LABEL_RUNTIME_ID).map(String::as_str) == Some(id);
        if !ours {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!("a container named {name:?} exists and is not this berth's container for runtime {id:?}"),
            ));
        }
        engine.remove_container(&info.id).await.map_err(|e| {
            Error::from_engine(e, ErrorCode::RemoveFailed, "remove a leftover container")
        })?;
        Ok(Some(info.id))
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.ctx.settings.state_dir(id)
    }

    async fn stop_grace(&self, template: &str) -> Result<std::time::Duration> {
        Ok(self
            .ctx
            .store
            .get_template(template)
            .await?
            .map(|t| t.stop_grace)
            .unwrap_or(berth_core::template::DEFAULT_STOP_GRACE))
    }

    pub async fn act(
        &self,
        action: RuntimeAction,
        id: &str,
        caller: &Caller,
    ) -> Result<RuntimeRecord> {
        match action {
            RuntimeAction::Stop => self.stop(id, caller).await,
            RuntimeAction::Restart => self.restart(id, caller).await,
            RuntimeAction::Remove => self.remove(id, caller).await,
        }
    }

    /// Stops a runtime; stopping a stopped runtime changes nothing.
    pub async fn stop(&self, id: &str, caller: &Caller) -> Result<RuntimeRecord> {
        validate_runtime_id(id)?;
        let _guard = self.locks.lock(id).await;
        let mut rec = self.get(id).await?;
        if rec.status == RuntimeStatus::Stopped {
            return Ok(rec);
        }
        begin(&mut rec, LifecycleEvent::StopRequested)?;
        rec.updated_at_ms = self.ctx.now_ms();
        let mut op = self
            .ctx
            .begin_op(OperationKind::Stop, caller)
            .for_runtime(&rec.id, &rec.template);
        self.ctx.record(Some(&rec), &op).await?;

        let grace = self.stop_grace(&rec.template).await?;
        let result = match rec.container_id.clone() {
            None => Ok(()),
            Some(cid) => {
                op = op.detail("container_id", cid.clone());
                match self
                    .deadline(async {
                        self.ctx
                            .engine
                            .stop_container(&cid, grace)
                            .await
                            .map_err(|e| {
                                (
                                    e.clone(),
                                    Error::from_engine(
                                        e,
                                        ErrorCode::StopFailed,
                                        "stop the container",
                                    ),
                                )
                            })
                            .or_else(|(raw, err)| match raw {
                                // Already gone: it is certainly not running.
                                EngineError::NotFound(_) => Ok(()),
                                _ => Err(err),
                            })
                    })
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        };
        let now = self.ctx.now_ms();
        rec.updated_at_ms = now;
        match result {
            Ok(()) => {
                advance(&mut rec, LifecycleEvent::Stopped)?;
                op.succeed(now);
                self.ctx.record(Some(&rec), &op).await?;
                Ok(rec)
            }
            Err(err) => {
                let still_running = self.container_runs(&rec).await.unwrap_or(false);
                rec.status = next_status(
                    Some(RuntimeStatus::Stopping),
                    if still_running {
                        LifecycleEvent::StopFailed
                    } else {
                        LifecycleEvent::Failed
                    },
                )
                .map_err(|e| transition_error(id, e))?;
                note_failure(&mut rec, &mut op, &err, now);
                self.ctx.record(Some(&rec), &op).await?;
                Err(err)
            }
        }
    }

    /// Runtime ids with an operation in flight in this process.
    pub fn busy_ids(&self) -> std::collections::HashSet<String> {
        self.locks.held()
    }

    /// The runtime's lock, if no operation holds it (for the reconciler,
    /// which skips busy runtimes rather than waiting for them).
    /// Waits for the runtime's lock: the caller's change is the only one
    /// under way for it in this process.
    pub async fn lock(&self, id: &str) -> super::locks::KeyGuard {
        self.locks.lock(id).await
    }

    pub fn try_lock(&self, id: &str) -> Option<super::locks::KeyGuard> {
        self.locks.try_lock(id)
    }

    /// Stops and starts the runtime's container (a new one if it is gone).
    pub async fn restart(&self, id: &str, caller: &Caller) -> Result<RuntimeRecord> {
        self.restart_as(id, caller, OperationKind::Restart).await
    }

    /// A restart logged as `kind` (`restart`, or `recreate` when the
    /// reconciler replaces a vanished container).
    pub async fn restart_as(
        &self,
        id: &str,
        caller: &Caller,
        kind: OperationKind,
    ) -> Result<RuntimeRecord> {
        validate_runtime_id(id)?;
        let _guard = self.locks.lock(id).await;
        self.restart_locked(id, caller, kind, Effects::default())
            .await
    }

    /// [`LifecycleService::restart_as`] for a caller that holds the
    /// runtime's lock; `effects` (e.g. the disappearance that made the
    /// reconciler recreate it) are written with the restart's intent, its
    /// first commit.
    pub async fn restart_locked(
        &self,
        id: &str,
        caller: &Caller,
        kind: OperationKind,
        effects: Effects,
    ) -> Result<RuntimeRecord> {
        let mut rec = self.get(id).await?;
        let template = self.template(&rec.template).await?;
        begin(&mut rec, LifecycleEvent::RestartRequested)?;
        rec.updated_at_ms = self.ctx.now_ms();
        let op = self
            .ctx
            .begin_op(kind, caller)
            .for_runtime(&rec.id, &rec.template);
        self.ctx.commit(Some(&rec), Some(&op), &effects).await?;
        if let Some(cid) = rec.container_id.clone() {
            // Stop first; a missing container is fine, bring_up creates one.
            if let Err(e) = self
                .deadline(async {
                    match self
                        .ctx
                        .engine
                        .stop_container(&cid, template.stop_grace)
                        .await
                    {
                        Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
                        Err(e) => Err(Error::from_engine(
                            e,
                            ErrorCode::StopFailed,
                            "stop the container",
                        )),
                    }
                })
                .await
            {
                let mut op = op;
                let now = self.ctx.now_ms();
                let still_running = self.container_runs(&rec).await.unwrap_or(false);
                advance(
                    &mut rec,
                    if still_running {
                        LifecycleEvent::Started
                    } else {
                        LifecycleEvent::Failed
                    },
                )?;
                note_failure(&mut rec, &mut op, &e, now);
                self.ctx.record(Some(&rec), &op).await?;
                return Err(e);
            }
        }
        self.bring_up_recorded(rec, op, &template, &no_progress)
            .await
    }

    /// Removes the container; the record stays, as `removed` (terminal).
    /// The state directory is kept: deleting data is an operator's call.
    pub async fn remove(&self, id: &str, caller: &Caller) -> Result<RuntimeRecord> {
        validate_runtime_id(id)?;
        let _guard = self.locks.lock(id).await;
        let mut rec = self.get(id).await?;
        if rec.status == RuntimeStatus::Removed {
            return Ok(rec);
        }
        let mut op = self
            .ctx
            .begin_op(OperationKind::Remove, caller)
            .for_runtime(&rec.id, &rec.template);
        self.ctx.record(None, &op).await?;
        let result = self
            .deadline(async {
                let mut removed = Vec::new();
                if let Some(cid) = &rec.container_id {
                    self.ctx.engine.remove_container(cid).await.map_err(|e| {
                        Error::from_engine(e, ErrorCode::RemoveFailed, "remove the container")
                    })?;
                    removed.push(cid.clone());
                }
                // Also a container created but never recorded (crash).
                let name = berth_core::container::container_name(&self.ctx.settings.owner, &rec.id);
                if let Some(extra) = self.remove_leftover(&name, &rec.id).await? {
                    removed.push(extra);
                }
                Ok(removed)
            })
            .await;
        let now = self.ctx.now_ms();
        match result {
            Ok(removed) => {
                advance(&mut rec, LifecycleEvent::Removed)?;
                rec.container_id = None;
                rec.engine_endpoint = None;
                rec.updated_at_ms = now;
                if !removed.is_empty() {
                    op = op.detail("container_id", removed.join(","));
                }
                op.succeed(now);
                self.ctx.record(Some(&rec), &op).await?;
                Ok(rec)
            }
            Err(err) => {
                note_failure(&mut rec, &mut op, &err, now);
                self.ctx.record(Some(&rec), &op).await?;
                Err(err)
            }
        }
    }

    /// Boot-time recovery after a crash: operations left `in_progress` are
    /// recorded as failed (`interrupted`), and runtimes left in a
    /// transitional status get the status their container actually has.
    pub async fn recover_interrupted(&self) -> Result<usize> {
        let now = self.ctx.now_ms();
        let ops = self
            .ctx
            .store
            .fail_in_progress_operations(
                ErrorCode::Interrupted.as_str(),
                "berth stopped before this operation finished",
                now,
            )
            .await?;
        if !ops.is_empty() {
            self.ctx.changed();
        }
        for op in &ops {
            let Some(id) = &op.runtime_id else { continue };
            let _guard = self.locks.lock(id).await;
            let Some(mut rec) = self.ctx.store.get_runtime(id).await? else {
                continue;
            };
            if op.kind == OperationKind::Recreate && rec.status == RuntimeStatus::Running {
                self.recover_recreate(rec, op).await?;
                continue;
            }
            if !rec.status.is_transitional() {
                continue;
            }
            if rec.container_id.is_none() {
                // A crash between create and record leaves a container no
                // record points to; nobody was told it runs, so remove it.
                let name = berth_core::container::container_name(&self.ctx.settings.owner, &rec.id);
                if let Err(e) = self.remove_leftover(&name, &rec.id).await {
                    tracing::warn!(runtime = %rec.id, error = %e, "could not remove a leftover container");
                }
            }
            let runs = self.container_runs(&rec).await.unwrap_or(false);
            let settles_as = match (runs, rec.status) {
                (true, RuntimeStatus::Stopping) => LifecycleEvent::StopFailed,
                (true, _) => LifecycleEvent::Started,
                (false, _) => LifecycleEvent::Failed,
            };
            advance(&mut rec, settles_as)?;
            rec.last_error = (!runs).then(|| LastError {
                code: ErrorCode::Interrupted.as_str().to_string(),
                message: format!("berth stopped during a {} operation", op.kind),
            });
            rec.updated_at_ms = now;
            let mut note =
                Operation::begin(uuid::Uuid::now_v7().to_string(), op.kind, op.source, now)
                    .for_runtime(&rec.id, &rec.template)
                    .detail("recovered_from", op.id.clone())
                    .detail("status", rec.status.as_str());
            note.fail(
                ErrorCode::Interrupted.as_str(),
                "recovered after an interrupted operation",
                now,
            );
            self.ctx.record(Some(&rec), &note).await?;
            // The reconciler had decided this runtime must run (a restart
            // policy, `on_disappear = recreate`): finish that decision.
            let reconciler_wanted_it_up = op.source == Source::AutoReconcile
                && matches!(op.kind, OperationKind::Restart | OperationKind::Recreate);
            if reconciler_wanted_it_up && !runs {
                let caller = Caller::new(Source::AutoReconcile);
                if let Err(e) = self
                    .restart_locked(&rec.id, &caller, op.kind, Effects::default())
                    .await
                {
                    tracing::warn!(runtime = %rec.id, error = %e, "could not finish an interrupted automatic restart");
                }
            }
        }
        Ok(ops.len())
    }

    /// Undoes or finishes a recreate a crash cut short. The record was left
    /// on the old container (a recreate writes the record only when it
    /// ends), so every other container of the runtime is a new generation
    /// that never passed its gate: it goes. If the old container is still
    /// there it runs again (undo; a rollout then retries); if it is gone the
    /// runtime is brought up afresh from its record and template (finish).
    async fn recover_recreate(
        &self,
        mut rec: RuntimeRecord,
        interrupted: &Operation,
    ) -> Result<()> {
        let engine = &self.ctx.engine;
        let engine_err = |e| Error::from_engine(e, ErrorCode::StartFailed, "recover a recreate");
        let containers = engine.list_containers().await.map_err(engine_err)?;
        for c in containers.iter().filter(|c| {
            c.labels.get(LABEL_RUNTIME_ID).map(String::as_str) == Some(rec.id.as_str())
                && Some(&c.id) != rec.container_id.as_ref()
        }) {
            engine.remove_container(&c.id).await.map_err(|e| {
                Error::from_engine(e, ErrorCode::RemoveFailed, "remove a half-made container")
            })?;
        }
        let old = match &rec.container_id {
            Some(cid) => engine.inspect_container(cid).await.map_err(engine_err)?,
            None => None,
        };
        let caller = Caller::new(interrupted.source);
        let Some(old) = old else {
            self.restart_locked(
                &rec.id,
                &caller,
                OperationKind::Recreate,
                Effects::default(),
            )
            .await?;
            return Ok(());
        };
        if !old.running {
            let template = self.template(&rec.template).await?;
            self.stores
                .begin_run(&template, &mut rec, &old.image_id, interrupted.source)
                .await?;
            engine.start_container(&old.id).await.map_err(engine_err)?;
        }
        let now = self.ctx.now_ms();
        let mut note = Operation::begin(
            uuid::Uuid::now_v7().to_string(),
            OperationKind::Recreate,
            interrupted.source,
            now,
        )
        .for_runtime(&rec.id, &rec.template)
        .detail("recovered_from", interrupted.id.clone())
        .detail("restored", "true");
        note.fail(
            ErrorCode::Interrupted.as_str(),
            "recovered after an interrupted recreate: the old container runs again",
            now,
        );
        rec.updated_at_ms = now;
        self.ctx.record(Some(&rec), &note).await?;
        Ok(())
    }
}
