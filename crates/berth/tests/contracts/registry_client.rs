//! The OCI registry client: against the real local registry started by
//! `scripts/test-env.sh`, and against a fake registry + token service served
//! here (for auth, rate limits and failures the real one cannot produce).

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use berth::adapters::registry::{Credential, OciRegistry, RegistryConfig, RequestCounts};
use berth::fakes::FakeClock;
use berth::ports::registry::{Registry, RegistryError};
use berth::ports::{Clock, SystemClock};
use berth_core::image::{digest_from_repo_digests, Digest, Repository};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const MANIFEST_ACCEPT: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `eval \"$(bash scripts/test-env.sh --env-only)\"` first \
             (it starts the local registry and pushes the test images)"
        )
    })
}

fn repo(text: &str) -> Repository {
    Repository::parse(text).unwrap()
}

fn client(timeout: Duration) -> OciRegistry {
    client_with_clock(timeout, Arc::new(SystemClock))
}

fn client_with_clock(timeout: Duration, clock: Arc<dyn Clock>) -> OciRegistry {
    OciRegistry::new(
        RegistryConfig {
            timeout,
            ..RegistryConfig::default()
        },
        clock,
    )
    .unwrap()
}

fn sha256_digest(bytes: &[u8]) -> Digest {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Digest::parse(&format!("sha256:{hex}")).unwrap()
}

fn counts(heads: u64, gets: u64, tokens: u64) -> RequestCounts {
    RequestCounts {
        manifest_heads: heads,
        manifest_gets: gets,
        token_requests: tokens,
    }
}

// ------------------------------------------------------------ real registry

/// The digest the registry itself reports on a plain HEAD.
async fn raw_head_digest(image: &str, tag: &str) -> String {
    let (host, name) = image.split_once('/').unwrap();
    let response = reqwest::Client::new()
        .head(format!("http://{host}/v2/{name}/manifests/{tag}"))
        .header("Accept", MANIFEST_ACCEPT.join(", "))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "raw HEAD of {image}:{tag}");
    response.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string()
}

/// The digest Docker recorded when it pushed the image.
fn docker_repo_digest(image: &str, tag: &str) -> Digest {
    let out = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &format!("{image}:{tag}"),
        ])
        .output()
        .expect("run docker inspect");
    assert!(
        out.status.success(),
        "docker inspect {image}:{tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digests: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    digest_from_repo_digests(&repo(image), digests.iter().map(String::as_str))
        .unwrap_or_else(|| panic!("{image}:{tag} has no RepoDigests: {digests:?}"))
}

#[tokio::test]
async fn real_registry_resolves_tags_with_one_head_each() {
    let _registry = required_env("BERTH_TEST_REGISTRY");
    let image = required_env("BERTH_TEST_IMAGE");
    let reg = client(Duration::from_secs(10));
    let repo = repo(&image);

    let v1 = reg.resolve_tag(&repo, "v1").await.unwrap();
    assert_eq!(reg.request_count(), counts(1, 0, 0));
    assert_eq!(v1.as_str(), raw_head_digest(&image, "v1").await);
    assert_eq!(v1, docker_repo_digest(&image, "v1"));

    let v2 = reg.resolve_tag(&repo, "v2").await.unwrap();
    assert_eq!(reg.request_count(), counts(2, 0, 0));
    assert_ne!(v1, v2);
    assert_eq!(v2.as_str(), raw_head_digest(&image, "v2").await);
}

#[tokio::test]
async fn real_registry_unknown_tag_and_repository_are_not_found() {
    let registry = required_env("BERTH_TEST_REGISTRY");
    let image = required_env("BERTH_TEST_IMAGE");
    let reg = client(Duration::from_secs(10));

    let err = reg
        .resolve_tag(&repo(&image), "no-such-tag")
        .await
        .unwrap_err();
    let RegistryError::NotFound(message) = err else {
        panic!("expected NotFound, got {err:?}");
    };
    assert!(message.contains(&registry), "{message}");
    assert!(message.contains("berth-test/app"), "{message}");

    let err = reg
        .resolve_tag(&repo(&format!("{registry}/berth-test/no-such-repo")), "v1")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err:?}");
    assert_eq!(reg.request_count(), counts(2, 0, 0));
}

