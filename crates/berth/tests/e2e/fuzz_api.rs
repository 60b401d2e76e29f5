//! An independent API fuzzer against the OpenAPI document: schemathesis
//! (installed by `scripts/test-env.sh`, path in `BERTH_TEST_SCHEMATHESIS`)
//! generates valid and invalid requests for the operations from
//! `/openapi.json`, and its conformance checks fail on a server error, a
//! status, a content type or a body the document does not describe.
//!
//! The server has a token configured, and schemathesis is given it, so it
//! also exercises the 401 answers (requests it sends without the header).
//! Every operation is in the run, those that pull images, start
//! containers and ask a registry included: the hooks in
//! `tests/fuzz/hooks.py` give the templates the fuzzer writes the test
//! image of the loopback registry, and put the test's own template and
//! runtime in place of generated names half the time, so the stateful
//! phase reaches the lifecycle. The change stream is read for a second per
//! request (`tests/fuzz/schemathesis.toml`), and each event is checked
//! against the document. Everything is loopback: berth on 127.0.0.1, the
//! registry of `scripts/test-env.sh`, containers on the test's network.

use crate::common;

use std::time::{Duration, Instant};

use common::{test_image, Options, TestServer};

const TOKEN: &str = "fuzz-token-0123456789";

/// The schemathesis version `scripts/test-env.sh` installs (its CLI flags
/// below are this version's).
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The template and runtime the test makes for the fuzzer to meet: the
/// hooks (`tests/fuzz/hooks.py`) put them in place of generated names.
const FUZZ_TEMPLATE: &str = "fuzz-app";
const FUZZ_RUNTIME: &str = "fuzz-rt";

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
        // A start the fuzzer sends ends in seconds; none waits long.
        operation_timeout: Some("30s".into()),
        ..Default::default()
    })
    .await;
    t.put_app_template(FUZZ_TEMPLATE, "v1").await;
    let (status, body) = t.start_runtime(FUZZ_RUNTIME, FUZZ_TEMPLATE).await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
    let fuzz_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz");
    // Its working directory holds what it keeps between runs (none: the
    // example database is in memory) and nothing else.
    let workdir = tempfile::tempdir().expect("tempdir");
    let seed = std::env::var("BERTH_FUZZ_SEED").unwrap_or_else(|_| "20261202".to_string());
    let mut cmd = tokio::process::Command::new(&schemathesis);
    cmd.current_dir(workdir.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("SCHEMATHESIS_HOOKS", format!("{fuzz_dir}/hooks.py"))
        .env("BERTH_TEST_IMAGE", test_image())
        .env("FUZZ_TEMPLATE", FUZZ_TEMPLATE)
        .env("FUZZ_RUNTIME", FUZZ_RUNTIME)
        .arg("--config-file")
        .arg(format!("{fuzz_dir}/schemathesis.toml"))
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
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(MAX_SECONDS + 120), cmd.output())
        .await
        .expect("schemathesis finishes within its time budget")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("schemathesis (seed {seed}) took {:.0?}", started.elapsed());
    let lines: Vec<&str> = stdout.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
    // The run reached the lifecycle: starts of the fuzzer's own, beyond
    // the test's one, and what else it did to runtimes.
    let mut did = std::collections::BTreeMap::<String, usize>::new();
    let mut before: Option<String> = None;
    loop {
        let query = match &before {
            Some(b) => format!("limit=1000&before={b}"),
            None => "limit=1000".to_string(),
        };
        let (_, page) = t.get(&format!("/v1/operations?{query}")).await;
        for op in page["operations"].as_array().expect("operations") {
            *did.entry(format!("{} {}", op["kind"], op["outcome"]))
                .or_default() += 1;
        }
        match page["next"].as_str() {
            Some(n) => before = Some(n.to_string()),
            None => break,
        }
    }
    eprintln!("operations the run left in the log: {did:?}");
    t.shutdown().await;
    let count = |kind: &str| {
        did.get(&format!("\"{kind}\" \"success\""))
            .copied()
            .unwrap_or(0)
    };
    assert!(
        count("start") >= 5 && count("restart") + count("stop") >= 1,
        "the run hardly reached the lifecycle (one start is the test's): {did:?}"
    );
    assert!(
        out.status.success(),
        "schemathesis found answers the document does not describe (exit {:?}, seed {seed}):\n{stdout}\n{stderr}",
        out.status.code()
    );
}
