//! The image watcher on the fakes, with paused time: one lookup per
//! `repo:tag`, `notify`, rejected digests, and registry failures.

use crate::world;

use std::sync::Arc;
use std::time::Duration;

use berth::fakes::engine::Op;
use berth::fakes::probe::Answer;
use berth::ports::registry::RegistryError;
use berth::services::Services;
use berth_core::image::{Digest, Repository};
use berth_core::rollout::RolloutState;
use serde_json::json;
use world::*;

const OTHER: &str = "registry.test/acme/other";

fn other() -> Repository {
    Repository::parse(OTHER).unwrap()
}

/// Points `repo:tag` at `d`, in the registry and for pulls.
fn push(w: &World, repo: &Repository, tag: &str, d: &Digest) {
    w.engine
        .add_image(&format!("{}:{tag}", repo.as_str()), d.as_str());
    w.registry.set_tag(repo, tag, d);
}

fn watched(image: &str, tag: &str, policy: &str) -> serde_json::Value {
    json!({"image": image, "tag": tag, "watch": true, "update_policy": policy,
           "stop_grace": "1s"})
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn one_lookup_per_repo_and_tag_however_many_templates_and_runtimes() {
    let w = World::new();
    push(&w, &repo(), "stable", &digest(1));
    push(&w, &repo(), "edge", &digest(2));
    push(&w, &other(), "stable", &digest(3));
    let s = w.boot();
    put_template(&s, "a", watched(REPO, "stable", "notify")).await;
    put_template(&s, "b", watched(REPO, "stable", "track")).await;
    put_template(&s, "c", watched(REPO, "edge", "notify")).await;
    put_template(&s, "d", watched(OTHER, "stable", "notify")).await;
    put_template(&s, "quiet", json!({"image": REPO, "tag": "stable"})).await;
    for (id, template) in [
        ("a-1", "a"),
        ("a-2", "a"),
        ("b-1", "b"),
        ("c-1", "c"),
        ("q-1", "quiet"),
    ] {
        s.runtimes
            .start(start_request(id, template), &caller())
            .await
            .unwrap();
    }

    let report = s.watcher.tick().await.unwrap();
    assert_eq!(report.lookups, 3, "{report:?}");
    assert_eq!(w.registry.calls().resolve_tag, 3);
    assert_eq!(sorted(report.seeded), ["a", "b", "c", "d"], "not `quiet`");
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    let report = s.watcher.tick().await.unwrap();
    assert_eq!(report.lookups, 3);
    assert_eq!(w.registry.calls().resolve_tag, 6);
    assert!(report.seeded.is_empty() && report.notified.is_empty() && report.tracked.is_empty());
}

#[tokio::test(start_paused = true)]
async fn notify_says_so_once_per_move_and_never_restarts_anything() {
    let w = World::new();
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(&s, "nfy", watched(REPO, "stable", "notify")).await;
    start_runtimes(&s, "nfy").await;
    assert_eq!(s.watcher.tick().await.unwrap().seeded, ["nfy"]);
    let engine_calls = |w: &World| {
        [
            Op::PullImage,
            Op::CreateContainer,
            Op::StartContainer,
            Op::StopContainer,
            Op::RemoveContainer,
        ]
        .map(|op| w.engine.calls(op))
    };
    let before = engine_calls(&w);

    w.publish("stable", &digest(2));
    assert_eq!(s.watcher.tick().await.unwrap().notified, ["nfy"]);
    assert!(
        s.watcher.tick().await.unwrap().notified.is_empty(),
        "once per move"
    );
    w.publish("stable", &digest(3));
    assert_eq!(s.watcher.tick().await.unwrap().notified, ["nfy"]);
    assert!(s.watcher.tick().await.unwrap().notified.is_empty());

    let said = notifications_of(&s, "image.update_available").await;
    let moves: Vec<(String, String)> = said
        .iter()
        .map(|n| {
            (
                n.payload["old_digest"].clone(),
                n.payload["new_digest"].clone(),
            )
        })
        .collect();
    let d = |n| digest(n).to_string();
    assert_eq!(moves, [(d(2), d(3)), (d(1), d(2))], "newest first");
    assert_eq!(
        engine_calls(&w),
        before,
        "nothing pulled, stopped or started"
    );
    assert!(
        s.ctx.store.get_pin("nfy").await.unwrap().is_none(),
        "no pin"
    );
    assert!(s
        .ctx
        .store
        .list_rollouts(Some("nfy"), 10)
        .await
        .unwrap()
        .is_empty());
    for rec in s
        .ctx
        .store
        .list_runtimes(&Default::default())
        .await
        .unwrap()
    {
        assert_eq!(
            rec.image_digest.as_deref(),
            Some(digest(1).as_str()),
            "{}",
            rec.id
        );
    }
    assert_one_container_each(&w, &s, "notify").await;
}

/// A tracked fleet whose move to digest 2 halted: 2 is rejected, the pin
/// is back on 1.
async fn halted_on_a_bad_release(w: &World) -> Arc<Services> {
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(&s, "trk", tracked(1)).await;
    start_runtimes(&s, "trk").await;
    s.watcher.tick().await.unwrap();
    w.probe.script("http://", Answer::Unhealthy);
    w.publish("stable", &digest(2));
    assert_eq!(s.watcher.tick().await.unwrap().tracked, ["trk"]);
    s.rollouts.settle().await;
    let rollouts = s.ctx.store.list_rollouts(Some("trk"), 10).await.unwrap();
    assert_eq!(rollouts[0].state, RolloutState::Halted);
    assert!(s
        .ctx
        .store
        .is_rejected("trk", digest(2).as_str())
        .await
        .unwrap());
    w.probe.script("http://", Answer::Healthy);
    s
}

async fn rollouts(s: &Services) -> usize {
    s.ctx
        .store
        .list_rollouts(Some("trk"), 10)
        .await
        .unwrap()
        .len()
}

async fn pin(s: &Services) -> Digest {
    s.ctx.store.get_pin("trk").await.unwrap().unwrap().digest
}

#[tokio::test(start_paused = true)]
async fn a_rejected_digest_is_not_offered_again_until_the_tag_moves() {
    let w = World::new();
    let s = halted_on_a_bad_release(&w).await;
    for _ in 0..3 {
        let report = s.watcher.tick().await.unwrap();
        assert!(
            report.tracked.is_empty() && report.notified.is_empty(),
            "{report:?}"
        );
        s.rollouts.settle().await;
    }
    assert_eq!(rollouts(&s).await, 1, "no second try of digest 2");
    assert_eq!(pin(&s).await, digest(1));

    // The tag moves on: the new digest is tracked.
    w.publish("stable", &digest(3));
    assert_eq!(s.watcher.tick().await.unwrap().tracked, ["trk"]);
    s.rollouts.settle().await;
    assert_eq!(rollouts(&s).await, 2);
    assert_eq!(pin(&s).await, digest(3));

    // Back to the rejected one: still refused, nothing changes.
    w.publish("stable", &digest(2));
    let report = s.watcher.tick().await.unwrap();
    assert!(
        report.tracked.is_empty() && report.notified.is_empty(),
        "{report:?}"
    );
    s.rollouts.settle().await;
    assert_eq!(rollouts(&s).await, 2);
    assert_eq!(pin(&s).await, digest(3));
    for rec in s
        .ctx
        .store
        .list_runtimes(&Default::default())
        .await
        .unwrap()
    {
        assert_eq!(
            rec.image_digest.as_deref(),
            Some(digest(3).as_str()),
            "{}",
            rec.id
        );
    }
    assert_one_container_each(&w, &s, "after the rejected digest came back").await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_repository_does_not_stop_the_others() {
    let w = World::new();
    push(&w, &repo(), "stable", &digest(1));
    push(&w, &other(), "stable", &digest(1));
    let s = w.boot();
    put_template(&s, "mine", watched(REPO, "stable", "notify")).await;
    put_template(&s, "theirs", watched(OTHER, "stable", "notify")).await;
    assert_eq!(
        sorted(s.watcher.tick().await.unwrap().seeded),
        ["mine", "theirs"]
    );

    push(&w, &repo(), "stable", &digest(2));
    push(&w, &other(), "stable", &digest(2));
    let down = RegistryError::Unavailable("503 from the registry".into());
    w.registry.fail_repo(&other(), down.clone());
    let report = s.watcher.tick().await.unwrap();
    assert_eq!(report.lookups, 2);
    assert_eq!(report.notified, ["mine"]);
    assert_eq!(report.failed, [("theirs".to_string(), down.to_string())]);

    // Its observation is untouched: the move is seen once it answers.
    w.registry.heal_repo(&other());
    let report = s.watcher.tick().await.unwrap();
    assert_eq!(report.notified, ["theirs"], "{report:?}");
    assert!(report.failed.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_lookup_is_reported_for_each_of_its_templates() {
    let w = World::new();
    w.publish("stable", &digest(1));
    let s = w.boot();
    put_template(&s, "a", watched(REPO, "stable", "notify")).await;
    put_template(&s, "b", watched(REPO, "stable", "notify")).await;
    let limited = RegistryError::RateLimited {
        retry_after: Some(Duration::from_secs(30)),
    };
    w.registry.fail_next(1, limited.clone());
    let report = s.watcher.tick().await.unwrap();
    assert_eq!(report.lookups, 1, "one request for both");
    assert!(report.seeded.is_empty(), "{report:?}");
    assert_eq!(
        report.failed,
        [
            ("a".to_string(), limited.to_string()),
            ("b".to_string(), limited.to_string())
        ]
    );
    assert!(s.ctx.store.get_observation("a").await.unwrap().is_none());
    // The next tick is answered and seeds both.
    assert_eq!(sorted(s.watcher.tick().await.unwrap().seeded), ["a", "b"]);
}
