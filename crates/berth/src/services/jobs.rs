//! The stream consumer: takes start and stop jobs from Redis in a consumer
//! group, runs them through the same lifecycle service as the HTTP API, and
//! answers each job id exactly once on `runtime:job_results` (through the
//! outbox, in the same transaction as the result row).
//!
//! At-least-once intake: a job is acknowledged only after its result is
//! stored; a redelivered job id with a stored result is acknowledged and
//! not run again; entries a dead consumer left pending are claimed after
//! `claim_idle`.

use std::sync::Arc;
use std::time::Duration;

use berth_core::event::JobResult;
use berth_core::operation::Source;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::lifecycle::{LifecycleService, StartOutcome, StartRequest};
use super::{Caller, Context, Effects};
use crate::error::{Error, Result};
use crate::ports::{Bus, BusError, StoreError, StreamEntry};
use crate::streams::{parse_job, Job, START_JOBS, STOP_JOBS};

/// Jobs run at once (different runtimes; one runtime's jobs still queue
/// on its lock).
const CONCURRENCY: usize = 8;
const READ_BLOCK: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct JobConsumer {
    ctx: Arc<Context>,
    bus: Arc<dyn Bus>,
    runtimes: Arc<LifecycleService>,
    pub group: String,
    pub consumer: String,
    pub claim_idle: Duration,
}

impl JobConsumer {
    pub fn new(
        ctx: Arc<Context>,
        bus: Arc<dyn Bus>,
        runtimes: Arc<LifecycleService>,
        claim_idle: Duration,
    ) -> Self {
        // One group per berth deployment (owner); one consumer per process.
        let group = ctx.settings.owner.clone();
        let consumer = format!(
            "{}-{}-{}",
            ctx.settings.owner,
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[22..]
        );
        JobConsumer {
            ctx,
            bus,
            runtimes,
            group,
            consumer,
            claim_idle,
        }
    }

