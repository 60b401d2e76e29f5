//! ls-remote calls and wall time of one plugin drift sweep: 10,000 tracked
//! plugins (200 runtimes × 50 plugins) sharing 50 distinct (source, track),
//! one local bare repository per pair. Targets: 50 resolutions per sweep
//! and a sweep in at most 2 s.
//!
//! The services run on the real SQLite store (in a temp dir) and the real
//! `GitCli` (with `file` allowed), wrapped in a resolver that counts
//! listings. The engine, registry and probe are the in-memory fakes of
//! `berth::fakes`: a sweep never touches them. No runtime records either:
//! the sweep reads only plugin rows and their updates.
//!
//! Measured: sweeps where nothing moved (median of several), one sweep
//! right after every upstream moved (10,000 updates queued), and the sweep
//! after that (nothing new).
//!
//! `bash scripts/bench.sh plugin_sweep`; under `cargo test` it runs a smoke size.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use berth::adapters::git::{GitCli, GitProtocol};
use berth::adapters::store::SqliteStore;
use berth::fakes::{FakeEngine, FakeProbe, FakeRegistry};
use berth::metrics::Metrics;
use berth::ports::git::{GitError, RefResolver, RemoteRef};
use berth::ports::store::{Change, PluginChange, PluginRecord, PluginUpdateFilter};
use berth::ports::{Store, SystemClock};
use berth::services::plugins::{PluginSettings, SweepReport};
use berth::services::{Context, Services, Settings};
use berth_core::plugin::{SourcePolicy, UpdateStatus};

/// Counts the listings a sweep asks for.
struct CountingResolver {
    inner: GitCli,
    listings: AtomicU64,
}

#[async_trait]
impl RefResolver for CountingResolver {
    async fn list_refs(&self, url: &str) -> Result<Vec<RemoteRef>, GitError> {
        self.listings.fetch_add(1, Ordering::Relaxed);
        self.inner.list_refs(url).await
    }

