//! The HTTP side of the CLI: one reqwest client with the CLI's headers,
//! and errors shaped for a person.

use std::fmt;
use std::time::Duration;

use berth_core::error_chain::describe;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::http::dto::{ErrorBody, ErrorDetail};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for a start that pulls a large image first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub enum CliError {
    /// The API's own error answer.
    Api(ErrorDetail),
    /// Nothing listens at the URL (or the host does not resolve).
    Unreachable {
        url: String,
    },
    TimedOut {
        url: String,
        after: Duration,
    },
    Other(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Api(e) => write!(f, "{} ({})", e.message, e.code),
            CliError::Unreachable { url } => {
                write!(f, "cannot reach berth at {url}: is `berth serve` running?")
            }
            CliError::TimedOut { url, after } => write!(
                f,
                "berth at {url} did not answer within {}s; the operation may still be running (see `berth ops`)",
                after.as_secs_f64()
            ),
            CliError::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CliError {}

impl CliError {
    /// Worth asking again: the server did not answer (it may be
    /// restarting), as opposed to answering no.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CliError::Unreachable { .. } | CliError::TimedOut { .. }
        )
    }
}

/// An answer with a 2xx status; the body is kept as text so `--output
/// json` can print exactly what the server wrote.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, CliError> {
        serde_json::from_str(&self.body).map_err(|e| {
            CliError::Other(format!(
                "unexpected answer from berth ({}): {e}",
                self.status
            ))
        })
    }
}

pub struct Client {
    http: reqwest::Client,
    /// May carry a path prefix (behind a proxy).
    base_url: reqwest::Url,
    /// The base as given, without a trailing slash, for messages.
    base: String,
}

impl Client {
    #[cfg(test)]
    pub fn new(base: &str, token: Option<&str>) -> Result<Self, CliError> {
        Client::with_ca(base, token, None)
    }

