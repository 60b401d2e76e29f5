//! Plugins (git drift): install a git source into a runtime at a tracked
//! ref, uninstall it, sweep for upstream moves into an update queue, and
//! apply or dismiss queued updates. Decisions come from
//! `berth_core::plugin`; git runs behind the `RefResolver` port; every
//! record change is written with its operation row in one commit.
//!
//! On disk a plugin is `<data_dir>/runtimes/<id>/plugins/<name>`, which
//! every container of the runtime sees read-only at `/plugins/<name>`. A
//! commit is fetched beside it (`.incoming-…`) and renamed into place; the
//! directory it replaces is renamed aside (`.old-…`, `.removed-…`) first, so
//! a crash leaves either version whole, and [`PluginService::recover`]
//! settles what a crash left aside.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_core::id::validate_runtime_id;
use berth_core::operation::{Operation, OperationKind};
use berth_core::plugin::{
    drift, resolve, CommitSha, DismissedUpdate, DriftDecision, PendingUpdate, PluginName,
    PluginSource, RemoteRef, SourcePolicy, TrackedRef, UpdateAction, UpdateStatus, UpdateStep,
};
use berth_core::runtime::{LastError, RuntimeRecord};
use berth_core::status::RuntimeStatus;
use berth_core::ErrorCode;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::lifecycle::LifecycleService;
use super::{Caller, Context, Effects};
use crate::error::{Error, Result};
use crate::ports::git::{GitError, RefResolver};
use crate::ports::store::{Change, PluginChange, PluginRecord, PluginUpdate, PluginUpdateFilter};

/// Distinct sources a sweep lists at once.
const SWEEP_CONCURRENCY: usize = 8;

/// What configuration says about plugins.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub policy: SourcePolicy,
}

impl Default for PluginSettings {
    fn default() -> Self {
        PluginSettings {
            policy: SourcePolicy {
                allow_file: false,
                allowed_hosts: None,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRequest {
    pub runtime_id: String,
    pub name: String,
    pub source: String,
    pub track: String,
    /// Restart a running runtime afterwards, so that it loads the plugin.
    pub restart: bool,
}

/// One (source, track) a sweep could not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepFailure {
    pub source: String,
    pub track: String,
    pub error: Error,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Distinct (source, track) resolved.
    pub resolved: usize,
    /// Updates queued or moved forward.
    pub queued: usize,
    pub failed: Vec<SweepFailure>,
}

pub struct PluginService {
    ctx: Arc<Context>,
    git: Arc<dyn RefResolver>,
    runtimes: Arc<LifecycleService>,
    last_sweep_ms: AtomicI64,
    /// One sweep at a time in this process (the store keeps one pending
    /// update per plugin across processes).
    sweeping: tokio::sync::Mutex<()>,
}

fn git_error(e: GitError, doing: &str) -> Error {
    let code = match &e {
        GitError::NotFound(_) => ErrorCode::RefNotFound,
        GitError::Refused(_) => ErrorCode::InvalidPluginSource,
        GitError::Unavailable(_) | GitError::Failed { .. } => ErrorCode::GitFailed,
    };
    Error::new(code, format!("could not {doing}: {e}")).caused_by(e)
}

fn io_error(e: std::io::Error, doing: &str, path: &Path) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("could not {doing} {}: {e}", path.display()),
    )
    .caused_by(e)
}

fn plugin_not_found(runtime_id: &str, name: &str) -> Error {
    Error::new(
        ErrorCode::PluginNotFound,
        format!("runtime {runtime_id:?} has no plugin {name:?}"),
    )
}

fn update_not_found(id: &str) -> Error {
    Error::new(
        ErrorCode::UpdateNotFound,
        format!("plugin update {id:?} does not exist"),
    )
}

/// A stored plugin row's source and track, decoded. They were checked
/// against the policy of their day when installed.
fn decode(p: &PluginRecord) -> Result<(PluginSource, TrackedRef)> {
    let corrupt = |what: &str, e: berth_core::ValidationError| {
        Error::new(
            ErrorCode::Internal,
            format!(
                "plugin {:?} of runtime {:?}: stored {what} is invalid: {}",
                p.name, p.runtime_id, e.message
            ),
        )
    };
    let source = PluginSource::parse(&p.source, &SourcePolicy::permissive())
        .map_err(|e| corrupt("source", e))?;
    let track = TrackedRef::parse(&p.track).map_err(|e| corrupt("track", e))?;
    Ok((source, track))
}

/// The port's listing in the core's terms; lines whose object id is not a
/// SHA-1 commit id cannot be installed and are left out. The listing has
/// branches and tags only, so `HEAD` (what track `none` installs) is taken
/// to be `main`, else `master`.
fn core_refs(refs: Vec<crate::ports::git::RemoteRef>) -> Vec<RemoteRef> {
    let mut out: Vec<RemoteRef> = refs
        .into_iter()
        .filter_map(|r| {
            Some(RemoteRef {
                sha: CommitSha::parse(&r.sha).ok()?,
                name: r.name,
            })
        })
        .collect();
    if !out.iter().any(|r| r.name == "HEAD") {
        let default = ["refs/heads/main", "refs/heads/master"]
            .iter()
            .find_map(|name| out.iter().find(|r| r.name == *name).map(|r| r.sha.clone()));
        if let Some(sha) = default {
            out.push(RemoteRef {
                name: "HEAD".to_string(),
                sha,
            });
        }
    }
    out
}

impl PluginService {
    pub fn new(ctx: Arc<Context>, runtimes: Arc<LifecycleService>) -> Self {
        PluginService {
            git: ctx.git.clone(),
            ctx,
            runtimes,
            last_sweep_ms: AtomicI64::new(0),
            sweeping: tokio::sync::Mutex::new(()),
        }
    }