#[tokio::test]
async fn real_registry_has_digest() {
    let image = required_env("BERTH_TEST_IMAGE");
    let reg = client(Duration::from_secs(10));
    let repo = repo(&image);
    let v1 = reg.resolve_tag(&repo, "v1").await.unwrap();
    assert!(reg.has_digest(&repo, &v1).await.unwrap());
    let absent = sha256_digest(b"berth: a manifest nobody pushed");
    assert!(!reg.has_digest(&repo, &absent).await.unwrap());
    assert_eq!(reg.request_count(), counts(3, 0, 0));
}

// ------------------------------------------------------------ fake registry

const SERVICE: &str = "fake-registry";
/// A scope with a comma inside the quotes, to exercise the challenge parser.
const SCOPE: &str = "repository:acme/app:pull,push";
const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Bearer auth; the token service answers `access_token`.
    BearerAccessToken,
    /// Bearer auth; the token service answers `token`.
    BearerToken,
    /// Basic auth with alice / s3cret.
    Basic,
    /// No auth, no Docker-Content-Digest header.
    NoDigestHeader,
    TooManyRequests,
    ServerError,
    /// Never answers.
    Hang,
}

struct Fake {
    mode: Mode,
    realm: String,
    manifest_hits: AtomicUsize,
    token_hits: AtomicUsize,
    /// `Authorization` headers the token service received.
    token_auth: Mutex<Vec<Option<String>>>,
    /// `(method, path, Authorization)` of every manifest request.
    manifest_requests: Mutex<Vec<(String, String, Option<String>)>>,
    issued: Mutex<Vec<String>>,
}

impl Fake {
    fn token_hits(&self) -> usize {
        self.token_hits.load(Ordering::SeqCst)
    }
    fn manifest_hits(&self) -> usize {
        self.manifest_hits.load(Ordering::SeqCst)
    }
}

fn auth_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string())
}

async fn token(
    State(fake): State<Arc<Fake>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    fake.token_hits.fetch_add(1, Ordering::SeqCst);
    fake.token_auth.lock().unwrap().push(auth_header(&headers));
    if query.get("service").map(String::as_str) != Some(SERVICE)
        || query.get("scope").map(String::as_str) != Some(SCOPE)
    {
        return (StatusCode::BAD_REQUEST, format!("bad query {query:?}")).into_response();
    }
    if auth_header(&headers).is_some_and(|a| a != "Basic YWxpY2U6czNjcmV0") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let token = {
        let mut issued = fake.issued.lock().unwrap();
        let token = format!("tok-{}", issued.len() + 1);
        issued.push(token.clone());
        token
    };
    let field = if fake.mode == Mode::BearerToken {
        "token"
    } else {
        "access_token"
    };
    Json(json!({ field: token, "expires_in": 2 })).into_response()
}

async fn manifests(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    fake.manifest_hits.fetch_add(1, Ordering::SeqCst);
    let auth = auth_header(&headers);
    fake.manifest_requests.lock().unwrap().push((
        method.to_string(),
        uri.path().to_string(),
        auth.clone(),
    ));
    let accept = headers
        .get("accept")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    if !MANIFEST_ACCEPT.iter().all(|m| accept.contains(m)) {
        return (StatusCode::BAD_REQUEST, format!("Accept: {accept}")).into_response();
    }
    match fake.mode {
        Mode::BearerAccessToken | Mode::BearerToken => {
            let valid = auth
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| fake.issued.lock().unwrap().iter().any(|i| i == t));
            if !valid {
                let challenge = format!(
                    r#"Bearer realm="{}",service="{SERVICE}",scope="{SCOPE}""#,
                    fake.realm
                );
                return (StatusCode::UNAUTHORIZED, [("www-authenticate", challenge)])
                    .into_response();
            }
        }
        Mode::Basic => {
            if auth.as_deref() != Some("Basic YWxpY2U6czNjcmV0") {
                return (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", r#"Basic realm="fake registry""#)],
                )
                    .into_response();
            }
        }
        Mode::TooManyRequests => {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "30")]).into_response();
        }
        Mode::ServerError => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Hang => return std::future::pending::<Response>().await,
        Mode::NoDigestHeader => {}
    }
    let by_digest = format!("/v2/acme/app/manifests/{}", sha256_digest(MANIFEST));
    if uri.path() != "/v2/acme/app/manifests/v1" && uri.path() != by_digest {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut response = if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        MANIFEST.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    );
    if fake.mode != Mode::NoDigestHeader {
        h.insert(
            "docker-content-digest",
            HeaderValue::from_str(sha256_digest(MANIFEST).as_str()).unwrap(),
        );
    }
    response
}