    /// Also trusts the PEM certificates in `ca_cert` for `https://`.
    pub fn with_ca(
        base: &str,
        token: Option<&str>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self, CliError> {
        let base_url = reqwest::Url::parse(base)
            .ok()
            .filter(|url| !url.cannot_be_a_base())
            .ok_or_else(|| {
                CliError::Other(format!(
                    "{base:?} is not a URL of the form http(s)://host[:port][/prefix]"
                ))
            })?;
        let mut headers = HeaderMap::new();
        headers.insert("x-berth-source", HeaderValue::from_static("cli"));
        // Names the person in pin history ("promoted_by"); the server
        // falls back to "cli" without it.
        if let Some(user) = std::env::var("USER").ok().filter(|u| !u.trim().is_empty()) {
            if let Ok(value) = HeaderValue::from_str(&format!("cli:{}", user.trim())) {
                headers.insert("x-berth-actor", value);
            }
        }
        if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                CliError::Other("the token contains characters a header cannot carry".into())
            })?;
            // Keeps it out of reqwest's debug output.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        // The timeout is set per request.
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                CliError::Other(format!("cannot read --ca-cert {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    CliError::Other(format!(
                        "--ca-cert {}: no PEM certificate in it",
                        path.display()
                    ))
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .default_headers(headers)
            .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| {
                CliError::Other(format!("cannot build the HTTP client: {}", describe(&e)))
            })?;
        Ok(Client {
            http,
            base_url,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// The URL of a path given as segments, each percent-encoded, after
    /// the base's own path.
    pub fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base_url.clone();
        // Cannot fail: `new` refused bases that cannot take a path.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    pub async fn get(&self, path: &[&str], query: &[(&str, String)]) -> Result<Answer, CliError> {
        self.send(Method::GET, path, query, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    /// A GET that must answer within `timeout`, for polling a local API
    /// where a slow answer means something is wrong.
    pub async fn get_within(&self, path: &[&str], timeout: Duration) -> Result<Answer, CliError> {
        self.send(Method::GET, path, &[], None::<&()>, timeout)
            .await
    }

    pub async fn delete(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<Answer, CliError> {
        self.send(Method::DELETE, path, query, None::<&()>, REQUEST_TIMEOUT)
            .await
    }

    pub async fn post<B: Serialize>(
        &self,
        path: &[&str],
        body: Option<&B>,
    ) -> Result<Answer, CliError> {
        self.send(Method::POST, path, &[], body, REQUEST_TIMEOUT)
            .await
    }

    pub async fn put<B: Serialize>(&self, path: &[&str], body: &B) -> Result<Answer, CliError> {
        self.send(Method::PUT, path, &[], Some(body), REQUEST_TIMEOUT)
            .await
    }

    /// Opens the change stream (`GET /v1/stream`) with `query`, after
    /// change `after` when given (`Last-Event-ID`). No request timeout: the
    /// answer goes on while the caller reads it.
    pub async fn stream(
        &self,
        query: &[(&str, String)],
        after: Option<i64>,
    ) -> Result<super::sse::SseReader, CliError> {
        let mut request = self
            .http
            .get(self.url(&["v1", "stream"]))
            .header("accept", "text/event-stream");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(after) = after {
            request = request.header("last-event-id", after.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&e, CONNECT_TIMEOUT))?;
        let status = response.status();
        if status.is_success() {
            return Ok(super::sse::SseReader::new(response));
        }
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => Err(CliError::Api(e.error)),
            Err(_) => Err(CliError::Other(format!(
                "{} answered {status} to GET /v1/stream",
                self.base
            ))),
        }
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Answer, CliError> {
        let mut request = self.http.request(method, self.url(path)).timeout(timeout);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&e, timeout))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| self.transport_error(&e, timeout))?;
        if status.is_success() {
            return Ok(Answer { status, body });
        }
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => Err(CliError::Api(e.error)),
            // Not berth's error shape: a proxy, or something else on the port.
            Err(_) => {
                let snippet: String = body.trim().chars().take(200).collect();
                Err(CliError::Other(format!(
                    "{} answered {status}: {}",
                    self.base,
                    super::format::clean(&snippet)
                )))
            }
        }
    }

    fn transport_error(&self, e: &reqwest::Error, timeout: Duration) -> CliError {
        let url = self.base.clone();
        if e.is_connect() && self.base_url.scheme() == "https" && is_tls_failure(e) {
            CliError::Other(format!(
                "cannot set up HTTPS with {url}: {} (trust berth's certificate with --ca-cert FILE)",
                describe(e)
            ))
        } else if e.is_connect() {
            CliError::Unreachable { url }
        } else if e.is_timeout() {
            CliError::TimedOut {
                url,
                after: timeout,
            }
        } else {
            CliError::Other(format!("request to {url} failed: {}", describe(e)))
        }
    }
}

