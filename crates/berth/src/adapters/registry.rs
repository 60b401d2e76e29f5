//! A small OCI distribution client: resolves tags to manifest digests with
//! `HEAD` requests, authenticates with Basic or Bearer tokens (cached per
//! scope), and honours rate limits.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use berth_core::error_chain::causes;
use berth_core::image::{validate_tag, Digest, Repository};
use reqwest::header::{HeaderMap, ACCEPT, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Client, Method, Response, StatusCode, Url};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::ports::registry::{Registry, RegistryError};
use crate::ports::Clock;

/// Every manifest kind a tag may point at: multi-platform indexes first, so
/// the registry answers with the digest Docker itself records.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The distribution spec lets registries refuse manifests above 4 MiB;
/// anything larger is not a manifest we want to hold in memory.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_TOKEN_BYTES: usize = 1024 * 1024;
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const DOCKER_HUB: &str = "registry-1.docker.io";

/// Login for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

// Hand-written so that a logged configuration never shows the password.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Keyed by registry `host[:port]` as written in image names
    /// (`docker.io` for Docker Hub).
    pub credentials: HashMap<String, Credential>,
    /// Registries (`host[:port]` or `host`) reached over plain HTTP.
    /// Loopback registries always are.
    pub insecure: Vec<String>,
    /// Per request, token requests included.
    pub timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            credentials: HashMap::new(),
            insecure: Vec::new(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Requests sent so far (every attempt on the wire, the ones answered 401
/// included; calls refused locally because of a rate limit are not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub manifest_heads: u64,
    pub manifest_gets: u64,
    pub token_requests: u64,
}

#[derive(Default)]
struct Counters {
    manifest_heads: AtomicU64,
    manifest_gets: AtomicU64,
    token_requests: AtomicU64,
}

/// How a registry wants to be authenticated, learnt from its first 401, so
/// later requests authenticate up front instead of paying a 401 each time.
#[derive(Debug, Clone)]
enum KnownAuth {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

struct CachedToken {
    token: String,
    /// Clock time (ms since the epoch).
    valid_until_ms: i64,
}

#[derive(Default)]
struct State {
    auth: HashMap<String, KnownAuth>,
    /// (registry, repository name) → the scope its last challenge asked for.
    scopes: HashMap<(String, String), String>,
    /// (registry, scope) → token.
    tokens: HashMap<(String, String), CachedToken>,
    /// registry → clock time (ms since the epoch) the rate limit ends.
    rate_limited_until_ms: HashMap<String, i64>,
}

pub struct OciRegistry {
    client: Client,
    config: RegistryConfig,
    /// Token lifetimes and rate limits are measured on it.
    clock: Arc<dyn Clock>,
    counters: Counters,
    state: Mutex<State>,
}

/// Where one repository lives.
struct Target {
    /// The registry as written in the image name (`docker.io` for Docker Hub);
    /// the key for credentials, rate limits and messages.
    registry: String,
    /// `scheme://host[:port]`.
    base: String,
    /// The repository path on the registry (`library/busybox`).
    name: String,
}

impl Target {
    fn context(&self) -> String {
        format!("registry {}, repository {}", self.registry, self.name)
    }
}

enum Auth {
    Basic(Credential),
    Bearer(String),
}

impl OciRegistry {
    pub fn new(
        config: RegistryConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<OciRegistry, RegistryError> {
        let client = Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                RegistryError::Rejected(format!("cannot build the registry HTTP client: {e}"))
            })?;
        Ok(OciRegistry {
            client,
            config,
            clock,
            counters: Counters::default(),
            state: Mutex::new(State::default()),
        })
    }

    pub fn request_count(&self) -> RequestCounts {
        RequestCounts {
            manifest_heads: self.counters.manifest_heads.load(Ordering::Relaxed),
            manifest_gets: self.counters.manifest_gets.load(Ordering::Relaxed),
            token_requests: self.counters.token_requests.load(Ordering::Relaxed),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a cache; one left behind by a panicking thread is
        // still consistent enough to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn target(&self, repo: &Repository) -> Target {
        let registry = repo.domain().unwrap_or("docker.io").to_string();
        let path = repo.path().to_string();
        let is_hub = matches!(
            registry.as_str(),
            "docker.io" | "index.docker.io" | DOCKER_HUB
        );
        if is_hub {
            let name = if path.contains('/') {
                path
            } else {
                format!("library/{path}")
            };
            return Target {
                registry,
                base: format!("https://{DOCKER_HUB}"),
                name,
            };
        }
        let scheme = if self.plain_http_allowed(&registry) {
            "http"
        } else {
            "https"
        };
        Target {
            base: format!("{scheme}://{registry}"),
            registry,
            name: path,
        }
    }

    /// `host_port` is `host[:port]` (or `[v6]:port`).
    fn plain_http_allowed(&self, host_port: &str) -> bool {
        let host = host_of(host_port);
        is_loopback(host)
            || self
                .config
                .insecure
                .iter()
                .any(|h| h == host_port || h == host)
    }

    fn credential(&self, t: &Target) -> Option<&Credential> {
        let creds = &self.config.credentials;
        creds.get(&t.registry).or_else(|| {
            if t.base.ends_with(DOCKER_HUB) {
                ["docker.io", "index.docker.io", DOCKER_HUB]
                    .iter()
                    .find_map(|k| creds.get(*k))
            } else {
                None
            }
        })
    }

    fn check_rate_limit(&self, t: &Target) -> Result<(), RegistryError> {
        let mut state = self.state();
        if let Some(until_ms) = state.rate_limited_until_ms.get(&t.registry).copied() {
            let now_ms = self.clock.now_ms();
            if until_ms > now_ms {
                return Err(RegistryError::RateLimited {
                    retry_after: Some(ms_duration(until_ms - now_ms)),
                });
            }
            state.rate_limited_until_ms.remove(&t.registry);
        }
        Ok(())
    }

    fn rate_limited(&self, t: &Target, headers: &HeaderMap) -> RegistryError {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| match v.trim().parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => {
                    tracing::warn!(registry = %t.registry, retry_after = v, "registry rate limit with a Retry-After that is not in seconds; not remembered");
                    None
                }
            });
        match retry_after {
            Some(wait) => {
                tracing::warn!(registry = %t.registry, retry_after_secs = wait.as_secs(), "registry rate limit hit; no requests to it until then");
                let until_ms = self.clock.now_ms().saturating_add(duration_ms(wait));
                self.state()
                    .rate_limited_until_ms
                    .insert(t.registry.clone(), until_ms);
            }
            None => {
                tracing::warn!(registry = %t.registry, "registry rate limit hit");
            }
        }
        RegistryError::RateLimited { retry_after }
    }

    /// The authentication to send before any challenge, from what the
    /// registry asked for last time.
    async fn auth_up_front(&self, t: &Target) -> Result<Option<Auth>, RegistryError> {
        let (known, scope) = {
            let state = self.state();
            let known = state.auth.get(&t.registry).cloned();
            let scope = state
                .scopes
                .get(&(t.registry.clone(), t.name.clone()))
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", t.name));
            (known, scope)
        };
        match known {
            None => Ok(None),
            Some(KnownAuth::Basic) => Ok(self.credential(t).cloned().map(Auth::Basic)),
            Some(KnownAuth::Bearer { realm, service }) => {
                let cached = self.cached_token(&t.registry, &scope);
                let token = match cached {
                    Some(token) => token,
                    None => {
                        self.fetch_token(t, &realm, service.as_deref(), &scope)
                            .await?
                    }
                };
                Ok(Some(Auth::Bearer(token)))
            }
        }
    }

    fn cached_token(&self, registry: &str, scope: &str) -> Option<String> {
        let state = self.state();
        let cached = state
            .tokens
            .get(&(registry.to_string(), scope.to_string()))?;
        (cached.valid_until_ms > self.clock.now_ms()).then(|| cached.token.clone())
    }

    async fn fetch_token(
        &self,
        t: &Target,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut url = Url::parse(realm).map_err(|_| {
            RegistryError::Rejected(format!(
                "{}: the token realm {realm:?} is not a URL",
                t.context()
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RegistryError::Rejected(format!(
                "{}: the token realm {realm:?} is not http(s)",
                t.context()
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.client.get(url.clone());
        if let Some(cred) = self.credential(t) {
            // A password must not cross the network in clear text unless
            // the operator allowed plain HTTP to that host.
            let realm_host = match url.port() {
                Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
                None => url.host_str().unwrap_or_default().to_string(),
            };
            if url.scheme() == "https" || self.plain_http_allowed(&realm_host) {
                request = request.basic_auth(&cred.username, Some(&cred.password));
            } else {
                tracing::warn!(registry = %t.registry, realm, "not sending credentials to a plain-HTTP token service; asking anonymously");
            }
        }
        self.counters.token_requests.fetch_add(1, Ordering::Relaxed);
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(t, "token request", &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    RegistryError::Unauthorized(format!(
                        "{}: the token service refused {} (HTTP {})",
                        t.context(),
                        if self.credential(t).is_some() {
                            "the configured credentials"
                        } else {
                            "anonymous access"
                        },
                        status.as_u16()
                    ))
                }
                StatusCode::TOO_MANY_REQUESTS => self.rate_limited(t, response.headers()),
                s if s.is_server_error() => RegistryError::Unavailable(format!(
                    "{}: the token service answered HTTP {}",
                    t.context(),
                    s.as_u16()
                )),
                s => RegistryError::Rejected(format!(
                    "{}: the token service answered HTTP {}",
                    t.context(),
                    s.as_u16()
                )),
            });
        }
        let body = read_capped(response, MAX_TOKEN_BYTES)
            .await
            .map_err(|e| self.body_error(t, "token answer", e))?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            RegistryError::Rejected(format!(
                "{}: the token service answered with something other than a token",
                t.context()
            ))
        })?;
        let token = answer
            .token
            .filter(|s| !s.is_empty())
            .or(answer.access_token.filter(|s| !s.is_empty()))
            .ok_or_else(|| {
                RegistryError::Rejected(format!(
                    "{}: the token service's answer has no token",
                    t.context()
                ))
            })?;
        let lifetime = answer
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        // Give up the token a little early so it never expires in flight.
        let margin = (lifetime / 10).min(Duration::from_secs(5));
        self.state().tokens.insert(
            (t.registry.clone(), scope.to_string()),
            CachedToken {
                token: token.clone(),
                valid_until_ms: self
                    .clock
                    .now_ms()
                    .saturating_add(duration_ms(lifetime - margin)),
            },
        );
        Ok(token)
    }

    fn transport_error(&self, t: &Target, what: &str, e: &reqwest::Error) -> RegistryError {
        let why = if e.is_timeout() {
            format!("timed out after {:?}", self.config.timeout)
        } else if e.is_connect() {
            format!(
                "cannot connect: {}",
                causes(e).unwrap_or_else(|| "request error".to_string())
            )
        } else {
            causes(e).unwrap_or_else(|| "request error".to_string())
        };
        RegistryError::Unavailable(format!("{}: {what} failed: {why}", t.context()))
    }

    fn body_error(&self, t: &Target, what: &str, e: BodyError) -> RegistryError {
        match e {
            BodyError::TooLarge => RegistryError::Rejected(format!(
                "{}: the {what} is larger than expected",
                t.context()
            )),
            BodyError::Transport(e) => self.transport_error(t, what, &e),
        }
    }

    async fn send_once(
        &self,
        t: &Target,
        method: &Method,
        url: &str,
        auth: Option<&Auth>,
    ) -> Result<Response, RegistryError> {
        let counter = if *method == Method::HEAD {
            &self.counters.manifest_heads
        } else {
            &self.counters.manifest_gets
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut request = self
            .client
            .request(method.clone(), url)
            .header(ACCEPT, MANIFEST_ACCEPT);
        request = match auth {
            Some(Auth::Basic(c)) => request.basic_auth(&c.username, Some(&c.password)),
            Some(Auth::Bearer(token)) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(t, "manifest request", &e))?;
        if let Some(remaining) = response
            .headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
        {
            // Docker Hub writes `0;w=21600`: the count comes first.
            let count = remaining.split(';').next().unwrap_or_default().trim();
            if count == "0" {
                tracing::warn!(registry = %t.registry, ratelimit_remaining = remaining, "the registry's rate limit is used up");
            }
        }
        Ok(response)
    }

    /// Sends a manifest request, authenticating as the registry asks (once),
    /// and maps every answer but 2xx and 404 to an error.
    async fn manifest_request(
        &self,
        t: &Target,
        method: Method,
        reference: &str,
    ) -> Result<Response, RegistryError> {
        self.check_rate_limit(t)?;
        let url = format!("{}/v2/{}/manifests/{reference}", t.base, t.name);
        let auth = self.auth_up_front(t).await?;
        let sent_basic = matches!(auth, Some(Auth::Basic(_)));
        let mut response = self.send_once(t, &method, &url, auth.as_ref()).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let retry_auth = self
                .answer_challenge(t, response.headers(), sent_basic)
                .await?;
            response = self.send_once(t, &method, &url, Some(&retry_auth)).await?;
        }
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(response);
        }
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized(
                format!("{}: access refused (HTTP {})", t.context(), status.as_u16()),
            ),
            StatusCode::TOO_MANY_REQUESTS => self.rate_limited(t, response.headers()),
            s if s.is_server_error() => RegistryError::Unavailable(format!(
                "{}: the registry answered HTTP {}",
                t.context(),
                s.as_u16()
            )),
            s => RegistryError::Rejected(format!(
                "{}: the registry answered HTTP {}",
                t.context(),
                s.as_u16()
            )),
        })
    }

    /// Reads the 401's challenge, remembers it, and returns what to send on
    /// the one retry.
    async fn answer_challenge(
        &self,
        t: &Target,
        headers: &HeaderMap,
        sent_basic: bool,
    ) -> Result<Auth, RegistryError> {
        let challenges: Vec<Challenge> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let bearer = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("bearer"));
        let basic = challenges
            .iter()
            .find(|c| c.scheme.eq_ignore_ascii_case("basic"));
        if let Some(challenge) = bearer {
            let realm = challenge.param("realm").ok_or_else(|| {
                RegistryError::Unauthorized(format!(
                    "{}: the Bearer challenge has no realm",
                    t.context()
                ))
            })?;
            let service = challenge.param("service").map(str::to_string);
            let scope = challenge
                .param("scope")
                .map(str::to_string)
                .unwrap_or_else(|| format!("repository:{}:pull", t.name));
            {
                let mut state = self.state();
                state.auth.insert(
                    t.registry.clone(),
                    KnownAuth::Bearer {
                        realm: realm.to_string(),
                        service: service.clone(),
                    },
                );
                state
                    .scopes
                    .insert((t.registry.clone(), t.name.clone()), scope.clone());
                // Whatever token we hold for this scope was just refused.
                state.tokens.remove(&(t.registry.clone(), scope.clone()));
            }
            let token = self
                .fetch_token(t, realm, service.as_deref(), &scope)
                .await?;
            return Ok(Auth::Bearer(token));
        }
        if basic.is_some() {
            let cred = self.credential(t).ok_or_else(|| {
                RegistryError::Unauthorized(format!(
                    "{}: the registry requires a login and none is configured",
                    t.context()
                ))
            })?;
            if sent_basic {
                return Err(RegistryError::Unauthorized(format!(
                    "{}: the registry refused the configured credentials",
                    t.context()
                )));
            }
            self.state()
                .auth
                .insert(t.registry.clone(), KnownAuth::Basic);
            return Ok(Auth::Basic(cred.clone()));
        }
        Err(RegistryError::Unauthorized(format!(
            "{}: access refused (HTTP 401) without a usable challenge",
            t.context()
        )))
    }
}

