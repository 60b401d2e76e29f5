//! `/metrics` on a live berth: `promtool check metrics` accepts it without
//! a lint message, and the operation, reconcile and watch-tick histograms,
//! the outbox backlog and the events-stream reconnects are there with the
//! values the work done says. A missing promtool fails the test.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::TestServer;
use reqwest::StatusCode;
use serde_json::json;

/// Pipes `text` into `promtool check metrics`; returns its exit status
/// and everything it printed.
fn promtool_check(text: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `promtool` ({e}): install Debian's `prometheus` package \
                 (scripts/test-env.sh installs it)"
            )
        });
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, printed)
}

/// The value of the sample whose name and labels are exactly `series`
/// (`name` or `name{a="b",…}`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

/// The value of the histogram sample `name` whose labels include every
/// one of `labels` (in any order, `le` included).
fn histogram_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let set: Vec<&str> = set.split(',').collect();
        labels
            .iter()
            .all(|l| set.contains(l))
            .then(|| value.parse().ok())?
    })
}

async fn fetch(t: &TestServer, accept: Option<&str>) -> (String, String) {
    let mut req = t.client.get(format!("{}/metrics", t.base));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("GET /metrics");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, resp.text().await.expect("metrics body"))
}

#[tokio::test]
async fn live_metrics_pass_promtool_and_carry_durations_backlogs_and_reconnects() {
    let t = TestServer::start().await;
    // One change-stream client, connected while the metrics are read.
    let stream = t
        .client
        .get(format!("{}/v1/stream", t.base))
        .send()
        .await
        .expect("GET /v1/stream");
    assert_eq!(stream.status(), StatusCode::OK);
    t.put_app_template("app", "v1").await;
    let (status, body) = t.start_runtime("m1", "app").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = t.post("/v1/runtimes/m1/stop", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = t.post("/v1/admin/reconcile", json!({})).await;
    assert!(status.is_success(), "reconcile: {status} {body}");
    let (status, body) = t.post("/v1/admin/images/watch", json!({})).await;
    assert!(status.is_success(), "watch tick: {status} {body}");

    let (content_type, text) = fetch(&t, None).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (code, printed) = promtool_check(&text);
    assert!(
        code.success() && printed.trim().is_empty(),
        "promtool check metrics: {code}\n{printed}\non\n{text}"
    );

    // Operations: counted and timed by kind and outcome.
    let h = "berth_operation_duration_seconds";
    for kind in ["start", "stop"] {
        let labels = [&*format!("kind=\"{kind}\""), "outcome=\"success\""];
        let count = histogram_sample(&text, &format!("{h}_count"), &labels)
            .unwrap_or_else(|| panic!("{h}_count of {kind} in\n{text}"));
        assert!(count >= 1.0, "{kind}: count {count}");
        let inf = histogram_sample(
            &text,
            &format!("{h}_bucket"),
            &[labels[0], labels[1], "le=\"+Inf\""],
        )
        .unwrap_or_else(|| panic!("{h}_bucket +Inf of {kind} in\n{text}"));
        assert_eq!(inf, count, "{kind}: +Inf bucket is the count");
        let sum = histogram_sample(&text, &format!("{h}_sum"), &labels).unwrap();
        assert!(
            (0.0..300.0).contains(&sum),
            "{kind}: {sum} s in all is sensible"
        );
    }
    // A container start on Docker takes more than a millisecond.
    let start_sum = histogram_sample(
        &text,
        &format!("{h}_sum"),
        &["kind=\"start\"", "outcome=\"success\""],
    )
    .unwrap();
    assert!(start_sum > 0.0, "start took {start_sum} s");
    assert_eq!(
        sample(
            &text,
            "berth_operations_total{kind=\"start\",outcome=\"success\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // Background passes: at least the one asked for, each timed.
    for name in [
        "berth_reconcile_duration_seconds",
        "berth_image_watch_tick_duration_seconds",
    ] {
        let count = sample(&text, &format!("{name}_count"))
            .unwrap_or_else(|| panic!("{name}_count in\n{text}"));
        assert!(count >= 1.0, "{name}: {count}");
        let sum = sample(&text, &format!("{name}_sum")).unwrap();
        assert!((0.0..60.0).contains(&sum), "{name}: {sum} s");
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
    }
    let passes = sample(&text, "berth_reconcile_passes_total").unwrap();
    assert_eq!(
        sample(&text, "berth_reconcile_duration_seconds_count"),
        Some(passes),
        "every finished pass is timed"
    );

    // No Redis here: nothing waits in the outbox; the events stream has
    // not broken.
    assert_eq!(sample(&text, "berth_outbox_backlog"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "berth_docker_events_reconnects_total"),
        Some(0.0),
        "{text}"
    );
    assert!(text.contains("# TYPE berth_docker_events_reconnects_total counter\n"));
    // The change stream: one client connected, none dropped.
    assert_eq!(sample(&text, "berth_stream_clients"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "berth_stream_dropped_clients_total"),
        Some(0.0),
        "{text}"
    );
    drop(stream);
    assert!(!text.contains("# EOF"));

    // A scraper that asks for OpenMetrics gets it, with the same series.
    let (content_type, om) = fetch(
        &t,
        Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"),
    )
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE berth_operations counter\n"));
    assert!(om.contains("# TYPE berth_operation_duration_seconds histogram\n"));
    t.shutdown().await;
}
