//! The plugin service on the fakes: one listing per source, concurrent
//! sweeps from two processes, track `none`, and installs cut at every
//! commit.

use crate::world;

use std::sync::Arc;

use berth::ports::PluginStore;
use berth::services::plugins::InstallRequest;
use berth::services::Services;
use berth_core::plugin::UpdateStatus;
use serde_json::json;
use world::*;

const SKILLS: &str = "https://git.test/acme/skills";
const TOOLS: &str = "https://git.test/acme/tools";

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

fn publish(w: &World, url: &str, commit: u8, refs: &[&str]) {
    let content = format!("commit {commit}");
    w.git
        .add_commit(url, &sha(commit), &[("README", content.as_str())]);
    for r in refs {
        w.git.set_ref(url, r, &sha(commit));
    }
}

async fn fleet(w: &World) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(
        &s,
        "app",
        json!({"image": REPO, "tag": "stable", "stop_grace": "1s"}),
    )
    .await;
    start_runtimes(&s, "app").await;
    s
}

async fn install(s: &Services, runtime: &str, name: &str, url: &str, track: &str) {
    s.plugins
        .install(
            InstallRequest {
                runtime_id: runtime.to_string(),
                name: name.to_string(),
                source: format!("git+{url}"),
                track: track.to_string(),
                restart: false,
            },
            &caller(),
        )
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_sweep_lists_each_source_once_and_resolves_each_track_once() {
    let w = World::new();
    publish(&w, SKILLS, 1, &["refs/heads/main", "refs/tags/v1.0.0"]);
    publish(&w, TOOLS, 2, &["refs/heads/main"]);
    let s = fleet(&w).await;
    for i in 0..RUNTIMES {
        let rt = format!("r-{i}");
        install(&s, &rt, "skills", SKILLS, "tag:latest").await;
        install(&s, &rt, "skills-edge", SKILLS, "branch:main").await;
        install(&s, &rt, "tools", TOOLS, "main").await;
    }
    let before = w.git.total_list_calls();
    let report = s.plugins.sweep().await.unwrap();
    assert_eq!(
        w.git.total_list_calls() - before,
        2,
        "one listing per source"
    );
    assert_eq!(report.resolved, 3, "one resolution per (source, track)");
    assert_eq!(report.queued, 0);

    // Both skills refs move: every skills plugin of every runtime drifts.
    publish(&w, SKILLS, 3, &["refs/heads/main", "refs/tags/v1.1.0"]);
    let report = s.plugins.sweep().await.unwrap();
    assert_eq!(report.queued, 2 * RUNTIMES);
    let pending = s
        .plugins
        .updates(Some("pending"), None, None, None)
        .await
        .unwrap();
    assert_eq!(pending.len(), 2 * RUNTIMES);
    assert!(pending
        .iter()
        .all(|u| u.to_sha == sha(3) && u.from_sha.as_deref() == Some(sha(1).as_str())));
}

#[tokio::test(start_paused = true)]
async fn concurrent_sweeps_from_two_processes_queue_one_pending_update() {
    let w = World::new();
    publish(&w, SKILLS, 1, &["refs/tags/v1.0.0"]);
    let a = fleet(&w).await;
    install(&a, "r-0", "skills", SKILLS, "tag:latest").await;
    publish(&w, SKILLS, 2, &["refs/tags/v1.1.0"]);
    let b = w.boot();
    let (ra, rb) = tokio::join!(a.plugins.sweep(), b.plugins.sweep());
    let queued = ra.unwrap().queued + rb.unwrap().queued;
    assert!(queued >= 1, "at least one sweep queued it");
    let pending = w
        .store
        .list_plugin_updates(&berth::ports::store::PluginUpdateFilter {
            status: Some(UpdateStatus::Pending),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].to_sha, sha(2));
}

#[tokio::test(start_paused = true)]
async fn track_none_installs_the_default_branch_and_is_never_swept() {
    let w = World::new();
    publish(&w, SKILLS, 1, &["refs/heads/main"]);
    let s = fleet(&w).await;
    install(&s, "r-0", "skills", SKILLS, "none").await;
    let p = w.store.get_plugin("r-0", "skills").await.unwrap().unwrap();
    assert_eq!(p.installed_sha.as_deref(), Some(sha(1).as_str()));
    assert_eq!(p.track, "none");
    publish(&w, SKILLS, 2, &["refs/heads/main"]);
    let report = s.plugins.sweep().await.unwrap();
    assert_eq!(report.resolved, 0);
    assert_eq!(report.queued, 0);
}

async fn install_once(s: &Arc<Services>) -> Result<(), berth::error::Error> {
    s.plugins
        .install(
            InstallRequest {
                runtime_id: "r-0".into(),
                name: "skills".into(),
                source: format!("git+{SKILLS}"),
                track: "tag:latest".into(),
                restart: true,
            },
            &caller(),
        )
        .await
        .map(|_| ())
}

/// An install cut at each of its commits: after recovery the runtime has
/// the plugin whole (row and files) or not at all, never a row without
/// files or files without a row, and no operation is left in progress.
#[tokio::test(start_paused = true)]
async fn an_install_cut_at_every_commit_leaves_the_plugin_whole_or_absent() {
    let count = {
        let w = World::new();
        publish(&w, SKILLS, 1, &["refs/tags/v1.0.0"]);
        let s = fleet(&w).await;
        let before = w.store.writes();
        install_once(&s).await.unwrap();
        w.store.writes() - before
    };
    assert!(count >= 3, "intent, install, restart: {count}");
    for k in 1..=count {
        let case = format!("crash at commit {k} of {count}");
        let w = World::new();
        publish(&w, SKILLS, 1, &["refs/tags/v1.0.0"]);
        let s = fleet(&w).await;
        w.store.crash_at_commit(k);
        let _ = install_once(&s).await;
        let s = w.restart(s).await;
        let row = w.store.get_plugin("r-0", "skills").await.unwrap();
        let dir = w.data.path().join("runtimes/r-0/plugins");
        let files = dir.join("skills/README");
        match row {
            Some(p) => {
                assert_eq!(p.installed_sha.as_deref(), Some(sha(1).as_str()), "{case}");
                assert!(files.exists(), "{case}: the row's files are there");
            }
            None => assert!(
                !dir.join("skills").exists(),
                "{case}: no files without a row"
            ),
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .filter(|n| n.to_string_lossy().starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{case}: {leftovers:?}");
        let in_progress = operations_of(&s, "r-0")
            .await
            .into_iter()
            .filter(|o| o.outcome == berth_core::operation::Outcome::InProgress)
            .count();
        assert_eq!(in_progress, 0, "{case}");
        // Installing again converges whatever the cut left.
        install_once(&s).await.unwrap();
        assert!(files.exists(), "{case}");
    }
}

/// An apply cut at each of its commits: after recovery the files are the
/// commit the row names (the old one, or the new one once its commit
/// happened), and applying again finishes the update.
#[tokio::test(start_paused = true)]
async fn an_apply_cut_at_every_commit_leaves_files_and_row_agreeing() {
    async fn queued(w: &World) -> (Arc<Services>, String) {
        publish(w, SKILLS, 1, &["refs/tags/v1.0.0"]);
        let s = fleet(w).await;
        install_once(&s).await.unwrap();
        publish(w, SKILLS, 2, &["refs/tags/v1.1.0"]);
        assert_eq!(s.plugins.sweep().await.unwrap().queued, 1);
        let id = s
            .plugins
            .updates(Some("pending"), None, None, None)
            .await
            .unwrap()[0]
            .id
            .clone();
        (s, id)
    }
    let count = {
        let w = World::new();
        let (s, id) = queued(&w).await;
        let before = w.store.writes();
        s.plugins.apply(&id, &caller()).await.unwrap();
        w.store.writes() - before
    };
    assert!(count >= 3, "intent, install, restart: {count}");
    for k in 1..=count {
        let case = format!("crash at commit {k} of {count}");
        let w = World::new();
        let (s, id) = queued(&w).await;
        w.store.crash_at_commit(k);
        let _ = s.plugins.apply(&id, &caller()).await;
        let s = w.restart(s).await;
        let row = w.store.get_plugin("r-0", "skills").await.unwrap().unwrap();
        let readme = w.data.path().join("runtimes/r-0/plugins/skills/README");
        let content = std::fs::read_to_string(&readme).unwrap();
        let expected = if row.installed_sha.as_deref() == Some(sha(2).as_str()) {
            "commit 2"
        } else {
            assert_eq!(
                row.installed_sha.as_deref(),
                Some(sha(1).as_str()),
                "{case}"
            );
            "commit 1"
        };
        assert_eq!(content, expected, "{case}: files agree with the row");
        let applied = s.plugins.apply(&id, &caller()).await.unwrap();
        assert_eq!(applied.status, UpdateStatus::Applied, "{case}");
        assert_eq!(
            std::fs::read_to_string(&readme).unwrap(),
            "commit 2",
            "{case}"
        );
    }
}