    /// When the last sweep finished (ms since the epoch; 0 = never).
    pub fn last_sweep_ms(&self) -> i64 {
        self.last_sweep_ms.load(Ordering::Relaxed)
    }

    async fn runtime(&self, id: &str) -> Result<RuntimeRecord> {
        validate_runtime_id(id)?;
        let rec = self
            .ctx
            .store
            .get_runtime(id)
            .await?
            .ok_or_else(|| Error::runtime_not_found(id))?;
        Ok(rec)
    }

    pub async fn list(&self, runtime_id: &str) -> Result<Vec<PluginRecord>> {
        self.runtime(runtime_id).await?;
        Ok(self.ctx.store.list_plugins(Some(runtime_id)).await?)
    }

    /// The commit `track` of `source` points at now.
    async fn resolve(&self, source: &PluginSource, track: &TrackedRef) -> Result<CommitSha> {
        let refs = if track.needs_listing() {
            let listed = self
                .git
                .list_refs(source.git_url())
                .await
                .map_err(|e| git_error(e, &format!("list the refs of {source}")))?;
            core_refs(listed)
        } else {
            Vec::new()
        };
        let resolved = resolve(track, &refs).map_err(|e| {
            Error::new(
                e.code(),
                format!("{track} of {source} cannot be installed: {e}"),
            )
        })?;
        Ok(resolved.sha)
    }

    /// Fetches `sha` and renames it into place; returns where the version
    /// it replaced was moved aside, `.old-<name>-<replacing sha>`, so that
    /// recovery can tell from the row whether the commit that followed
    /// happened. The caller removes it once the row is written.
    async fn swap_in(
        &self,
        runtime_id: &str,
        name: &PluginName,
        source: &PluginSource,
        sha: &CommitSha,
        replacing: Option<&str>,
    ) -> Result<Option<PathBuf>> {
        let dir = self.ctx.settings.plugins_dir(runtime_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error(e, "create the plugins directory", &dir))?;
        let tag = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let incoming = dir.join(format!(".incoming-{name}-{tag}"));
        self.git
            .fetch_commit(source.git_url(), sha.as_str(), &incoming)
            .await
            .map_err(|e| git_error(e, &format!("fetch {sha} of {source}")))?;
        let target = dir.join(name.as_str());
        let old = dir.join(format!(".old-{name}-{}", replacing.unwrap_or("none")));
        let replaced = match tokio::fs::rename(&target, &old).await {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_error(e, "move aside", &target)),
        };
        tokio::fs::rename(&incoming, &target)
            .await
            .map_err(|e| io_error(e, "move into place", &target))?;
        sync_dir(&dir).await?;
        Ok(replaced.then_some(old))
    }

