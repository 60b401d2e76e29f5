//! An independent API fuzzer against the OpenAPI document: schemathesis
//! (installed by `scripts/test-env.sh`, path in `BERTH_TEST_SCHEMATHESIS`)
//! generates valid and invalid requests for the operations from
//! `/openapi.json`, and its conformance checks fail on a server error, a
//! status, a content type or a body the document does not describe.
//!
//! The server has a token configured, and schemathesis is given it, so it
//! also exercises the 401 answers (requests it sends without the header).
//! Everything is loopback: berth on 127.0.0.1, no operation below reaches
//! a registry, Docker or git beyond what is named in `EXCLUDED`.

mod common;

use std::time::{Duration, Instant};

use common::{Options, TestServer};

const TOKEN: &str = "fuzz-token-0123456789";

/// The schemathesis version `scripts/test-env.sh` installs (its CLI flags
/// below are this version's).
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Operations left out of the run, and why: most start containers, pull
/// images or asks a registry, for templates the fuzzer itself wrote with
/// random image references. That would leave loopback (e.g. docker.io),
/// be slow (pulls and health gates up to the operation timeout), and end
/// in 502 `image_pull_failed`, a documented answer that the
/// `not_a_server_error` check counts as a failure all the same. Their
/// answers are covered by the scenario tests (lifecycle_api, pins, ...).
/// By operation id (method and path in the comment).
const EXCLUDED: &[&str] = &[
    "start_runtime",          // POST /v1/runtimes
    "start_existing_runtime", // POST /v1/runtimes/{id}/start
    "restart_runtime",        // POST /v1/runtimes/{id}/restart
    "refresh_images",         // POST /v1/admin/images/refresh
    "watch_images",           // POST /v1/admin/images/watch
    "promote_pin",            // POST /v1/templates/{name}/pin (`verify` asks the registry)
    // GET /v1/stream: a 200 is a server-sent event stream that never ends
    // (live changes, keep-alives), so every accepted request would hang
    // the run until its timeout. Its 400s and 401 are covered by
    // tests/stream.rs and tests/stream_on_fakes.rs.
    "stream",
];

/// Test cases per operation, and the time budget of the whole run.
const MAX_EXAMPLES: &str = "30";
const MAX_SECONDS: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let schemathesis = std::env::var("BERTH_TEST_SCHEMATHESIS").unwrap_or_else(|_| {
        panic!(
            "BERTH_TEST_SCHEMATHESIS is not set: run the tests with `bash scripts/test-env.sh` \
             (it installs schemathesis {SCHEMATHESIS_VERSION} into a virtual environment)"
        )
    });
    let version = tokio::process::Command::new(&schemathesis)
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run schemathesis at {schemathesis}: {e}; run `bash scripts/test-env.sh`")
        });
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(
        version.contains(SCHEMATHESIS_VERSION),
        "{schemathesis} is not schemathesis {SCHEMATHESIS_VERSION}: {version}"
    );

    let t = TestServer::start_with(Options {
        token: Some(TOKEN.to_string()),
        ..Default::default()
    })
    .await;
    // Its working directory holds what it keeps between runs (none: the
    // example database is in memory) and nothing else.
    let workdir = tempfile::tempdir().expect("tempdir");
    let seed = std::env::var("BERTH_FUZZ_SEED").unwrap_or_else(|_| "20261202".to_string());
    let mut cmd = tokio::process::Command::new(&schemathesis);
    cmd.current_dir(workdir.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .arg("run")
        .arg(format!("{}/openapi.json", t.base))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", &MAX_SECONDS.to_string()])
        // One worker: with more, this version's coverage phase sometimes
        // dies in hypothesis (CPython's `ast` is not thread-safe:
        // "AST constructor recursion depth mismatch"), an error of the
        // tool, not of berth.
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--generation-database", "none"])
        .args(["--seed", &seed])
        .args(["--no-color", "--continue-on-failure"])
        .args(EXCLUDED.iter().flat_map(|id| ["--exclude-operation-id", id]))
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(MAX_SECONDS + 120), cmd.output())
        .await
        .expect("schemathesis finishes within its time budget")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("schemathesis (seed {seed}) took {:.0?}", started.elapsed());
    t.shutdown().await;
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not describe (exit {:?}, seed {seed}):\n{stdout}\n{stderr}",
        out.status.code()
    );
}