#[async_trait]
impl Registry for OciRegistry {
    async fn resolve_tag(&self, repo: &Repository, tag: &str) -> Result<Digest, RegistryError> {
        let t = self.target(repo);
        // The tag goes into the URL path; reject anything that could escape it.
        validate_tag(tag).map_err(|e| RegistryError::Rejected(e.message))?;
        let head = self.manifest_request(&t, Method::HEAD, tag).await?;
        if head.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound(format!(
                "{}: no tag {tag:?}",
                t.context()
            )));
        }
        if let Some(value) = head.headers().get("docker-content-digest") {
            let text = value.to_str().unwrap_or_default().trim();
            return Digest::parse(text).map_err(|e| {
                RegistryError::Rejected(format!(
                    "{}: Docker-Content-Digest of tag {tag:?}: {}",
                    t.context(),
                    e.message
                ))
            });
        }
        // Without the header, the digest is by definition the sha256 of
        // the manifest exactly as served.
        let get = self.manifest_request(&t, Method::GET, tag).await?;
        if get.status() == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound(format!(
                "{}: no tag {tag:?}",
                t.context()
            )));
        }
        let body = read_capped(get, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| self.body_error(&t, "manifest", e))?;
        let hex = hex::encode(Sha256::digest(&body));
        Digest::parse(&format!("sha256:{hex}")).map_err(|e| RegistryError::Rejected(e.message))
    }

    async fn has_digest(&self, repo: &Repository, digest: &Digest) -> Result<bool, RegistryError> {
        let t = self.target(repo);
        let head = self
            .manifest_request(&t, Method::HEAD, digest.as_str())
            .await?;
        Ok(head.status() != StatusCode::NOT_FOUND)
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn ms_duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_capped(mut response: Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn host_of(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host_port.split(':').next().unwrap_or(host_port)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Scheme k=v, k="quoted, with commas", Other k=v` (RFC 7235):
/// values may be quoted strings with backslash escapes, and one header may
/// carry several challenges.
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && (chars[*i].is_whitespace() || chars[*i] == ',') {
            *i += 1;
        }
    };
    let is_token = |c: char| !c.is_whitespace() && !matches!(c, ',' | '=' | '"');
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && is_token(chars[i]) {
            i += 1;
        }
        if i == start {
            // A stray '=' or '"': skip it rather than loop forever.
            i += 1;
            continue;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        let followed_by_eq = j < chars.len() && chars[j] == '=';
        // A token68 credential (`Negotiate abc==`) ends in '=' padding
        // rather than carrying a value after it; it is not a parameter.
        let mut k = j;
        while k < chars.len() && chars[k] == '=' {
            k += 1;
        }
        let mut m = k;
        while m < chars.len() && chars[m] == ' ' {
            m += 1;
        }
        let token68 = followed_by_eq && (k - j > 1 || m >= chars.len() || chars[m] == ',');
        if token68 {
            i = k;
            continue;
        }
        if !followed_by_eq || out.is_empty() {
            out.push(Challenge {
                scheme: word,
                params: Vec::new(),
            });
            continue;
        }
        i = j + 1;
        while i < chars.len() && chars[i] == ' ' {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            i += 1; // the closing quote
        } else {
            while i < chars.len() && chars[i] != ',' && !chars[i].is_whitespace() {
                value.push(chars[i]);
                i += 1;
            }
        }
        if let Some(current) = out.last_mut() {
            current.params.push((word.to_ascii_lowercase(), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_commas_in_quotes() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("service"), Some("registry.example"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn several_challenges_spaces_escapes_and_tokens() {
        let c = parse_challenges(
            r#"Basic realm="Registry \"main\"" , Bearer realm = "http://h/t", error=insufficient_scope"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "Basic");
        assert_eq!(c[0].param("realm"), Some(r#"Registry "main""#));
        assert_eq!(c[1].scheme, "Bearer");
        assert_eq!(c[1].param("realm"), Some("http://h/t"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic")[0].scheme, "Basic");
        let c = parse_challenges(r#"Negotiate abc==, Basic realm="r""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].param("realm"), Some("r"));
        // Garbage does not panic or loop.
        parse_challenges(r#"="",,"unterminated"#);
        parse_challenges(r#"Bearer realm=""#);
    }

    #[test]
    fn targets() {
        let reg = OciRegistry::new(
            RegistryConfig {
                insecure: vec!["reg.internal:5000".into(), "plain.example".into()],
                ..RegistryConfig::default()
            },
            Arc::new(crate::ports::SystemClock),
        )
        .unwrap();
        let t = |s: &str| {
            let t = reg.target(&Repository::parse(s).unwrap());
            (t.registry, t.base, t.name)
        };
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            t("busybox"),
            s(
                "docker.io",
                "https://registry-1.docker.io",
                "library/busybox"
            )
        );
        assert_eq!(
            t("acme/engine"),
            s("docker.io", "https://registry-1.docker.io", "acme/engine")
        );
        assert_eq!(
            t("docker.io/busybox"),
            s(
                "docker.io",
                "https://registry-1.docker.io",
                "library/busybox"
            )
        );
        assert_eq!(
            t("127.0.0.1:55000/berth-test/app"),
            s(
                "127.0.0.1:55000",
                "http://127.0.0.1:55000",
                "berth-test/app"
            )
        );
        assert_eq!(t("127.1.2.3/a").1, "http://127.1.2.3");
        assert_eq!(t("localhost:5000/a").1, "http://localhost:5000");
        assert_eq!(t("localhost/a").1, "http://localhost");
        assert_eq!(t("reg.internal:5000/a").1, "http://reg.internal:5000");
        assert_eq!(t("reg.internal:5001/a").1, "https://reg.internal:5001");
        assert_eq!(t("plain.example:8080/a").1, "http://plain.example:8080");
        assert_eq!(
            t("registry.example/acme/x"),
            s("registry.example", "https://registry.example", "acme/x")
        );
        assert!(is_loopback("::1"));
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert!(reg.plain_http_allowed("[::1]:5000"));
    }

    #[test]
    fn credential_debug_hides_the_password() {
        let c = Credential {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