/// Serves a fake registry on 127.0.0.1:<free port>; returns its state and
/// `127.0.0.1:<port>/acme/app`.
async fn spawn_fake(mode: Mode) -> (Arc<Fake>, Repository) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake {
        mode,
        realm: format!("http://{addr}/token"),
        manifest_hits: AtomicUsize::new(0),
        token_hits: AtomicUsize::new(0),
        token_auth: Mutex::new(Vec::new()),
        manifest_requests: Mutex::new(Vec::new()),
        issued: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/token", get(token))
        .fallback(manifests)
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, repo(&format!("{addr}/acme/app")))
}

fn with_alice(repo: &Repository, timeout: Duration) -> OciRegistry {
    let host = repo.as_str().split('/').next().unwrap().to_string();
    OciRegistry::new(
        RegistryConfig {
            credentials: HashMap::from([(
                host,
                Credential {
                    username: "alice".into(),
                    password: "s3cret".into(),
                },
            )]),
            timeout,
            ..RegistryConfig::default()
        },
        Arc::new(SystemClock),
    )
    .unwrap()
}

#[tokio::test]
async fn bearer_token_is_fetched_once_reused_and_renewed_after_expiry() {
    let (fake, repo) = spawn_fake(Mode::BearerAccessToken).await;
    let clock = Arc::new(FakeClock::default());
    let reg = client_with_clock(Duration::from_secs(5), clock.clone());
    let expected = sha256_digest(MANIFEST);

    // First call: 401 with the challenge, one token, the retry.
    assert_eq!(reg.resolve_tag(&repo, "v1").await.unwrap(), expected);
    assert_eq!(fake.token_hits(), 1);
    assert_eq!(reg.request_count(), counts(2, 0, 1));
    // Anonymous: no credentials configured.
    assert_eq!(fake.token_auth.lock().unwrap()[0], None);

    // Within the token's lifetime: sent up front, no token request, no 401.
    assert_eq!(reg.resolve_tag(&repo, "v1").await.unwrap(), expected);
    assert!(reg.has_digest(&repo, &expected).await.unwrap());
    assert_eq!(fake.token_hits(), 1);
    assert_eq!(reg.request_count(), counts(4, 0, 1));
    assert_eq!(fake.manifest_hits(), 4);

    // Still valid just before its end (2 s less a 10 % margin).
    clock.advance(Duration::from_millis(1700));
    assert_eq!(reg.resolve_tag(&repo, "v1").await.unwrap(), expected);
    assert_eq!(fake.token_hits(), 1);
    assert_eq!(reg.request_count(), counts(5, 0, 1));

    // After expiry a new token is fetched; the registry's challenge is
    // known, so that happens before the request, without a 401.
    clock.advance(Duration::from_millis(800));
    assert_eq!(reg.resolve_tag(&repo, "v1").await.unwrap(), expected);
    assert_eq!(fake.token_hits(), 2);
    assert_eq!(reg.request_count(), counts(6, 0, 2));
    let requests = fake.manifest_requests.lock().unwrap();
    assert_eq!(requests.last().unwrap().2.as_deref(), Some("Bearer tok-2"));
}

#[tokio::test]
async fn bearer_token_field_and_basic_credentials_to_the_token_service() {
    let (fake, repo) = spawn_fake(Mode::BearerToken).await;
    let reg = with_alice(&repo, Duration::from_secs(5));
    assert_eq!(
        reg.resolve_tag(&repo, "v1").await.unwrap(),
        sha256_digest(MANIFEST)
    );
    assert_eq!(
        *fake.token_auth.lock().unwrap(),
        vec![Some("Basic YWxpY2U6czNjcmV0".to_string())]
    );
    // The registry itself only ever sees the token.
    let requests = fake.manifest_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].2, None);
    assert_eq!(requests[1].2.as_deref(), Some("Bearer tok-1"));

    // Unknown tag behind auth: NotFound, with the cached token.
    let err = reg.resolve_tag(&repo, "v9").await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err:?}");
    assert_eq!(fake.token_hits(), 1);
}

