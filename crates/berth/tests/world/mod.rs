//! A berth process on fakes: every port in memory, time paused. Shared by
//! the service tests and the crash matrix.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth::fakes::probe::Answer;
use berth::fakes::{FakeClock, FakeEngine, FakeProbe, FakeRefResolver, FakeRegistry, FakeStore};
use berth::metrics::Metrics;
use berth::ports::engine::ContainerInfo;
use berth::ports::{Engine, OperationFilter};
use berth::services::lifecycle::StartRequest;
use berth::services::{Caller, Context, Services, Settings};
use berth::template_doc::TemplateDoc;
use berth_core::event::Notification;
use berth_core::image::{Digest, Repository};
use berth_core::operation::{Operation, Source};
use serde_json::json;

pub const OWNER: &str = "bt-fake";
pub const REPO: &str = "registry.test/acme/app";
pub const RUNTIMES: usize = 3;

pub fn digest(n: u8) -> Digest {
    Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
}

pub fn repo() -> Repository {
    Repository::parse(REPO).unwrap()
}

/// Everything outside berth's process: it survives a crash of berth.
pub struct World {
    pub store: FakeStore,
    pub engine: FakeEngine,
    pub registry: Arc<FakeRegistry>,
    pub git: Arc<FakeRefResolver>,
    pub probe: Arc<FakeProbe>,
    pub clock: Arc<FakeClock>,
    /// Runtimes' state directories (survives berth's crash, as a disk does).
    pub state_fs: Arc<berth::fakes::FakeStateFs>,
    pub data: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let clock = Arc::new(FakeClock::default());
        let engine = FakeEngine::with_clock(OWNER, clock.clone());
        let store = FakeStore::new();
        // berth's process dies with its store: nothing it would still do to
        // the engine after the lost commit happens.
        let dead_engine = engine.clone();
        store.on_crash(move || dead_engine.set_unavailable(true));
        let probe = Arc::new(FakeProbe::new());
        probe.script("http://", Answer::Healthy);
        World {
            store,
            engine,
            registry: Arc::new(FakeRegistry::new()),
            git: Arc::new(FakeRefResolver::new()),
            probe,
            clock,
            state_fs: Arc::new(berth::fakes::FakeStateFs::new()),
            data: tempfile::tempdir().unwrap(),
        }
    }

    /// A fresh berth process on this world.
    pub fn boot(&self) -> Arc<Services> {
        self.boot_with(false)
    }

    /// A fresh berth process that writes stream messages to the outbox (as
    /// with `redis_url` set).
    pub fn boot_with(&self, publish_outbox: bool) -> Arc<Services> {
        self.boot_full(publish_outbox, Vec::new())
    }

    /// A fresh berth process with these `[[webhooks]]`.
    pub fn boot_with_webhooks(
        &self,
        webhooks: Vec<berth::services::webhooks::WebhookSpec>,
    ) -> Arc<Services> {
        self.boot_full(false, webhooks)
    }

    fn boot_full(
        &self,
        publish_outbox: bool,
        webhooks: Vec<berth::services::webhooks::WebhookSpec>,
    ) -> Arc<Services> {
        Services::new(Context {
            store: Arc::new(self.store.clone()),
            engine: Arc::new(self.engine.clone()),
            probe: self.probe.clone(),
            registry: self.registry.clone(),
            git: self.git.clone(),
            state_fs: self.state_fs.clone(),
            clock: self.clock.clone(),
            metrics: Arc::new(Metrics::default()),
            settings: Settings {
                owner: OWNER.to_string(),
                network: OWNER.to_string(),
                data_dir: self.data.path().to_path_buf(),
                operation_deadline: Duration::from_secs(300),
                publish_outbox,
                adoption_grace: Duration::from_secs(30),
                plugins: Default::default(),
                stream: Default::default(),
            },
            outbox_wakeup: Default::default(),
            changes_wakeup: Default::default(),
            webhooks: Arc::new(berth::services::webhooks::Webhooks::new(webhooks)),
        })
    }

    /// The process died: wait for what it had in flight to give up, then
    /// bring the store and engine back and boot a new process that runs
    /// boot recovery and one round of its loops.
    pub async fn restart(&self, old: Arc<Services>) -> Arc<Services> {
        old.rollouts.settle().await;
        drop(old);
        self.store.revive();
        self.engine.set_unavailable(false);
        let s = self.boot();
        s.runtimes.recover_interrupted().await.unwrap();
        s.plugins.recover().await.unwrap();
        s.rollouts.resume_active().await.unwrap();
        s.watcher.tick().await.unwrap();
        s.rollouts.settle().await;
        s.reconciler.run_once().await.unwrap();
        s.rollouts.settle().await;
        s
    }

    pub fn publish(&self, tag: &str, d: &Digest) {
        self.engine.add_image(&format!("{REPO}:{tag}"), d.as_str());
        self.registry.set_tag(&repo(), tag, d);
    }
}

