//! A health probe whose answers a test scripts per URL (or URL prefix),
//! with a log of the URLs it was asked about.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::ports::probe::HealthProbe;

/// How a scripted URL answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx.
    Healthy,
    /// A non-2xx status, or nothing listening.
    Unhealthy,
    /// Unhealthy for the first `n` calls to this script, healthy after.
    HealthyAfter(usize),
    /// No answer: the probe gives up after its timeout (on tokio's clock,
    /// so paused tests do not wait).
    Hang,
}

#[derive(Debug)]
struct Script {
    prefix: String,
    answer: Answer,
    calls: usize,
}

#[derive(Debug, Default)]
struct Scripts {
    scripts: Vec<Script>,
    log: Vec<String>,
}

/// URLs without a script are unhealthy, like an address nothing listens on.
#[derive(Debug, Default)]
pub struct FakeProbe {
    inner: Mutex<Scripts>,
}

impl FakeProbe {
    pub fn new() -> FakeProbe {
        FakeProbe::default()
    }

    /// URLs starting with `prefix` answer `answer`; the longest matching
    /// prefix wins. Scripting a prefix again replaces its answer and
    /// restarts its call count.
    pub fn script(&self, prefix: &str, answer: Answer) {
        let mut inner = self.lock();
        inner.scripts.retain(|s| s.prefix != prefix);
        inner.scripts.push(Script {
            prefix: prefix.to_string(),
            answer,
            calls: 0,
        });
    }

    /// Every URL probed, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// How many probes went to URLs starting with `prefix`.
    pub fn calls_to(&self, prefix: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|url| url.starts_with(prefix))
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, Scripts> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Logs the call and picks its answer.
    fn answer(&self, url: &str) -> Answer {
        let mut inner = self.lock();
        inner.log.push(url.to_string());
        let script = inner
            .scripts
            .iter_mut()
            .filter(|s| url.starts_with(&s.prefix))
            .max_by_key(|s| s.prefix.len());
        let Some(script) = script else {
            return Answer::Unhealthy;
        };
        script.calls += 1;
        match script.answer {
            Answer::HealthyAfter(n) if script.calls > n => Answer::Healthy,
            Answer::HealthyAfter(_) => Answer::Unhealthy,
            other => other,
        }
    }
}

#[async_trait]
impl HealthProbe for FakeProbe {
    async fn healthy(&self, url: &str, timeout: Duration) -> bool {
        match self.answer(url) {
            Answer::Healthy => true,
            Answer::Hang => {
                tokio::time::sleep(timeout).await;
                false
            }
            Answer::Unhealthy | Answer::HealthyAfter(_) => false,
        }
    }
}
