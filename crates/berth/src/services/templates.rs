//! Declaring, reading and deleting templates.

use std::sync::Arc;

use berth_core::id::validate_template_name;
use berth_core::operation::OperationKind;
use berth_core::template::Template;
use berth_core::ErrorCode;

use super::{Caller, Context};
use crate::error::{Error, Result};
use crate::template_doc::TemplateDoc;

pub struct TemplateService {
    ctx: Arc<Context>,
}

impl TemplateService {
    pub fn new(ctx: Arc<Context>) -> Self {
        TemplateService { ctx }
    }

    /// Creates or replaces `name`; returns the template and whether it is new.
    /// A seed pin in the document is refused here: pins change only through
    /// the pin service (config seeding calls `PinService::seed`).
    pub async fn put(
        &self,
        name: &str,
        doc: &TemplateDoc,
        caller: &Caller,
    ) -> Result<(Template, bool)> {
        validate_template_name(name)?;
        if let Some(body_name) = &doc.name {
            if body_name != name {
                return Err(Error::invalid(format!(
                    "the body names template {body_name:?} but the path names {name:?}"
                )));
            }
        }
        if doc.pin.is_some() {
            return Err(Error::invalid(
                "a template document cannot carry a pin here; promote one with POST /v1/templates/{name}/pin",
            ));
        }
        let template = doc.to_template(name)?;
        let mut op = self
            .ctx
            .begin_op(OperationKind::TemplatePut, caller)
            .for_template(name)
            .detail("image", format!("{}:{}", template.image, template.tag));
        op.succeed(self.ctx.now_ms());
        let created = self.ctx.store.put_template(&template, &op).await?;
        self.ctx.changed();
        self.ctx.metrics.operation_done(&op);
        Ok((template, created))
    }

    pub async fn get(&self, name: &str) -> Result<Template> {
        validate_template_name(name)?;
        self.ctx
            .store
            .get_template(name)
            .await?
            .ok_or_else(|| Error::template_not_found(name))
    }

    pub async fn list(&self) -> Result<Vec<Template>> {
        Ok(self.ctx.store.list_templates().await?)
    }

    /// 409 `conflict` while runtimes that are not removed use it.
    pub async fn delete(&self, name: &str, caller: &Caller) -> Result<()> {
        validate_template_name(name)?;
        let mut op = self
            .ctx
            .begin_op(OperationKind::TemplateDelete, caller)
            .for_template(name);
        op.succeed(self.ctx.now_ms());
        match self.ctx.store.delete_template(name, &op).await {
            Ok(true) => {
                self.ctx.changed();
                self.ctx.metrics.operation_done(&op);
                Ok(())
            }
            Ok(false) => Err(Error::template_not_found(name)),
            Err(e) => {
                let e = Error::from(e);
                if e.code == ErrorCode::Conflict {
                    // Keep the refusal in the log too.
                    op.fail(e.code.as_str(), &e.message, self.ctx.now_ms());
                    self.ctx.record(None, &op).await?;
                }
                Err(e)
            }
        }
    }
}