pub fn caller() -> Caller {
    Caller::new(Source::Api)
}

pub async fn put_template(s: &Services, name: &str, doc: serde_json::Value) {
    let doc: TemplateDoc = serde_json::from_value(doc).unwrap();
    s.templates.put(name, &doc, &caller()).await.unwrap();
}

pub fn tracked(max_failures: u32) -> serde_json::Value {
    json!({"image": REPO, "tag": "stable", "port": 8080, "watch": true,
           "update_policy": "track", "stop_grace": "1s",
           "health": {"path": "/healthz", "interval": "200ms", "timeout": "1s", "grace": "5s"},
           "rollout": {"batch_size": 1, "max_failures": max_failures}})
}

pub async fn start_runtimes(s: &Services, template: &str) {
    for i in 0..RUNTIMES {
        s.runtimes
            .start(
                StartRequest {
                    id: format!("r-{i}"),
                    template: template.to_string(),
                    env: BTreeMap::new(),
                },
                &caller(),
            )
            .await
            .unwrap();
    }
}

/// Checks one container per runtime, the recorded one, running the digest
/// the record says; returns the records by id.
pub async fn assert_one_container_each(w: &World, s: &Services, case: &str) {
    let records = s
        .ctx
        .store
        .list_runtimes(&Default::default())
        .await
        .unwrap();
    let containers = w.engine.list_containers().await.unwrap();
    for rec in &records {
        let mine: Vec<_> = containers
            .iter()
            .filter(|c| c.labels.get("io.berth.runtime_id") == Some(&rec.id))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "{case}: {} has {} containers",
            rec.id,
            mine.len()
        );
        assert_eq!(
            Some(&mine[0].id),
            rec.container_id.as_ref(),
            "{case}: {} recorded",
            rec.id
        );
        assert!(mine[0].running, "{case}: {} runs", rec.id);
    }
}

pub fn start_request(id: &str, template: &str) -> StartRequest {
    StartRequest {
        id: id.to_string(),
        template: template.to_string(),
        env: BTreeMap::new(),
    }
}

/// The runtime's operation log, newest first.
pub async fn operations_of(s: &Services, runtime_id: &str) -> Vec<Operation> {
    s.ctx
        .store
        .list_operations(&OperationFilter {
            runtime_id: Some(runtime_id.to_string()),
            kind: None,
            limit: 1000,
        })
        .await
        .unwrap()
}

/// The notifications of one type, newest first.
pub async fn notifications_of(s: &Services, notification_type: &str) -> Vec<Notification> {
    s.ctx
        .store
        .list_notifications(1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.notification_type == notification_type)
        .collect()
}

/// The containers (of this owner) labelled with `runtime_id`.
pub async fn containers_of(w: &World, runtime_id: &str) -> Vec<ContainerInfo> {
    w.engine
        .list_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels.get("io.berth.runtime_id").map(String::as_str) == Some(runtime_id))
        .collect()
}