#[tokio::test]
async fn token_service_refusing_the_credentials_is_unauthorized() {
    let (fake, repo) = spawn_fake(Mode::BearerToken).await;
    let host = repo.as_str().split('/').next().unwrap().to_string();
    let reg = OciRegistry::new(
        RegistryConfig {
            credentials: HashMap::from([(
                host,
                Credential {
                    username: "alice".into(),
                    password: "wrong-password".into(),
                },
            )]),
            ..RegistryConfig::default()
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let err = reg.resolve_tag(&repo, "v1").await.unwrap_err();
    let RegistryError::Unauthorized(message) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert!(!message.contains("wrong-password"), "{message}");
    assert!(message.contains("acme/app"), "{message}");
    assert_eq!(fake.token_hits(), 1);
}

#[tokio::test]
async fn basic_auth_challenge_is_answered_with_the_configured_login() {
    let (fake, repo) = spawn_fake(Mode::Basic).await;
    let reg = with_alice(&repo, Duration::from_secs(5));
    let expected = sha256_digest(MANIFEST);
    assert_eq!(reg.resolve_tag(&repo, "v1").await.unwrap(), expected);
    assert_eq!(reg.request_count(), counts(2, 0, 0));
    // Known to want Basic now: sent up front.
    assert_eq!(reg.resolve_tag(&repo, "v1").await.unwrap(), expected);
    assert_eq!(reg.request_count(), counts(3, 0, 0));
    assert_eq!(fake.manifest_hits(), 3);

    // Without a login: Unauthorized.
    let anonymous = client(Duration::from_secs(5));
    let err = anonymous.resolve_tag(&repo, "v1").await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn missing_digest_header_falls_back_to_get_and_hash() {
    let (fake, repo) = spawn_fake(Mode::NoDigestHeader).await;
    let reg = client(Duration::from_secs(5));
    assert_eq!(
        reg.resolve_tag(&repo, "v1").await.unwrap(),
        sha256_digest(MANIFEST)
    );
    assert_eq!(reg.request_count(), counts(1, 1, 0));
    let methods: Vec<String> = fake
        .manifest_requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[tokio::test]
async fn rate_limit_is_reported_and_honoured_without_requests() {
    let (fake, repo) = spawn_fake(Mode::TooManyRequests).await;
    let clock = Arc::new(FakeClock::default());
    let reg = client_with_clock(Duration::from_secs(5), clock.clone());
    let err = reg.resolve_tag(&repo, "v1").await.unwrap_err();
    assert_eq!(
        err,
        RegistryError::RateLimited {
            retry_after: Some(Duration::from_secs(30))
        }
    );
    assert_eq!(fake.manifest_hits(), 1);

    // Until the 30 s are over, nothing goes to that registry.
    clock.advance(Duration::from_secs(10));
    let err = reg.resolve_tag(&repo, "v2").await.unwrap_err();
    let RegistryError::RateLimited {
        retry_after: Some(wait),
    } = err
    else {
        panic!("expected RateLimited, got {err:?}");
    };
    assert!(wait <= Duration::from_secs(20) && wait > Duration::from_secs(19));
    let any = sha256_digest(MANIFEST);
    assert!(matches!(
        reg.has_digest(&repo, &any).await,
        Err(RegistryError::RateLimited { .. })
    ));
    assert_eq!(fake.manifest_hits(), 1);
    assert_eq!(reg.request_count(), counts(1, 0, 0));

    // Once they are, requests go out again.
    clock.advance(Duration::from_secs(21));
    assert!(matches!(
        reg.resolve_tag(&repo, "v1").await,
        Err(RegistryError::RateLimited { .. })
    ));
    assert_eq!(fake.manifest_hits(), 2);
}

#[tokio::test]
async fn server_error_is_unavailable() {
    let (fake, repo) = spawn_fake(Mode::ServerError).await;
    let reg = client(Duration::from_secs(5));
    let err = reg.resolve_tag(&repo, "v1").await.unwrap_err();
    let RegistryError::Unavailable(message) = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        message.contains("500") && message.contains("acme/app"),
        "{message}"
    );
    assert_eq!(fake.manifest_hits(), 1);
}

#[tokio::test]
async fn unanswered_request_times_out_as_unavailable() {
    let (fake, repo) = spawn_fake(Mode::Hang).await;
    let reg = client(Duration::from_millis(300));
    // The outer bound only keeps a broken timeout from hanging the suite.
    let err = tokio::time::timeout(Duration::from_secs(10), reg.resolve_tag(&repo, "v1"))
        .await
        .expect("the client's own timeout must end the request")
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err:?}");
    assert_eq!(fake.manifest_hits(), 1);
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let reg = client(Duration::from_secs(2));
    let err = reg
        .resolve_tag(&repo(&format!("{addr}/acme/app")), "v1")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err:?}");
}