    async fn ensure_groups(&self) -> Result<(), BusError> {
        self.bus.ensure_group(START_JOBS, &self.group).await?;
        self.bus.ensure_group(STOP_JOBS, &self.group).await
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut groups_ready = false;
        let mut last_claim = tokio::time::Instant::now() - self.claim_idle;
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let step = async {
                if !groups_ready {
                    self.ensure_groups().await?;
                    groups_ready = true;
                }
                let mut entries = Vec::new();
                if last_claim.elapsed() >= self.claim_idle / 2 {
                    for stream in [START_JOBS, STOP_JOBS] {
                        entries.extend(
                            self.bus
                                .claim_stale(
                                    stream,
                                    &self.group,
                                    &self.consumer,
                                    self.claim_idle,
                                    100,
                                )
                                .await?,
                        );
                    }
                    last_claim = tokio::time::Instant::now();
                }
                if entries.is_empty() {
                    entries = self
                        .bus
                        .read_group(
                            &[START_JOBS, STOP_JOBS],
                            &self.group,
                            &self.consumer,
                            32,
                            READ_BLOCK,
                        )
                        .await?;
                }
                Ok::<_, BusError>(entries)
            };
            let entries = tokio::select! {
                _ = cancel.cancelled() => return,
                r = step => r,
            };
            match entries {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    // Jobs in hand are finished even during shutdown: each is
                    // acknowledged only after its result is stored.
                    // One runtime's jobs run one at a time, in the order
                    // they were published (entry ids order both streams);
                    // different runtimes run side by side. A redelivered
                    // job thus always finds its first delivery's result.
                    let this = &*self;
                    futures_util::stream::iter(by_runtime_in_order(entries))
                        .for_each_concurrent(CONCURRENCY, |group| async move {
                            for entry in group {
                                if let Err(e) = this.process(&entry).await {
                                    tracing::warn!(stream = %entry.stream, entry = %entry.id, error = %e, "job not finished; it will be delivered again");
                                }
                            }
                        })
                        .await;
                }
                Err(e) => {
                    if matches!(e, BusError::NoGroup(_)) {
                        // Redis lost its data (restart without persistence).
                        groups_ready = false;
                    }
                    tracing::warn!(error = %e, "job intake paused; will retry");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Runs one entry to a stored result, then acknowledges it.
    pub async fn process(&self, entry: &StreamEntry) -> Result<()> {
        let result = match parse_job(&entry.stream, &entry.id, &entry.fields) {
            Err(bad) => Some(JobResult {
                job_id: bad.job_id,
                runtime_id: bad.runtime_id,
                kind: bad.kind.to_string(),
                success: false,
                container_id: None,
                engine_endpoint: None,
                error_code: Some(bad.error.code.as_str().to_string()),
                error_message: Some(bad.error.message),
                finished_at_ms: self.ctx.now_ms(),
            }),
            Ok(job) => {
                if self.ctx.store.get_job_result(job_id(&job)).await?.is_some() {
                    None
                } else {
                    Some(self.run_job(job).await)
                }
            }
        };
        if let Some(result) = result {
            self.ctx
                .metrics
                .stream_jobs
                .get_or_create(&crate::metrics::OperationLabels {
                    kind: result.kind.clone(),
                    outcome: if result.success { "success" } else { "failure" }.into(),
                })
                .inc();
            let effects = Effects {
                job_result: Some(result),
                ..Effects::default()
            };
            match self.ctx.commit(None, None, &effects).await {
                // Another consumer answered this job id first: one result.
                Ok(())
                | Err(Error {
                    code: berth_core::ErrorCode::Conflict,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        self.bus
            .ack(&entry.stream, &self.group, std::slice::from_ref(&entry.id))
            .await
            .map_err(|e| {
                Error::new(
                    berth_core::ErrorCode::Internal,
                    format!("could not acknowledge: {e}"),
                )
            })
    }

    async fn run_job(&self, job: Job) -> JobResult {
        let caller = Caller::new(Source::Stream);
        let (job_id, runtime_id, kind, outcome) = match job {
            Job::Start {
                job_id,
                runtime_id,
                template,
                env,
            } => {
                let request = StartRequest {
                    id: runtime_id.clone(),
                    template,
                    env,
                };
                let outcome = self
                    .runtimes
                    .start(request, &caller)
                    .await
                    .map(|o| match o {
                        StartOutcome::Started(r) | StartOutcome::AlreadyRunning(r) => r,
                    });
                (job_id, runtime_id, "start", outcome)
            }
            Job::Stop {
                job_id,
                runtime_id,
                remove,
            } => {
                let outcome = if remove {
                    self.runtimes.remove(&runtime_id, &caller).await
                } else {
                    self.runtimes.stop(&runtime_id, &caller).await
                };
                (job_id, runtime_id, "stop", outcome)
            }
        };
        let finished_at_ms = self.ctx.now_ms();
        match outcome {
            Ok(rec) => JobResult {
                job_id,
                runtime_id,
                kind: kind.to_string(),
                success: true,
                container_id: rec.container_id,
                engine_endpoint: rec.engine_endpoint,
                error_code: None,
                error_message: None,
                finished_at_ms,
            },
            Err(e) => JobResult {
                job_id,
                runtime_id,
                kind: kind.to_string(),
                success: false,
                container_id: None,
                engine_endpoint: None,
                error_code: Some(e.code.as_str().to_string()),
                error_message: Some(e.message),
                finished_at_ms,
            },
        }
    }
}

/// A stream entry id `<ms>-<seq>` as a sortable pair.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (
        ms.parse().unwrap_or(u64::MAX),
        seq.parse().unwrap_or(u64::MAX),
    )
}

/// Entries grouped by runtime id (entries without one alone), each group in
/// publication order.
fn by_runtime_in_order(mut entries: Vec<StreamEntry>) -> Vec<Vec<StreamEntry>> {
    entries.sort_by_key(|e| entry_order(&e.id));
    let mut groups: Vec<Vec<StreamEntry>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in entries {
        match e
            .field("runtime_id")
            .filter(|r| !r.is_empty())
            .map(str::to_string)
        {
            Some(rid) => match index.get(&rid) {
                Some(&i) => groups[i].push(e),
                None => {
                    index.insert(rid, groups.len());
                    groups.push(vec![e]);
                }
            },
            None => groups.push(vec![e]),
        }
    }
    groups
}

fn job_id(job: &Job) -> &str {
    match job {
        Job::Start { job_id, .. } | Job::Stop { job_id, .. } => job_id,
    }
}

impl From<StoreError> for BusError {
    fn from(e: StoreError) -> Self {
        BusError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stream: &str, id: &str, runtime: &str) -> StreamEntry {
        StreamEntry {
            stream: stream.into(),
            id: id.into(),
            fields: vec![("runtime_id".into(), runtime.into())],
        }
    }

    #[test]
    fn groups_by_runtime_in_publication_order_across_streams() {
        let groups = by_runtime_in_order(vec![
            entry(START_JOBS, "10-0", "a"),
            entry(START_JOBS, "12-0", "a"),
            entry(START_JOBS, "11-0", "b"),
            entry(STOP_JOBS, "11-1", "a"),
            entry(STOP_JOBS, "9-0", ""),
        ]);
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|e| e.id.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            vec![vec!["9-0"], vec!["10-0", "11-1", "12-0"], vec!["11-0"]]
        );
    }
}