/// A connection that reached a server but failed in the TLS handshake
/// (an untrusted certificate, a plain-HTTP server), as opposed to nothing
/// listening.
fn is_tls_failure(e: &reqwest::Error) -> bool {
    let text = describe(e).to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "invalidcontenttype",
        "corrupt message",
    ]
    .iter()
    .any(|w| text.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_urls_from_escaped_segments() {
        let c = Client::new("http://127.0.0.1:7878/", None).unwrap();
        assert_eq!(
            c.url(&["v1", "runtimes", "ws-1"]).as_str(),
            "http://127.0.0.1:7878/v1/runtimes/ws-1"
        );
        assert_eq!(
            c.url(&["v1", "templates", "a/b?c"]).as_str(),
            "http://127.0.0.1:7878/v1/templates/a%2Fb%3Fc"
        );
        assert_eq!(
            c.url(&["v1", "templates", "a b#%é"]).as_str(),
            "http://127.0.0.1:7878/v1/templates/a%20b%23%25%C3%A9"
        );
        for base in ["http://proxy.local/berth", "http://proxy.local/berth/"] {
            let prefixed = Client::new(base, Some("t")).unwrap();
            assert_eq!(
                prefixed.url(&["v1", "operations"]).as_str(),
                "http://proxy.local/berth/v1/operations"
            );
        }
    }

    /// Serves one canned HTTP answer on a loopback port and hands back
    /// the request it received (head and body).
    fn one_shot(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).unwrap();
                request.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .map_or(0, |v| v.parse::<usize>().unwrap());
                    if body.len() >= length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            sock.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        (url, handle)
    }

    #[tokio::test]
    async fn sends_the_cli_headers_and_an_encoded_query() {
        let (url, server) = one_shot(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"runtimes\":[]}",
        );
        let c = Client::new(&url, Some(" tok3n\n")).unwrap();
        let answer = c
            .get(
                &["v1", "runtimes"],
                &[
                    ("template", "a b&c".to_string()),
                    ("stale", "true".to_string()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "{\"runtimes\":[]}");
        let request = server.join().unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("get /v1/runtimes?template=a+b%26c&stale=true http/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nx-berth-source: cli\r\n"), "{request}");
        assert!(
            request.contains("\r\nauthorization: bearer tok3n\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn sends_json_bodies_and_no_token_when_none_is_given() {
        let (url, server) = one_shot(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        );
        let c = Client::new(&url, None).unwrap();
        let body = serde_json::json!({"id": "ws-1", "template": "engine"});
        let answer = c.post(&["v1", "runtimes"], Some(&body)).await.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        let request = server.join().unwrap();
        assert!(
            request.starts_with("POST /v1/runtimes HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            !request.to_ascii_lowercase().contains("authorization"),
            "{request}"
        );
        assert!(
            request.ends_with("\r\n\r\n{\"id\":\"ws-1\",\"template\":\"engine\"}"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn turns_the_api_error_body_into_an_api_error() {
        let body = r#"{"error":{"code":"runtime_not_found","message":"no runtime \"ws-9\""}}"#;
        let answer: &'static str = Box::leak(
            format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (url, server) = one_shot(answer);
        let err = Client::new(&url, None)
            .unwrap()
            .get(&["v1", "runtimes", "ws-9"], &[])
            .await
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(err.to_string(), "no runtime \"ws-9\" (runtime_not_found)");
    }

    #[tokio::test]
    async fn reports_an_answer_that_is_not_berths() {
        let (url, server) = one_shot(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 16\r\nconnection: close\r\n\r\n<h1>oops</h1>\n\n\n",
        );
        let err = Client::new(&url, None)
            .unwrap()
            .get(&["healthz"], &[])
            .await
            .unwrap_err();
        server.join().unwrap();
        assert_eq!(
            err.to_string(),
            format!("{url} answered 502 Bad Gateway: <h1>oops</h1>")
        );
    }

    #[tokio::test]
    async fn says_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = Client::new(&url, None)
            .unwrap()
            .get(&["v1", "templates"], &[])
            .await
            .unwrap_err();
        assert!(matches!(err, CliError::Unreachable { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot reach berth at {url}: is `berth serve` running?")
        );
    }

    #[test]
    fn rejects_a_token_a_header_cannot_carry() {
        assert!(Client::new("http://127.0.0.1:7878", Some("a\nb")).is_err());
    }

    #[test]
    fn rejects_a_base_that_is_not_a_url() {
        for base in ["127.0.0.1:7878", "mailto:ops@example.com"] {
            assert!(Client::new(base, None).is_err(), "{base}");
        }
    }

    #[test]
    fn formats_errors_for_a_person() {
        let api = CliError::Api(ErrorDetail {
            code: "runtime_not_found".into(),
            message: "no runtime \"ws-9\"".into(),
        });
        assert_eq!(api.to_string(), "no runtime \"ws-9\" (runtime_not_found)");
        let down = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
        };
        assert_eq!(
            down.to_string(),
            "cannot reach berth at http://127.0.0.1:1: is `berth serve` running?"
        );
    }
}