    async fn fetch_commit(&self, url: &str, sha: &str, dest: &Path) -> Result<(), GitError> {
        self.inner.fetch_commit(url, sha, dest).await
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=b", "-c", "user.email=b@example.invalid"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository with a work tree to push from; `track` is what its
/// plugins follow.
struct Upstream {
    bare: PathBuf,
    work: PathBuf,
    track: &'static str,
}

impl Upstream {
    fn new(root: &Path, i: usize) -> Upstream {
        let bare = root.join(format!("repo-{i:02}.git"));
        let work = root.join(format!("work-{i:02}"));
        std::fs::create_dir_all(&bare).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        git(&work, &["init", "-q", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let track = ["tag:latest", "branch:main", "tag:stable"][i % 3];
        let up = Upstream { bare, work, track };
        // A few releases, lightweight and annotated, and a moving tag.
        for (n, (tag, annotated)) in [("v1.0.0", false), ("v1.1.0", true), ("v1.2.0", true)]
            .into_iter()
            .enumerate()
        {
            up.commit(&format!("release {n}"));
            up.tag(tag, annotated);
        }
        up.tag("stable", false);
        up.push();
        up
    }

    fn source(&self) -> String {
        format!("git+file://{}", self.bare.display())
    }

    fn commit(&self, content: &str) {
        std::fs::write(self.work.join("README"), content).unwrap();
        git(&self.work, &["add", "README"]);
        git(&self.work, &["commit", "-q", "-m", content]);
    }

    fn tag(&self, name: &str, annotated: bool) {
        if annotated {
            git(&self.work, &["tag", "-f", "-a", name, "-m", name]);
        } else {
            git(&self.work, &["tag", "-f", name]);
        }
    }

    fn push(&self) {
        git(
            &self.work,
            &["push", "-q", "-f", "--tags", "origin", "HEAD:main"],
        );
    }

    /// The commit its track points at: every track here is at the work
    /// tree's newest commit.
    fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Upstream moves: a new commit on main, a new release, `stable` moved.
    fn advance(&self) {
        self.commit("release 3");
        self.tag("v1.3.0", true);
        self.tag("stable", false);
        self.push();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
pub async fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (sources, runtimes, quiet_sweeps) = if benching { (50, 200, 5) } else { (5, 4, 2) };
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = std::fs::canonicalize(tmp.path()).unwrap();
    let repos = data_dir.join("repos");

    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&data_dir.join("berth.db")).await.unwrap());
    let git_port = Arc::new(CountingResolver {
        inner: GitCli::new(&GitProtocol::for_plugins(true), Duration::from_secs(60)),
        listings: AtomicU64::new(0),
    });
    let services = Services::new(Context {
        store: store.clone(),
        engine: Arc::new(FakeEngine::new("bench")),
        probe: Arc::new(FakeProbe::new()),
        registry: Arc::new(FakeRegistry::new()),
        git: git_port.clone(),
        state_fs: Arc::new(berth::adapters::state_fs::LocalStateFs::new()),
        clock: Arc::new(SystemClock),
        metrics: Arc::new(Metrics::default()),
        settings: Settings {
            owner: "bench".into(),
            network: "bench".into(),
            data_dir: data_dir.clone(),
            operation_deadline: Duration::from_secs(300),
            publish_outbox: false,
            adoption_grace: Duration::from_secs(30),
            plugins: PluginSettings {
                policy: SourcePolicy {
                    allow_file: true,
                    allowed_hosts: None,
                },
            },
            stream: Default::default(),
        },
        outbox_wakeup: Default::default(),
        changes_wakeup: Default::default(),
        webhooks: Default::default(),
    });
    let plugins = services.plugins.clone();

    let upstreams: Vec<Upstream> = (0..sources).map(|i| Upstream::new(&repos, i)).collect();
    let heads: Vec<String> = upstreams.iter().map(Upstream::head).collect();
    // One commit per plugin row: what one commit costs on this machine,
    // the floor of a sweep that queues one update per plugin.
    let puts = Instant::now();
    for r in 0..runtimes {
        for (j, up) in upstreams.iter().enumerate() {
            let p = PluginRecord {
                runtime_id: format!("rt-{r:03}"),
                name: format!("p-{j:02}"),
                source: up.source(),
                track: up.track.to_string(),
                installed_sha: Some(heads[j].clone()),
                installed_at_ms: Some(1),
                resolved_at_ms: Some(1),
                last_error: None,
            };
            store
                .commit(&Change {
                    plugin: Some(PluginChange::Put(&p)),
                    ..Change::default()
                })
                .await
                .unwrap();
        }
    }
    let puts = puts.elapsed();
    let total = sources * runtimes;

    let sweep = || async {
        let before = git_port.listings.load(Ordering::Relaxed);
        let t = Instant::now();
        let report: SweepReport = plugins.sweep().await.unwrap();
        let took = t.elapsed();
        let listed = git_port.listings.load(Ordering::Relaxed) - before;
        assert!(report.failed.is_empty(), "{report:?}");
        (report, took, listed)
    };

    // (a) nothing moved.
    let mut quiet = Vec::new();
    for _ in 0..quiet_sweeps {
        let (report, took, listed) = sweep().await;
        assert_eq!(report.resolved, sources, "{report:?}");
        assert_eq!(report.queued, 0, "{report:?}");
        quiet.push((took, listed));
    }
    quiet.sort();
    let (quiet_median, quiet_listed) = quiet[quiet.len() / 2];
    let quiet_max = quiet[quiet.len() - 1].0;

    // (b) every upstream moved.
    for up in &upstreams {
        up.advance();
    }
    let (moved, moved_took, moved_listed) = sweep().await;
    assert_eq!(moved.resolved, sources, "{moved:?}");
    assert_eq!(moved.queued, total, "{moved:?}");
    let pending = store
        .list_plugin_updates(&PluginUpdateFilter {
            status: Some(UpdateStatus::Pending),
            limit: u32::MAX,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), total);

    // (c) right after: nothing new.
    let (after, after_took, after_listed) = sweep().await;
    assert_eq!(after.resolved, sources, "{after:?}");
    assert_eq!(after.queued, 0, "{after:?}");

    println!(
        "plugin drift sweep: {total} plugins ({runtimes} runtimes × {sources}) over {sources} (source, track), SQLite + git CLI"
    );
    println!("  | sweep | resolutions | ls-remote calls | queued | wall time |");
    println!(
        "  | nothing moved ({quiet_sweeps} runs) | {sources} | {quiet_listed} | 0 | median {:.1} ms, max {:.1} ms |",
        ms(quiet_median),
        ms(quiet_max)
    );
    println!(
        "  | every upstream moved | {} | {moved_listed} | {} | {:.1} ms |",
        moved.resolved,
        moved.queued,
        ms(moved_took)
    );
    println!(
        "  | right after (nothing new) | {} | {after_listed} | {} | {:.1} ms |",
        after.resolved,
        after.queued,
        ms(after_took)
    );
    println!(
        "  | (reference) {total} single-plugin commits, as the setup wrote them | | | | {:.1} ms ({:.0} µs each) |",
        ms(puts),
        puts.as_secs_f64() * 1e6 / total as f64
    );
    println!("  targets: {sources} resolutions per sweep, wall time ≤ 2 s");
}
