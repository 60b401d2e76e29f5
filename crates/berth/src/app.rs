//! `berth serve`: wires adapters into services, applies the configuration,
//! recovers from a crash, serves the API, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use berth_core::operation::Source;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::docker::DockerEngine;
use crate::adapters::redis_bus::RedisBus;
use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::http::tls::{CertStore, TlsListener};
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::ports::Bus;
use crate::ports::{EngineError, StoreError, SystemClock};
use crate::services::jobs::JobConsumer;
use crate::services::outbox::OutboxRelay;
use crate::services::{Caller, Context, Services, Settings};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot use Docker: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot set up the registry client: {0}")]
    Registry(#[from] crate::ports::RegistryError),
    #[error("{0}")]
    Service(#[from] Error),
    #[error("{0}")]
    Io(String),
}

/// Builds the services on the real adapters named by `config`.
pub async fn build_services(config: &Config) -> Result<Arc<Services>, BootError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        BootError::Io(format!(
            "cannot create data_dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    // Bind mounts need an absolute host path.
    let data_dir = std::fs::canonicalize(&config.data_dir).map_err(|e| {
        BootError::Io(format!(
            "cannot resolve data_dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let store =
        crate::adapters::store::connect(config.database_url.as_deref().unwrap_or(""), &data_dir)
            .await?;
    let engine = DockerEngine::connect(config.docker_host.as_deref(), &config.owner).await?;
    let clock = Arc::new(SystemClock);
    Ok(Services::new(Context {
        store,
        engine: Arc::new(engine),
        probe: Arc::new(
            crate::adapters::http_probe::HttpProbe::new()
                .map_err(|e| BootError::Io(format!("cannot build the health probe client: {e}")))?,
        ),
        state_fs: Arc::new(crate::adapters::state_fs::LocalStateFs::new()),
        registry: Arc::new(crate::adapters::registry::OciRegistry::new(
            registry_config(config),
            clock.clone(),
        )?),
        git: Arc::new(crate::adapters::git::GitCli::new(
            &crate::adapters::git::GitProtocol::for_plugins(config.plugin_allow_file_sources),
            config.plugin_git_timeout,
        )),
        clock,
        metrics: Arc::new(Metrics::default()),
        settings: Settings {
            owner: config.owner.clone(),
            network: config.network.clone(),
            data_dir,
            operation_deadline: config.operation_timeout,
            publish_outbox: config.redis_url.is_some(),
            adoption_grace: config.adoption_grace,
            plugins: crate::services::plugins::PluginSettings {
                policy: berth_core::plugin::SourcePolicy {
                    allow_file: config.plugin_allow_file_sources,
                    allowed_hosts: config.plugin_allowed_hosts.clone(),
                },
            },
            stream: Default::default(),
        },
        outbox_wakeup: Default::default(),
        changes_wakeup: Default::default(),
        webhooks: Arc::new(crate::services::webhooks::Webhooks::new(
            config.webhooks.clone(),
        )),
    }))
}

fn registry_config(config: &Config) -> crate::adapters::registry::RegistryConfig {
    use crate::adapters::registry::{Credential, RegistryConfig};
    let mut rc = RegistryConfig::default();
    for (host, entry) in &config.registries {
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            rc.credentials.insert(
                host.clone(),
                Credential {
                    username: username.clone(),
                    password: password.clone(),
                },
            );
        }
        if entry.insecure {
            rc.insecure.push(host.clone());
        }
    }
    rc
}

/// Upserts `[[templates]]` and seeds their pins (never over a promote).
pub async fn apply_config_templates(services: &Services, config: &Config) -> Result<(), BootError> {
    let caller = Caller::new(Source::Config);
    for doc in &config.templates {
        // Config::load checked that every template has a name and valid pin.
        let Some(name) = doc.name.as_deref() else {
            continue;
        };
        let mut body = doc.clone();
        body.pin = None;
        services.templates.put(name, &body, &caller).await?;
        if let Some(digest) = doc.seed_pin().map_err(Error::from)? {
            if services.pins.seed(name, &digest, &caller).await? {
                tracing::info!(template = name, %digest, "seeded pin from configuration");
            }
        }
    }
    Ok(())
}

/// Connects to Redis, retrying with backoff until it answers or `cancel`.
async fn connect_bus(url: &str, cancel: &CancellationToken) -> Option<Arc<dyn Bus>> {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match RedisBus::connect(url).await {
            Ok(bus) => return Some(Arc::new(bus)),
            Err(e) => tracing::warn!(error = %e, "cannot reach Redis yet; streams wait"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
    }
}

/// A server that is listening.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub services: Arc<Services>,
    stop: CancellationToken,
    tracker: TaskTracker,
    background: CancellationToken,
    loops: TaskTracker,
    task: JoinHandle<std::io::Result<()>>,
    shutdown_timeout: std::time::Duration,
}

/// Boots berth and starts serving; returns once the socket listens.
pub async fn start(config: Config) -> Result<RunningServer, BootError> {
    config.check_exposure()?;
    // A bad certificate fails the boot before anything else starts.
    let certs = match &config.tls {
        Some(files) => Some(Arc::new(
            CertStore::load(files.clone()).map_err(|e| BootError::Io(format!("tls: {e}")))?,
        )),
        None => None,
    };
    let services = build_services(&config).await?;
    apply_config_templates(&services, &config).await?;
    // Before anything reads a store or starts a container: a batch that
    // committed but was not yet in place is put in place.
    let rolled = services.stores.recover().await?;
    if rolled > 0 {
        tracing::warn!(
            stores = rolled,
            "put in place store files of committed batches that a crash left staged"
        );
    }
    let recovered = services.runtimes.recover_interrupted().await?;
    if recovered > 0 {
        tracing::warn!(
            operations = recovered,
            "recorded operations interrupted by the last shutdown as failed, and settled their runtimes"
        );
    }
    let settled = services.plugins.recover().await?;
    if settled > 0 {
        tracing::warn!(
            directories = settled,
            "settled plugin directories a crash left aside"
        );
    }
    // The change feed starts at the newest stored change before anyone can
    // connect; its hub is one of the loops.
    services.changes.load().await?;
    // Background loops: the reconciler (its first pass runs at once) and
    // the Docker events listener. They stop when `background` is cancelled.
    let background = CancellationToken::new();
    let loops = TaskTracker::new();
    loops.spawn(
        services
            .reconciler
            .clone()
            .run_loop(config.reconcile_interval, background.clone()),
    );
    loops.spawn(services.events.clone().run(background.clone()));
    loops.spawn(services.changes.clone().run(background.clone()));
    if config.image_watch_enabled {
        loops.spawn(
            services
                .watcher
                .clone()
                .run_loop(config.image_watch_interval, background.clone()),
        );
    }
    loops.spawn(
        services
            .plugins
            .clone()
            .run_loop(config.plugin_sweep_interval, background.clone()),
    );
    // One delivery loop per webhook, beside the outbox relay; pending
    // deliveries of the last run go first.
    if !services.ctx.webhooks.all().is_empty() {
        let sender: Arc<dyn crate::ports::WebhookSender> = Arc::new(
            crate::adapters::webhook::HttpWebhookSender::new()
                .map_err(|e| BootError::Io(format!("cannot build the webhook HTTP client: {e}")))?,
        );
        for deliverer in
            crate::services::webhooks::WebhookDeliverer::for_all(&services.ctx, &sender)
        {
            loops.spawn(deliverer.run(background.clone()));
        }
    }
    let resumed = services.rollouts.resume_active().await?;
    if resumed > 0 {
        tracing::info!(
            rollouts = resumed,
            "resumed rollouts interrupted by the last shutdown"
        );
    }
    if let Some(url) = config.redis_url.clone() {
        let services = services.clone();
        let cancel = background.clone();
        let tracker = loops.clone();
        let claim_idle = config.job_claim_idle;
        loops.spawn(async move {
            // Redis may be down at boot: berth serves anyway, the outbox
            // keeps what must be published, and this keeps trying.
            let Some(bus) = connect_bus(&url, &cancel).await else {
                return;
            };
            let relay = Arc::new(OutboxRelay::new(services.ctx.clone(), bus.clone()));
            tracker.spawn(relay.run(cancel.clone()));
            let consumer = Arc::new(JobConsumer::new(
                services.ctx.clone(),
                bus,
                services.runtimes.clone(),
                claim_idle,
            ));
            tracker.spawn(consumer.run(cancel));
        });
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| BootError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BootError::Io(format!("cannot read the listening address: {e}")))?;
    let tracker = TaskTracker::new();
    let state = AppState {
        services: services.clone(),
        tracker: tracker.clone(),
        auth: Arc::new(crate::http::Auth::from_config(&config)),
    };
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let app = router(state);
    let task = match certs {
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        }),
        Some(certs) => {
            let listener = TlsListener::new(listener, certs)
                .map_err(|e| BootError::Io(format!("cannot listen on {}: {e}", config.listen)))?;
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stopped.cancelled().await })
                    .await
            })
        }
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, %scheme, owner = %config.owner, "berth is listening");
    Ok(RunningServer {
        addr,
        services,
        stop,
        tracker,
        background,
        loops,
        task,
        shutdown_timeout: config.shutdown_timeout,
    })
}

impl RunningServer {
    /// Stops accepting requests, lets operations in flight finish (up to the
    /// shutdown timeout), then returns. Operations cut off by the timeout
    /// stay `in_progress` in the log and are recorded as `interrupted` at
    /// the next boot.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.background.cancel();
        self.loops.close();
        self.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("operations still in flight at the shutdown timeout; they will be recorded as interrupted at the next start");
        }
        // Rollouts stop between recreates and resume at the next start.
        self.services.rollouts.shutdown().await;
        // A loop cancelled mid-pass finishes its current action first.
        if tokio::time::timeout(self.shutdown_timeout, self.loops.wait())
            .await
            .is_err()
        {
            tracing::warn!("background loops did not stop within the shutdown timeout");
        }
        match tokio::time::timeout(self.shutdown_timeout, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
            Err(_) => tracing::warn!("open connections did not close within the shutdown timeout"),
        }
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops berth");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `berth serve`: runs until SIGTERM or ctrl-c.
pub async fn serve(config: Config) -> Result<(), BootError> {
    let server = start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: finishing operations in flight");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
