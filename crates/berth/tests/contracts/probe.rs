//! The `HealthProbe` contract: one suite, run against `HttpProbe` with a
//! tiny HTTP server on 127.0.0.1 and against `FakeProbe` scripted to answer
//! the same URLs the same way. The `contract!` macro turns each case into
//! `http::<case>` and `fake::<case>`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use berth::adapters::http_probe::HttpProbe;
use berth::fakes::probe::{Answer, FakeProbe};
use berth::ports::probe::HealthProbe;

/// Fails the first few probes, then answers.
const FLAKY_FAILURES: usize = 2;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A short timeout, for the path that never answers.
const HANG_TIMEOUT: Duration = Duration::from_millis(200);

/// The URLs a case probes. Under `base`: `/ok` (200), `/no-content` (204),
/// `/fail` (500), `/flaky` (500 for the first `FLAKY_FAILURES` probes, then
/// 200), `/hang` (accepts, never answers); any other path is 404.
/// `closed` is an address nothing listens on.
struct Site {
    base: String,
    closed: String,
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod http {
            $(
                #[tokio::test]
                async fn $case() {
                    let (probe, site) = super::http_site().await;
                    super::cases::$case(&probe, &site).await;
                }
            )*
        }
        mod fake {
            $(
                // Paused: the hanging path costs no wall time.
                #[tokio::test(start_paused = true)]
                async fn $case() {
                    let (probe, site) = super::fake_site();
                    super::cases::$case(&probe, &site).await;
                }
            )*
        }
    };
}

contract!(
    two_hundreds_are_healthy,
    errors_are_unhealthy,
    nothing_listening_is_unhealthy,
    no_answer_within_the_timeout_is_unhealthy,
    healthy_after_some_failures,
);

async fn http_site() -> (HttpProbe, Site) {
    let flaky = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/ok", get(|| async { StatusCode::OK }))
        .route("/no-content", get(|| async { StatusCode::NO_CONTENT }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route(
            "/flaky",
            get(move || async move {
                if flaky.fetch_add(1, Ordering::SeqCst) < FLAKY_FAILURES {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }),
        )
        .route("/hang", get(std::future::pending::<StatusCode>));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Ends with the test's runtime.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // A port that was free a moment ago: nothing listens once it is dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/ok", closed.local_addr().unwrap());
    let site = Site {
        base: format!("http://{addr}"),
        closed,
    };
    (HttpProbe::new().unwrap(), site)
}

fn fake_site() -> (FakeProbe, Site) {
    let site = Site {
        base: "http://runtime.test:8080".to_string(),
        closed: "http://closed.test:8080/ok".to_string(),
    };
    let probe = FakeProbe::new();
    probe.script(&site.url("/ok"), Answer::Healthy);
    probe.script(&site.url("/no-content"), Answer::Healthy);
    probe.script(&site.url("/fail"), Answer::Unhealthy);
    probe.script(&site.url("/flaky"), Answer::HealthyAfter(FLAKY_FAILURES));
    probe.script(&site.url("/hang"), Answer::Hang);
    (probe, site)
}

mod cases {
    use super::*;

    pub async fn two_hundreds_are_healthy(probe: &dyn HealthProbe, site: &Site) {
        assert!(probe.healthy(&site.url("/ok"), TIMEOUT).await);
        assert!(probe.healthy(&site.url("/no-content"), TIMEOUT).await);
        // Answers do not wear out.
        assert!(probe.healthy(&site.url("/ok"), TIMEOUT).await);
    }

    pub async fn errors_are_unhealthy(probe: &dyn HealthProbe, site: &Site) {
        assert!(!probe.healthy(&site.url("/fail"), TIMEOUT).await);
        assert!(!probe.healthy(&site.url("/no-such-path"), TIMEOUT).await);
    }

    pub async fn nothing_listening_is_unhealthy(probe: &dyn HealthProbe, site: &Site) {
        assert!(!probe.healthy(&site.closed, TIMEOUT).await);
    }

    pub async fn no_answer_within_the_timeout_is_unhealthy(probe: &dyn HealthProbe, site: &Site) {
        assert!(!probe.healthy(&site.url("/hang"), HANG_TIMEOUT).await);
        // The probe is still usable afterwards.
        assert!(probe.healthy(&site.url("/ok"), TIMEOUT).await);
    }

    pub async fn healthy_after_some_failures(probe: &dyn HealthProbe, site: &Site) {
        let url = site.url("/flaky");
        for attempt in 0..FLAKY_FAILURES {
            assert!(!probe.healthy(&url, TIMEOUT).await, "attempt {attempt}");
        }
        assert!(probe.healthy(&url, TIMEOUT).await);
        assert!(probe.healthy(&url, TIMEOUT).await);
    }
}

#[tokio::test(start_paused = true)]
async fn fake_probe_logs_calls_and_prefers_the_longest_prefix() {
    let probe = FakeProbe::new();
    probe.script("http://a.test/", Answer::Healthy);
    probe.script("http://a.test/health/deep", Answer::Unhealthy);
    assert!(probe.healthy("http://a.test/health", TIMEOUT).await);
    assert!(!probe.healthy("http://a.test/health/deep", TIMEOUT).await);
    assert!(
        !probe.healthy("http://b.test/", TIMEOUT).await,
        "unscripted"
    );

    // Scripting again replaces the answer and restarts the count.
    probe.script("http://a.test/", Answer::HealthyAfter(1));
    assert!(!probe.healthy("http://a.test/x", TIMEOUT).await);
    assert!(probe.healthy("http://a.test/x", TIMEOUT).await);

    assert_eq!(
        probe.calls(),
        vec![
            "http://a.test/health",
            "http://a.test/health/deep",
            "http://b.test/",
            "http://a.test/x",
            "http://a.test/x",
        ]
    );
    assert_eq!(probe.calls_to("http://a.test/"), 4);
}
