//! Recreate that cannot lose a runtime: built from berth's own record and
//! template (never from the old container's inspected config), the old
//! container is stopped but kept until the new one passes the health gate;
//! on failure the new one is removed and the old one started again.

use berth_core::container::{container_name, engine_endpoint, plan_container, Placement};
use berth_core::health_gate::{self, DockerHealth, GatePolicy, GateStep, Observation};
use berth_core::operation::OperationKind;
use berth_core::runtime::RuntimeRecord;
use berth_core::status::{next_status, LifecycleEvent, RuntimeStatus};
use berth_core::template::Template;
use berth_core::ErrorCode;

use super::{no_progress, note_failure, with_container_details, LifecycleService, Prepared};
use crate::error::{Error, Result};
use crate::services::Caller;

/// The readiness gate of a template with stores and no health check.
const DEFAULT_READINESS_GRACE: std::time::Duration = std::time::Duration::from_secs(30);
const DEFAULT_READINESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

impl LifecycleService {
    /// Replaces a running runtime's container with one on the image its
    /// template resolves to now (pin, else tag), health-gated.
    pub async fn recreate(&self, id: &str, caller: &Caller) -> Result<RuntimeRecord> {
        berth_core::id::validate_runtime_id(id)?;
        let _guard = self.locks.lock(id).await;
        let mut rec = self.get(id).await?;
        let old_cid = match (&rec.container_id, rec.status) {
            (Some(cid), RuntimeStatus::Running) => cid.clone(),
            _ => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "runtime {id:?} is {}; only a running runtime is recreated",
                        rec.status
                    ),
                ))
            }
        };
        let template = self.template(&rec.template).await?;
        let mut op = self
            .ctx
            .begin_op(OperationKind::Recreate, caller)
            .for_runtime(&rec.id, &rec.template)
            .detail("old_container_id", old_cid.clone());
        self.ctx.record(None, &op).await?;

        let mut created = None;
        let mut staged = rec.clone();
        let result = self
            .deadline(self.swap(&template, &mut staged, &old_cid, &mut created, caller))
            .await;
        let now = self.ctx.now_ms();
        match result {
            Ok(()) => {
                rec = staged;
                rec.last_error = None;
                rec.updated_at_ms = now;
                op = with_container_details(op, &rec);
                op.succeed(now);
                self.ctx.record(Some(&rec), &op).await?;
                Ok(rec)
            }
            Err(err) => {
                // Restore: the new container goes, the old one runs again.
                if let Some(new) = created {
                    op = op.detail("failed_container_id", new.clone());
                    if let Err(e) = self.ctx.engine.remove_container(&new).await {
                        tracing::warn!(runtime = %rec.id, container = %new, error = %e, "could not remove the new container of a failed recreate");
                    }
                }
                // The old image must not read state the new one wrote in a
                // newer schema: recovery for the old image first, new run.
                let old_image = rec.image_ref.clone().unwrap_or_default();
                let restored = match self
                    .stores
                    .begin_run(&template, &mut rec, &old_image, caller.source)
                    .await
                {
                    Ok(_) => self
                        .ctx
                        .engine
                        .start_container(&old_cid)
                        .await
                        .map_err(|e| {
                            Error::from_engine(
                                e,
                                ErrorCode::StartFailed,
                                "restart the old container",
                            )
                        }),
                    Err(e) => Err(e),
                };
                if let Err(e) = &restored {
                    tracing::warn!(runtime = %rec.id, error = %e, "could not start the old container again");
                    rec.status = next_status(Some(rec.status), LifecycleEvent::Failed)
                        .map_err(|e| Error::new(ErrorCode::Conflict, e.to_string()))?;
                }
                op = op.detail("restored", restored.is_ok().to_string());
                note_failure(&mut rec, &mut op, &err, self.ctx.now_ms());
                self.ctx.record(Some(&rec), &op).await?;
                Err(err)
            }
        }
    }

    async fn swap(
        &self,
        template: &Template,
        rec: &mut RuntimeRecord,
        old_cid: &str,
        created: &mut Option<String>,
        caller: &Caller,
    ) -> Result<()> {
        let engine = &self.ctx.engine;
        let Prepared {
            image_ref,
            digest,
            state_dir,
            plugins_dir,
        } = self.prepare_create(template, rec, &no_progress).await?;

        engine
            .stop_container(old_cid, template.stop_grace)
            .await
            .map_err(|e| Error::from_engine(e, ErrorCode::StopFailed, "stop the old container"))?;

        let generation = rec.generation + 1;
        let state_dir_text = state_dir.to_string_lossy();
        let plugins_dir_text = plugins_dir.to_string_lossy();
        let place = Placement {
            owner: &self.ctx.settings.owner,
            network: &self.ctx.settings.network,
            state_dir: &state_dir_text,
            plugins_dir: &plugins_dir_text,
        };
        let mut spec = plan_container(
            &place,
            template,
            rec,
            &image_ref,
            generation,
            self.ctx.now_ms(),
        );
        // Old and new exist side by side until the gate passes.
        let canonical = spec.name.clone();
        spec.name = format!("{canonical}-g{generation}");
        let new_cid = engine.create_container(&spec).await.map_err(|e| {
            Error::from_engine(e, ErrorCode::StartFailed, "create the new container")
        })?;
        *created = Some(new_cid.clone());
        self.stores
            .begin_run(template, rec, &image_ref, caller.source)
            .await?;
        engine.start_container(&new_cid).await.map_err(|e| {
            Error::from_engine(e, ErrorCode::StartFailed, "start the new container")
        })?;
        self.health_gate(template, &rec.id, &new_cid).await?;

        engine.remove_container(old_cid).await.map_err(|e| {
            Error::from_engine(e, ErrorCode::RemoveFailed, "remove the old container")
        })?;
        *created = None;
        if let Err(e) = engine
            .rename_container(&new_cid, &container_name(&self.ctx.settings.owner, &rec.id))
            .await
        {
            // Only cosmetic: the record holds the id, labels hold the rest.
            tracing::warn!(runtime = %rec.id, error = %e, "could not give the new container its canonical name");
        }
        rec.container_id = Some(new_cid);
        rec.generation = generation;
        rec.image_ref = Some(image_ref);
        rec.image_digest = digest;
        rec.engine_endpoint = engine_endpoint(template, &rec.id);
        // Still `running`: only a running runtime is recreated, and it runs
        // on the new container now.
        Ok(())
    }

    /// The health gate on the new container: the service observes (inspect,
    /// and the template's probe when it has one) and waits; core's
    /// [`health_gate::next`] decides.
    pub(crate) async fn health_gate(
        &self,
        template: &Template,
        runtime_id: &str,
        cid: &str,
    ) -> Result<()> {
        let policy = GatePolicy::of(template);
        let started_ms = self.ctx.now_ms();
        loop {
            let observation = self.observe_for_gate(&policy, cid).await?;
            match health_gate::next(&policy, self.ctx.now_ms() - started_ms, &observation) {
                GateStep::Pass => break,
                GateStep::Fail { reason } => {
                    return Err(Error::new(ErrorCode::HealthCheckFailed, reason.to_string()))
                }
                GateStep::ProbeAgainAfter(wait) => tokio::time::sleep(wait).await,
            }
        }
        if template.stores.is_empty() && template.store_validator.is_none() {
            return Ok(());
        }
        // A template with stores: readiness is the gate, within the same grace.
        let (grace, interval) = template
            .health
            .as_ref()
            .map_or((DEFAULT_READINESS_GRACE, DEFAULT_READINESS_INTERVAL), |h| {
                (h.grace, h.interval)
            });
        loop {
            let verdict = self
                .stores
                .readiness_of(template, runtime_id, Some(cid))
                .await?;
            if verdict.ok {
                return Ok(());
            }
            let waited =
                std::time::Duration::from_millis((self.ctx.now_ms() - started_ms).max(0) as u64);
            if waited >= grace {
                let mut why = format!(
                    "the new container was not ready within {}: {}",
                    berth_core::duration::format_duration(grace),
                    verdict.reason
                );
                if let Some(first) = verdict.diagnostics.first() {
                    why.push_str(&format!(" ({first})"));
                }
                return Err(Error::new(ErrorCode::HealthCheckFailed, why));
            }
            tokio::time::sleep(interval.min(grace - waited)).await;
        }
    }

    async fn observe_for_gate(&self, policy: &GatePolicy, cid: &str) -> Result<Observation> {
        let info = self.ctx.engine.inspect_container(cid).await.map_err(|e| {
            Error::from_engine(e, ErrorCode::HealthCheckFailed, "inspect the new container")
        })?;
        let Some(info) = info else {
            return Ok(Observation::Gone);
        };
        if !info.running {
            return Ok(Observation::Exited {
                exit_code: info.exit_code,
            });
        }
        let probe_ok = match policy {
            GatePolicy::Probe { check, port } => {
                match info.addresses.get(&self.ctx.settings.network) {
                    Some(ip) => {
                        let url = format!("http://{ip}:{port}{}", check.path);
                        Some(self.ctx.probe.healthy(&url, check.timeout).await)
                    }
                    None => None,
                }
            }
            GatePolicy::Container => None,
        };
        Ok(Observation::Running {
            probe_ok,
            docker_health: info.health.as_deref().map(DockerHealth::from_docker),
        })
    }
}
