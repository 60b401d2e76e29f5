//! The refresh service, one piece shared by `POST /v1/admin/images/refresh`,
//! `berth refresh` and the image watcher: pull each template's target image
//! (the pin, else the tag) and, with `recreate`, recreate every running
//! runtime of the template whose digest differs.

use std::sync::Arc;

use berth_core::id::validate_template_name;
use berth_core::image::{digest_from_repo_digests, ImageRef};
use berth_core::status::RuntimeStatus;
use berth_core::ErrorCode;

use super::lifecycle::{no_progress, LifecycleService};
use super::{Caller, Context};
use crate::error::{Error, Result};
use crate::ports::RuntimeFilter;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshResult {
    /// Templates whose image was pulled.
    pub pulled: Vec<String>,
    /// Runtimes recreated on the new image.
    pub recreated: Vec<String>,
    /// (template, error) — one template's failure does not stop the others.
    pub failed: Vec<(String, String)>,
}

pub struct RefreshService {
    ctx: Arc<Context>,
    runtimes: Arc<LifecycleService>,
}

impl RefreshService {
    pub fn new(ctx: Arc<Context>, runtimes: Arc<LifecycleService>) -> Self {
        RefreshService { ctx, runtimes }
    }

    /// `templates`: the names to refresh, or all when `None`. A failure to
    /// read templates or runtimes at all is an error (500); anything per
    /// template is a soft failure in the result.
    pub async fn refresh(
        &self,
        templates: Option<&[String]>,
        recreate: bool,
        caller: &Caller,
    ) -> Result<RefreshResult> {
        // Not being able to list at all fails the whole call (500); per
        // template failures are soft.
        let cannot_list = |e: crate::ports::StoreError| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot list templates and runtimes: {e}"),
            )
        };
        let all = self.ctx.store.list_templates().await.map_err(cannot_list)?;
        let names: Vec<String> = match templates {
            Some(names) => {
                for n in names {
                    validate_template_name(n)?;
                }
                names.to_vec()
            }
            None => all.iter().map(|t| t.name.clone()).collect(),
        };
        let runtimes = self
            .ctx
            .store
            .list_runtimes(&RuntimeFilter::default())
            .await?;
        let mut result = RefreshResult::default();
        for name in names {
            let Some(template) = all.iter().find(|t| t.name == name) else {
                result
                    .failed
                    .push((name.clone(), Error::template_not_found(&name).message));
                continue;
            };
            let digest = match self.pull(template).await {
                Ok(d) => d,
                Err(e) => {
                    result.failed.push((name.clone(), e.message));
                    continue;
                }
            };
            result.pulled.push(name.clone());
            if !recreate {
                continue;
            }
            for rt in runtimes.iter().filter(|r| {
                r.template == name
                    && r.status == RuntimeStatus::Running
                    && r.image_digest.as_deref() != digest.as_deref()
            }) {
                match self.runtimes.recreate(&rt.id, caller).await {
                    Ok(_) => result.recreated.push(rt.id.clone()),
                    Err(e) => result
                        .failed
                        .push((name.clone(), format!("runtime {}: {}", rt.id, e.message))),
                }
            }
        }
        Ok(result)
    }

    /// Pulls the template's target image; returns the digest it resolves to.
    pub async fn pull(&self, template: &berth_core::template::Template) -> Result<Option<String>> {
        let image = self.runtimes.image_for(template).await?;
        self.pull_image(&image).await
    }

    /// Pulls `image`; returns the digest it runs (the pinned one, or the
    /// one Docker reports for the repository after pulling a tag).
    pub async fn pull_image(&self, image: &ImageRef) -> Result<Option<String>> {
        let reference = image.to_string();
        self.ctx
            .engine
            .pull_image(&reference, &no_progress)
            .await
            .map_err(|e| Error::from_engine(e, ErrorCode::ImagePullFailed, "pull the image"))?;
        self.ctx.metrics.image_pulls.inc();
        if let Some(d) = image.pinned_digest() {
            return Ok(Some(d.to_string()));
        }
        let info = self
            .ctx
            .engine
            .inspect_image(&reference)
            .await
            .map_err(|e| Error::from_engine(e, ErrorCode::ImagePullFailed, "inspect the image"))?;
        Ok(info.and_then(|i| {
            digest_from_repo_digests(
                image.repository(),
                i.repo_digests.iter().map(String::as_str),
            )
            .map(|d| d.to_string())
        }))
    }
}
