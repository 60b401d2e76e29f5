//! The use cases. Each service is shared by every entry point: the HTTP
//! API, the CLI (through the API), the stream consumer and the background
//! loops call the same code, never a second copy.

pub mod lifecycle;
pub mod locks;
pub mod operations;
pub mod pins;
pub mod templates;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_core::operation::{Operation, OperationKind, Outcome, Source};
use berth_core::runtime::RuntimeRecord;

use crate::error::Result;
use crate::metrics::Metrics;
use crate::ports::{Clock, Engine, Store};

/// What the services need to know about this berth instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The owner label value and container name prefix.
    pub owner: String,
    pub network: String,
    /// Absolute; runtimes' state lives in `<data_dir>/runtimes/<id>/state`.
    pub data_dir: PathBuf,
    /// The most one operation (pull included) may take.
    pub operation_deadline: Duration,
}

/// Who asked: the operation's source and a name for the pin history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub source: Source,
    pub by: String,
}

impl Caller {
    pub fn new(source: Source) -> Self {
        Caller {
            source,
            by: source.as_str().to_string(),
        }
    }
}

/// The shared ports and settings the services are built on.
pub struct Context {
    pub store: Arc<dyn Store>,
    pub engine: Arc<dyn Engine>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

impl Context {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// A new operation, with a time-ordered id.
    pub fn begin_op(&self, kind: OperationKind, caller: &Caller) -> Operation {
        Operation::begin(
            uuid::Uuid::now_v7().to_string(),
            kind,
            caller.source,
            self.now_ms(),
        )
    }

    /// Writes the record and operation together; counts finished operations.
    pub async fn record(&self, runtime: Option<&RuntimeRecord>, op: &Operation) -> Result<()> {
        self.store.record(runtime, op).await?;
        if op.outcome != Outcome::InProgress {
            self.metrics
                .operation_finished(op.kind.as_str(), op.outcome.as_str());
        }
        Ok(())
    }
}

/// Every service, built once and shared by all entry points.
pub struct Services {
    pub ctx: Arc<Context>,
    pub templates: templates::TemplateService,
    pub pins: pins::PinService,
    pub runtimes: lifecycle::LifecycleService,
    pub operations: operations::OperationLog,
}

impl Services {
    pub fn new(ctx: Context) -> Arc<Self> {
        let ctx = Arc::new(ctx);
        Arc::new(Services {
            templates: templates::TemplateService::new(ctx.clone()),
            pins: pins::PinService::new(ctx.clone()),
            runtimes: lifecycle::LifecycleService::new(ctx.clone()),
            operations: operations::OperationLog::new(ctx.clone()),
            ctx,
        })
    }
}