    /// Puts the version moved aside by [`PluginService::swap_in`] back.
    async fn swap_back(
        &self,
        runtime_id: &str,
        name: &PluginName,
        old: Option<&Path>,
    ) -> Result<()> {
        let dir = self.ctx.settings.plugins_dir(runtime_id);
        let target = dir.join(name.as_str());
        let failed = dir.join(format!(
            ".incoming-{name}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ));
        tokio::fs::rename(&target, &failed)
            .await
            .map_err(|e| io_error(e, "move aside", &target))?;
        if let Some(old) = old {
            tokio::fs::rename(old, &target)
                .await
                .map_err(|e| io_error(e, "restore", &target))?;
        }
        sync_dir(&dir).await?;
        remove_tree(&failed).await;
        Ok(())
    }

    /// The commit `plugin` of `template`'s runtimes would be updated to:
    /// they must all install it from one source and track.
    pub async fn upstream_for_template(&self, template: &str, plugin: &str) -> Result<CommitSha> {
        let name = PluginName::parse(plugin)?;
        let runtimes: std::collections::BTreeSet<String> = self
            .ctx
            .store
            .list_runtimes(&crate::ports::RuntimeFilter {
                template: Some(template.to_string()),
                status: None,
            })
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let installs: Vec<PluginRecord> = self
            .ctx
            .store
            .list_plugins(None)
            .await?
            .into_iter()
            .filter(|p| p.name == name.as_str() && runtimes.contains(&p.runtime_id))
            .collect();
        let Some(first) = installs.first() else {
            return Err(Error::new(
                ErrorCode::PluginNotFound,
                format!("no runtime of template {template:?} has plugin {plugin:?}"),
            ));
        };
        if let Some(other) = installs
            .iter()
            .find(|p| p.source != first.source || p.track != first.track)
        {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "runtimes of template {template:?} install {plugin:?} from different sources or tracks ({} at {} on {:?}, {} at {} on {:?}); apply them one by one",
                    first.source, first.track, first.runtime_id, other.source, other.track, other.runtime_id
                ),
            ));
        }
        let (source, track) = decode(first)?;
        self.ctx.settings.plugins.policy.check(&source)?;
        self.resolve(&source, &track).await
    }

    /// One runtime of a plugin rollout: installs `to_sha`, restarts the
    /// runtime and waits for its health gate; on failure the previous
    /// commit is put back and the runtime restarted on it. The plugin row,
    /// its pending update (applied) and the operation are one commit.
    pub async fn apply_gated(
        &self,
        runtime_id: &str,
        plugin: &str,
        to_sha: &str,
        caller: &Caller,
    ) -> Result<()> {
        let name = PluginName::parse(plugin)?;
        let to = CommitSha::parse(to_sha)?;
        let _guard = self.runtimes.lock(runtime_id).await;
        let rec = self.runtime(runtime_id).await?;
        let Some(mut row) = self.ctx.store.get_plugin(runtime_id, name.as_str()).await? else {
            return Err(plugin_not_found(runtime_id, name.as_str()));
        };
        let (source, _) = decode(&row)?;
        let template = self
            .ctx
            .store
            .get_template(&rec.template)
            .await?
            .ok_or_else(|| Error::template_not_found(&rec.template))?;
        let mut op = self
            .ctx
            .begin_op(OperationKind::PluginApply, caller)
            .for_runtime(&rec.id, &rec.template)
            .detail("plugin", name.as_str())
            .detail("from_sha", row.installed_sha.clone().unwrap_or_default())
            .detail("to_sha", to.as_str())
            .detail("gated", "true");
        self.ctx.record(None, &op).await?;
        let old = match self
            .swap_in(&rec.id, &name, &source, &to, row.installed_sha.as_deref())
            .await
        {
            Ok(old) => old,
            Err(e) => {
                op.fail(e.code.as_str(), &e.message, self.ctx.now_ms());
                self.ctx.record(None, &op).await?;
                return Err(e);
            }
        };
        let gated = async {
            let restarted = self
                .runtimes
                .restart_locked(&rec.id, caller, OperationKind::Restart, Effects::default())
                .await?;
            let cid = restarted.container_id.clone().unwrap_or_default();
            self.runtimes.health_gate(&template, &rec.id, &cid).await
        }
        .await;
        let now = self.ctx.now_ms();
        if let Err(e) = gated {
            // Restore: the previous commit, and the runtime running it.
            self.swap_back(&rec.id, &name, old.as_deref()).await?;
            let restored = self
                .runtimes
                .restart_locked(&rec.id, caller, OperationKind::Restart, Effects::default())
                .await;
            op = op.detail("restored", restored.is_ok().to_string());
            self.record_failure(row, op, &e).await?;
            return Err(e);
        }
        row.installed_sha = Some(to.to_string());
        row.installed_at_ms = Some(now);
        row.last_error = None;
        let applied = self
            .ctx
            .store
            .pending_plugin_update(&rec.id, name.as_str())
            .await?
            .map(|mut u| {
                u.status = UpdateStatus::Applied;
                u.to_sha = to.to_string();
                u.updated_at_ms = now;
                u
            });
        op.succeed(now);
        self.ctx
            .commit_change(
                Change {
                    plugin: Some(PluginChange::Put(&row)),
                    plugin_update: applied.as_ref(),
                    operation: Some(&op),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await?;
        if let Some(old) = &old {
            remove_tree(old).await;
        }
        Ok(())
    }

    /// Installs a plugin (`(plugin, true)`), or answers the installed one
    /// when it already is from this source and track (`(plugin, false)`).
    pub async fn install(
        &self,
        req: InstallRequest,
        caller: &Caller,
    ) -> Result<(PluginRecord, bool)> {
        let name = PluginName::parse(&req.name)?;
        let source = PluginSource::parse(&req.source, &self.ctx.settings.plugins.policy)?;
        let track = TrackedRef::parse(&req.track)?;
        let rec = self.runtime(&req.runtime_id).await?;
        if rec.status == RuntimeStatus::Removed {
            return Err(Error::new(
                ErrorCode::RuntimeRemoved,
                format!("runtime {:?} was removed; it takes no plugins", rec.id),
            ));
        }
        let guard = self.runtimes.lock(&rec.id).await;
        if let Some(existing) = self.ctx.store.get_plugin(&rec.id, name.as_str()).await? {
            if existing.source == source.as_str() && existing.track == track.to_string() {
                return Ok((existing, false));
            }
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "runtime {:?} already has a plugin {name:?} from {} at {}; remove it first",
                    rec.id, existing.source, existing.track
                ),
            ));
        }
        let mut op = self
            .ctx
            .begin_op(OperationKind::PluginInstall, caller)
            .for_runtime(&rec.id, &rec.template)
            .detail("plugin", name.as_str())
            .detail("source", source.as_str())
            .detail("track", track.to_string());
        self.ctx.record(None, &op).await?;
        let installed = async {
            let sha = self.resolve(&source, &track).await?;
            // A new plugin: nothing was there to move aside.
            self.swap_in(&rec.id, &name, &source, &sha, None).await?;
            Ok::<_, Error>(sha)
        }
        .await;
        let now = self.ctx.now_ms();
        let sha = match installed {
            Ok(sha) => sha,
            Err(e) => {
                op.fail(e.code.as_str(), &e.message, now);
                self.ctx.record(None, &op).await?;
                return Err(e);
            }
        };
        let plugin = PluginRecord {
            runtime_id: rec.id.clone(),
            name: name.to_string(),
            source: source.to_string(),
            track: track.to_string(),
            installed_sha: Some(sha.to_string()),
            installed_at_ms: Some(now),
            resolved_at_ms: Some(now),
            last_error: None,
        };
        op = op.detail("installed_sha", sha.as_str());
        op.succeed(now);
        self.ctx
            .commit_change(
                Change {
                    plugin: Some(PluginChange::Put(&plugin)),
                    operation: Some(&op),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await?;
        if req.restart {
            self.restart_to_load(&rec.id, caller, guard).await?;
        }
        Ok((plugin, true))
    }

    /// Restarts a running runtime (holding its lock) so that it loads what
    /// changed in `/plugins`.
    async fn restart_to_load(
        &self,
        runtime_id: &str,
        caller: &Caller,
        _guard: super::locks::KeyGuard,
    ) -> Result<()> {
        let rec = self.runtime(runtime_id).await?;
        if rec.status == RuntimeStatus::Running {
            self.runtimes
                .restart_locked(
                    runtime_id,
                    caller,
                    OperationKind::Restart,
                    Effects::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Removes the plugin's row, directory and so its mount (the files
    /// vanish from `/plugins/<name>` at once; the runtime is not restarted).
    pub async fn uninstall(&self, runtime_id: &str, name: &str, caller: &Caller) -> Result<()> {
        let name = PluginName::parse(name)?;
        let rec = self.runtime(runtime_id).await?;
        let _guard = self.runtimes.lock(&rec.id).await;
        let Some(plugin) = self.ctx.store.get_plugin(&rec.id, name.as_str()).await? else {
            return Err(plugin_not_found(&rec.id, name.as_str()));
        };
        let dir = self.ctx.settings.plugins_dir(&rec.id);
        let target = dir.join(name.as_str());
        let aside = dir.join(format!(
            ".removed-{name}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        ));
        match tokio::fs::rename(&target, &aside).await {
            Ok(()) => sync_dir(&dir).await?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e, "move aside", &target)),
        }
        let mut op = self
            .ctx
            .begin_op(OperationKind::PluginUninstall, caller)
            .for_runtime(&rec.id, &rec.template)
            .detail("plugin", name.as_str())
            .detail("source", plugin.source.clone());
        if let Some(sha) = &plugin.installed_sha {
            op = op.detail("installed_sha", sha.clone());
        }
        op.succeed(self.ctx.now_ms());
        self.ctx
            .commit_change(
                Change {
                    plugin: Some(PluginChange::Delete {
                        runtime_id: &rec.id,
                        name: name.as_str(),
                    }),
                    operation: Some(&op),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await?;
        remove_tree(&aside).await;
        Ok(())
    }

    pub async fn updates(
        &self,
        status: Option<&str>,
        runtime_id: Option<&str>,
        plugin: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<PluginUpdate>> {
        let status = status
            .map(|s| {
                UpdateStatus::parse(s).map_err(|_| {
                    Error::invalid(format!(
                        "status {s:?} is not one of pending, applied, dismissed"
                    ))
                })
            })
            .transpose()?;
        if let Some(r) = runtime_id {
            validate_runtime_id(r)?;
        }
        if let Some(p) = plugin {
            PluginName::parse(p)?;
        }
        let limit = super::operations::check_limit(limit)?;
        Ok(self
            .ctx
            .store
            .list_plugin_updates(&PluginUpdateFilter {
                status,
                runtime_id: runtime_id.map(str::to_string),
                plugin: plugin.map(str::to_string),
                limit,
            })
            .await?)
    }

    async fn update(&self, id: &str) -> Result<PluginUpdate> {
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Error::new(
                ErrorCode::InvalidId,
                format!("{id:?} is not a plugin update id"),
            ));
        }
        self.ctx
            .store
            .get_plugin_update(id)
            .await?
            .ok_or_else(|| update_not_found(id))
    }

    /// Applies a pending update: re-resolves the track, installs that
    /// commit, records it, marks the update applied and restarts the
    /// runtime. Applying an applied update answers it as it is.
    pub async fn apply(&self, id: &str, caller: &Caller) -> Result<PluginUpdate> {
        let update = self.update(id).await?;
        let guard = self.runtimes.lock(&update.runtime_id).await;
        // Re-read under the lock: another apply or a dismiss may have won.
        let mut update = self.update(id).await?;
        match update.status.request(UpdateAction::Apply) {
            Ok(UpdateStep::AlreadyDone) => return Ok(update),
            Ok(UpdateStep::Proceed) => {}
            Err(refusal) => {
                return Err(Error::new(
                    refusal.code(),
                    format!("plugin update {id:?}: {refusal}"),
                ))
            }
        }
        let Some(mut plugin) = self
            .ctx
            .store
            .get_plugin(&update.runtime_id, &update.plugin)
            .await?
        else {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "plugin update {id:?}: runtime {:?} no longer has plugin {:?}",
                    update.runtime_id, update.plugin
                ),
            ));
        };
        let rec = self.runtime(&update.runtime_id).await?;
        let (source, track) = decode(&plugin)?;
        let name = PluginName::parse(&plugin.name)?;
        let mut op = self
            .ctx
            .begin_op(OperationKind::PluginApply, caller)
            .for_runtime(&rec.id, &rec.template)
            .detail("plugin", name.as_str())
            .detail("update_id", id)
            .detail("from_sha", plugin.installed_sha.clone().unwrap_or_default());
        self.ctx.record(None, &op).await?;
        let previous = plugin.installed_sha.clone();
        let installed = async {
            let sha = self.resolve(&source, &track).await?;
            let old = self
                .swap_in(&rec.id, &name, &source, &sha, previous.as_deref())
                .await?;
            Ok::<_, Error>((sha, old))
        }
        .await;
        let now = self.ctx.now_ms();
        let (sha, old) = match installed {
            Ok(done) => done,
            Err(e) => {
                self.record_failure(plugin, op, &e).await?;
                return Err(e);
            }
        };
        plugin.installed_sha = Some(sha.to_string());
        plugin.installed_at_ms = Some(now);
        plugin.resolved_at_ms = Some(now);
        plugin.last_error = None;
        update.status = UpdateStatus::Applied;
        // What was installed: upstream may have moved since the sweep.
        update.to_sha = sha.to_string();
        update.updated_at_ms = now;
        op = op.detail("installed_sha", sha.as_str());
        op.succeed(now);
        self.ctx
            .commit_change(
                Change {
                    plugin: Some(PluginChange::Put(&plugin)),
                    plugin_update: Some(&update),
                    operation: Some(&op),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await?;
        if let Some(old) = &old {
            remove_tree(old).await;
        }
        self.restart_to_load(&rec.id, caller, guard).await?;
        Ok(update)
    }

    /// The failed end of an apply: the plugin keeps its installed commit and
    /// shows the error; written with the failed operation.
    async fn record_failure(
        &self,
        mut plugin: PluginRecord,
        mut op: Operation,
        e: &Error,
    ) -> Result<()> {
        op.fail(e.code.as_str(), &e.message, self.ctx.now_ms());
        plugin.last_error = Some(LastError {
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
        });
        self.ctx
            .commit_change(
                Change {
                    plugin: Some(PluginChange::Put(&plugin)),
                    operation: Some(&op),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await
    }

    /// Dismisses a pending update; dismissing it again answers it as it is.
    pub async fn dismiss(&self, id: &str, caller: &Caller) -> Result<PluginUpdate> {
        let update = self.update(id).await?;
        let _guard = self.runtimes.lock(&update.runtime_id).await;
        let mut update = self.update(id).await?;
        match update.status.request(UpdateAction::Dismiss) {
            Ok(UpdateStep::AlreadyDone) => return Ok(update),
            Ok(UpdateStep::Proceed) => {}
            Err(refusal) => {
                return Err(Error::new(
                    refusal.code(),
                    format!("plugin update {id:?}: {refusal}"),
                ))
            }
        }
        let now = self.ctx.now_ms();
        update.status = UpdateStatus::Dismissed;
        update.updated_at_ms = now;
        let mut op = self
            .ctx
            .begin_op(OperationKind::PluginDismiss, caller)
            .detail("plugin", update.plugin.clone())
            .detail("update_id", id)
            .detail("to_sha", update.to_sha.clone());
        op.runtime_id = Some(update.runtime_id.clone());
        op.succeed(now);
        self.ctx
            .commit_change(
                Change {
                    plugin_update: Some(&update),
                    operation: Some(&op),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await?;
        Ok(update)
    }

    /// One drift sweep: each distinct (source, track) of a plugin that
    /// tracks a moving ref is resolved once (one listing per source); a
    /// plugin whose upstream commit is not the installed one gets one
    /// pending update (a later move moves its target), with a
    /// `plugin.drift_detected` intent. A failing source is reported and
    /// kept on its plugins' `last_error`; it never stops the others.
    pub async fn sweep(&self) -> Result<SweepReport> {
        self.sweep_until(&CancellationToken::new()).await
    }

    async fn sweep_until(&self, cancel: &CancellationToken) -> Result<SweepReport> {
        let _one = self.sweeping.lock().await;
        let plugins = self.ctx.store.list_plugins(None).await?;
        // source → track → plugins
        let mut groups: BTreeMap<String, BTreeMap<String, Vec<PluginRecord>>> = BTreeMap::new();
        for p in plugins {
            let Ok((_, track)) = decode(&p) else {
                tracing::warn!(runtime = %p.runtime_id, plugin = %p.name, "plugin row does not decode; not swept");
                continue;
            };
            if !track.needs_sweep() || p.installed_sha.is_none() {
                continue;
            }
            groups
                .entry(p.source.clone())
                .or_default()
                .entry(p.track.clone())
                .or_default()
                .push(p);
        }
        let listings: Vec<_> = futures_util::stream::iter(groups.keys().cloned())
            .map(|source| async move {
                let listed = match PluginSource::parse(&source, &SourcePolicy::permissive()) {
                    Ok(s) => self
                        .git
                        .list_refs(s.git_url())
                        .await
                        .map(core_refs)
                        .map_err(|e| git_error(e, &format!("list the refs of {source}"))),
                    Err(e) => Err(e.into()),
                };
                (source, listed)
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .take_until(cancel.cancelled())
            .collect()
            .await;
        // The queue as it is now, read once: a plugin whose decision on it
        // writes nothing costs no query of its own.
        let mut pending = self.pending_updates().await?;
        let mut resolved_keys = Vec::new();
        let mut report = SweepReport::default();
        for (source, listed) in listings {
            let Some(tracks) = groups.remove(&source) else {
                continue;
            };
            for (track_text, members) in tracks {
                if cancel.is_cancelled() {
                    break;
                }
                let upstream = listed.as_ref().map_err(Clone::clone).and_then(|refs| {
                    let track = TrackedRef::parse(&track_text)?;
                    resolve(&track, refs)
                        .map(|r| r.sha)
                        .map_err(|e| Error::new(e.code(), format!("{track} of {source}: {e}")))
                });
                match upstream {
                    Ok(sha) => {
                        report.resolved += 1;
                        for p in members {
                            let key = (p.runtime_id.clone(), p.name.clone());
                            let seen = pending.remove(&key);
                            match self.queue_if_drifted(&p, &sha, seen.as_ref()).await {
                                Ok(true) => report.queued += 1,
                                Ok(false) => {}
                                Err(e) => tracing::warn!(error = %e, "could not record a drift"),
                            }
                            resolved_keys.push(key);
                        }
                    }
                    Err(error) => {
                        for p in members {
                            if let Err(e) = self.note_sweep_failure(p, &error).await {
                                tracing::warn!(error = %e, "could not record a sweep failure");
                            }
                        }
                        report.failed.push(SweepFailure {
                            source: source.clone(),
                            track: track_text,
                            error,
                        });
                    }
                }
            }
        }
        // Every plugin whose track resolved, queued or not, in one write.
        if let Err(e) = self
            .ctx
            .store
            .mark_plugins_resolved(&resolved_keys, self.ctx.now_ms())
            .await
        {
            tracing::warn!(error = %e, "could not record when plugins were resolved");
        }
        let finished = self.ctx.now_ms();
        self.last_sweep_ms.store(finished, Ordering::Relaxed);
        self.ctx.metrics.plugin_sweep_finished(&report, finished);
        Ok(report)
    }

    /// Every pending update, by (runtime id, plugin).
    async fn pending_updates(&self) -> Result<HashMap<(String, String), PluginUpdate>> {
        let rows = self
            .ctx
            .store
            .list_plugin_updates(&PluginUpdateFilter {
                status: Some(UpdateStatus::Pending),
                limit: u32::MAX,
                ..PluginUpdateFilter::default()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|u| ((u.runtime_id.clone(), u.plugin.clone()), u))
            .collect())
    }

    /// Queues (or moves) the plugin's pending update when upstream is not
    /// what is installed; returns whether it did. `seen` is its pending
    /// update as the sweep read the queue. Decided on that alone (no
    /// dismissal counted, which only ever keeps a move from being queued),
    /// a decision that writes nothing is final; one that writes is made
    /// again on the plugin's rows as they are now (its pending update read
    /// again when there was one, its last dismissed one), and written with
    /// its intent in one commit. `resolved_at_ms` is the sweep's to write.
    async fn queue_if_drifted(
        &self,
        p: &PluginRecord,
        upstream: &CommitSha,
        seen: Option<&PluginUpdate>,
    ) -> Result<bool> {
        let installed = p
            .installed_sha
            .as_deref()
            .and_then(|s| CommitSha::parse(s).ok());
        if !writes(&drift(
            installed.as_ref(),
            upstream,
            seen.and_then(pending_of).as_ref(),
            None,
        )) {
            return Ok(false);
        }
        let store = &self.ctx.store;
        // None was pending when the queue was read: should one have been
        // queued since, the store refuses a second (`Conflict`) and the
        // next attempt reads it.
        let mut none_pending = seen.is_none();
        for _attempt in 0..2 {
            let pending_row = if std::mem::take(&mut none_pending) {
                None
            } else {
                store.pending_plugin_update(&p.runtime_id, &p.name).await?
            };
            let pending = pending_row.as_ref().and_then(pending_of);
            let last_dismissed = store
                .list_plugin_updates(&PluginUpdateFilter {
                    status: Some(UpdateStatus::Dismissed),
                    runtime_id: Some(p.runtime_id.clone()),
                    plugin: Some(p.name.clone()),
                    limit: 1,
                })
                .await?
                .into_iter()
                .next()
                .and_then(|u| {
                    Some(DismissedUpdate {
                        from_sha: u.from_sha.as_deref().and_then(|s| CommitSha::parse(s).ok()),
                        to_sha: CommitSha::parse(&u.to_sha).ok()?,
                    })
                });
            let now = self.ctx.now_ms();
            let update = match drift(
                installed.as_ref(),
                upstream,
                pending.as_ref(),
                last_dismissed.as_ref(),
            ) {
                DriftDecision::UpToDate
                | DriftDecision::KeepPending
                | DriftDecision::KeepDismissed => return Ok(false),
                DriftDecision::Queue { to_sha } => PluginUpdate {
                    id: uuid::Uuid::now_v7().to_string(),
                    runtime_id: p.runtime_id.clone(),
                    plugin: p.name.clone(),
                    track: p.track.clone(),
                    from_sha: p.installed_sha.clone(),
                    to_sha: to_sha.to_string(),
                    status: UpdateStatus::Pending,
                    created_at_ms: now,
                    updated_at_ms: now,
                },
                DriftDecision::MoveTarget { to_sha, .. } => {
                    let Some(mut u) = pending_row else {
                        return Ok(false);
                    };
                    u.to_sha = to_sha.to_string();
                    u.updated_at_ms = now;
                    u
                }
            };
            let effects = Effects {
                notifications: vec![self.ctx.notification(
                    "plugin.drift_detected",
                    &[
                        ("runtime_id", p.runtime_id.clone()),
                        ("plugin", p.name.clone()),
                        ("source", p.source.clone()),
                        ("track", p.track.clone()),
                        ("from_sha", update.from_sha.clone().unwrap_or_default()),
                        ("to_sha", update.to_sha.clone()),
                        ("update_id", update.id.clone()),
                    ],
                )],
                ..Effects::default()
            };
            let written = self
                .ctx
                .commit_change(
                    Change {
                        plugin_update: Some(&update),
                        ..Change::default()
                    },
                    &effects,
                )
                .await;
            match written {
                Ok(()) => return Ok(true),
                // Another sweep queued one first: decide again on its row.
                Err(e) if e.code == ErrorCode::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    async fn note_sweep_failure(&self, p: PluginRecord, error: &Error) -> Result<()> {
        // Under the runtime's lock, on the row as it is now: the copy read
        // at the start of the sweep may predate an apply or an uninstall.
        let _guard = self.runtimes.lock(&p.runtime_id).await;
        let Some(mut p) = self.ctx.store.get_plugin(&p.runtime_id, &p.name).await? else {
            return Ok(());
        };
        p.resolved_at_ms = Some(self.ctx.now_ms());
        p.last_error = Some(LastError {
            code: error.code.as_str().to_string(),
            message: error.message.clone(),
        });
        self.ctx
            .commit_change(
                Change {
                    plugin: Some(PluginChange::Put(&p)),
                    ..Change::default()
                },
                &Effects::default(),
            )
            .await
    }

    /// Sweeps every `interval` until `cancel`; a sweep in progress stops
    /// between sources when cancelled.
    pub async fn run_loop(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.sweep_until(&cancel).await {
                Ok(r) if !r.failed.is_empty() => {
                    tracing::warn!(failed = r.failed.len(), "plugin sweep had failures")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "plugin sweep failed"),
            }
        }
    }

    /// Boot: settles what a crash left in plugin directories, from the
    /// rows (the truth):
    /// - `.incoming-…` (a fetch never renamed in) goes;
    /// - `.removed-<name>-…` (an uninstall) comes back when the row is
    ///   still there, else goes;
    /// - `.old-<name>-<sha>` (the version an update replaced) comes back
    ///   when the row still names `<sha>` (the update's commit never
    ///   happened), else goes;
    /// - a plugin directory with no row (an install cut before its commit)
    ///   goes.
    pub async fn recover(&self) -> Result<usize> {
        let runtimes_dir = self.ctx.settings.data_dir.join("runtimes");
        let Ok(mut entries) = tokio::fs::read_dir(&runtimes_dir).await else {
            return Ok(0);
        };
        let mut settled = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let runtime_id = entry.file_name().to_string_lossy().to_string();
            let dir = entry.path().join("plugins");
            let Ok(mut listing) = tokio::fs::read_dir(&dir).await else {
                continue;
            };
            let mut names = Vec::new();
            while let Ok(Some(p)) = listing.next_entry().await {
                names.push(p.file_name().to_string_lossy().to_string());
            }
            // Asides first (they may restore a name), then orphans.
            names.sort_by_key(|n| !n.starts_with('.'));
            for file in names {
                let path = dir.join(&file);
                let row = |name: &str| {
                    let (store, runtime_id, name) =
                        (self.ctx.store.clone(), runtime_id.clone(), name.to_string());
                    async move { store.get_plugin(&runtime_id, &name).await }
                };
                let Some((kind, name, tag)) = aside_parts(&file) else {
                    if row(&file).await?.is_none() {
                        remove_tree(&path).await;
                        settled += 1;
                    }
                    continue;
                };
                let restore = match kind {
                    "removed" => row(name).await?.is_some(),
                    "old" => row(name)
                        .await?
                        .is_some_and(|p| p.installed_sha.as_deref() == Some(tag)),
                    _ => false,
                };
                let target = dir.join(name);
                if restore {
                    remove_tree(&target).await;
                    tokio::fs::rename(&path, &target)
                        .await
                        .map_err(|e| io_error(e, "restore", &target))?;
                } else {
                    remove_tree(&path).await;
                }
                settled += 1;
            }
        }
        Ok(settled)
    }
}

/// A stored pending update in the core's terms; one whose target is not a
/// commit id counts as none.
fn pending_of(u: &PluginUpdate) -> Option<PendingUpdate> {
    Some(PendingUpdate {
        id: u.id.clone(),
        to_sha: CommitSha::parse(&u.to_sha).ok()?,
    })
}

/// Whether the decision writes an update.
fn writes(decision: &DriftDecision) -> bool {
    matches!(
        decision,
        DriftDecision::Queue { .. } | DriftDecision::MoveTarget { .. }
    )
}

/// `.incoming-<name>-<tag>`, `.old-<name>-<sha>`, `.removed-<name>-<tag>`
/// → (kind, name, tag).
fn aside_parts(file: &str) -> Option<(&str, &str, &str)> {
    let rest = file.strip_prefix('.')?;
    let (kind, rest) = rest.split_once('-')?;
    if !matches!(kind, "incoming" | "old" | "removed") {
        return None;
    }
    let (name, tag) = rest.rsplit_once('-')?;
    Some((kind, name, tag))
}

/// A rename is durable only once its directory is synced.
async fn sync_dir(dir: &Path) -> Result<()> {
    let path: PathBuf = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&path)?.sync_all())
        .await
        .map_err(|e| Error::new(ErrorCode::Internal, format!("sync task failed: {e}")))?
        .map_err(|e| io_error(e, "sync", dir))
}

/// Best effort: what is left is settled by the next `recover`.
async fn remove_tree(path: &Path) {
    if let Err(e) = tokio::fs::remove_dir_all(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a plugin directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::aside_parts;

    #[test]
    fn aside_names() {
        assert_eq!(
            aside_parts(".incoming-skills-0a1b"),
            Some(("incoming", "skills", "0a1b"))
        );
        assert_eq!(
            aside_parts(".old-my-tools-ab12"),
            Some(("old", "my-tools", "ab12"))
        );
        assert_eq!(aside_parts(".removed-x-1"), Some(("removed", "x", "1")));
        assert_eq!(aside_parts("skills"), None);
        assert_eq!(aside_parts(".other-x-1"), None);
    }
}
