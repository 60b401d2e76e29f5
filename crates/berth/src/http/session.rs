//! Browser sessions of the console, and the cross-site checks every
//! state-changing request goes through.
//!
//! A correct token typed into the login form becomes a session: a random id
//! in an `HttpOnly; SameSite=Strict` cookie (`Secure` under TLS) and a
//! per-session CSRF token the page sends back in `X-Berth-CSRF`. The token
//! itself is never kept by the browser. Sessions live in this process's
//! memory: a restart asks for the token again.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{header, HeaderMap, Method};

use super::roles::Role;

/// The session cookie's name.
pub const COOKIE: &str = "berth_session";
/// The header the console's script sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-berth-csrf";
/// A session ends this long after login, used or not.
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// Beyond this many live sessions the oldest is ended.
const MAX_SESSIONS: usize = 10_000;

/// What a session may do: the token it was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token's name: the actor of what the session does.
    pub name: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at_ms: i64,
}

/// The live sessions, by the SHA-256 of their id (a memory dump does not
/// give a usable cookie).
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<[u8; 32], Session>>,
    /// Cookies get `Secure`: the API is served over HTTPS.
    pub secure: bool,
}

impl Sessions {
    pub fn new(secure: bool) -> Sessions {
        Sessions {
            by_id: Mutex::default(),
            secure,
        }
    }

    /// Opens a session for a token; answers the cookie value and the session.
    pub fn open(&self, name: &str, role: Role, now_ms: i64) -> std::io::Result<(String, Session)> {
        let id = random_hex()?;
        let session = Session {
            name: name.to_string(),
            role,
            csrf: random_hex()?,
            expires_at_ms: now_ms + SESSION_TTL_MS,
        };
        let mut map = self.lock();
        map.retain(|_, s| s.expires_at_ms > now_ms);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at_ms)
                .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        map.insert(crate::config::sha256(id.as_bytes()), session.clone());
        Ok((id, session))
    }

    /// The live session of a cookie value.
    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let key = crate::config::sha256(id.as_bytes());
        let mut map = self.lock();
        match map.get(&key) {
            Some(s) if s.expires_at_ms > now_ms => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(&crate::config::sha256(id.as_bytes()));
    }

    /// The `Set-Cookie` value that stores a session in the browser.
    pub fn set_cookie(&self, id: &str) -> String {
        format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            SESSION_TTL_MS / 1000,
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes it.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves a consistent map.
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 32 random bytes from the kernel, as hex.
fn random_hex() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// Whether a method changes state (and so needs the cross-site checks).
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why a request is refused as cross-site, if it is. A browser says where
/// a request comes from in `Sec-Fetch-Site` (a page cannot forge it), else
/// in `Origin` (sent on every POST, PUT and DELETE), which must name the
/// `Host` the request was sent to. Requests with neither header (the CLI,
/// curl) pass.
pub fn cross_site(headers: &HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.to_str().unwrap_or("") {
            // `none`: the person typed the URL or used a bookmark.
            "same-origin" | "none" => None,
            other => Some(format!(
                "the browser says another origin sent it (Sec-Fetch-Site: {other})"
            )),
        };
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match authority {
        Some(a) if !host.is_empty() && a.eq_ignore_ascii_case(host) => None,
        _ => Some(format!(
            "it comes from origin {origin:?}, not from this server ({host})"
        )),
    }
}

/// Compares the CSRF token sent with the session's, in constant time.
pub fn csrf_matches(session: &Session, sent: Option<&str>) -> bool {
    sent.is_some_and(|s| super::constant_time_eq(s.as_bytes(), session.csrf.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_session_lives_until_it_expires_or_is_closed() {
        let sessions = Sessions::new(false);
        let (id, s) = sessions.open("ops", Role::Operator, 1_000).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.get(&id, 2_000), Some(s.clone()));
        assert_eq!(sessions.get("nope", 2_000), None);
        assert_eq!(sessions.get(&id, 1_000 + SESSION_TTL_MS), None);
        let (id, _) = sessions.open("ops", Role::Operator, 1_000).unwrap();
        sessions.close(&id);
        assert_eq!(sessions.get(&id, 2_000), None);
    }

    #[test]
    fn two_sessions_get_different_ids_and_csrf_tokens() {
        let sessions = Sessions::new(false);
        let (a, sa) = sessions.open("x", Role::Viewer, 0).unwrap();
        let (b, sb) = sessions.open("x", Role::Viewer, 0).unwrap();
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let plain = Sessions::new(false).set_cookie("abc");
        assert!(plain
            .starts_with("berth_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"));
        assert!(!plain.contains("Secure"));
        assert!(Sessions::new(true).set_cookie("abc").ends_with("; Secure"));
        assert!(Sessions::new(false).clear_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; berth_session=xyz; b=2")]);
        assert_eq!(session_cookie(&h), Some("xyz"));
        assert_eq!(
            session_cookie(&headers(&[("cookie", "berth_session=")])),
            None
        );
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let same = headers(&[
            ("host", "127.0.0.1:7878"),
            ("origin", "http://127.0.0.1:7878"),
        ]);
        assert_eq!(cross_site(&same), None);
        let other_port = headers(&[
            ("host", "127.0.0.1:7878"),
            ("origin", "http://127.0.0.1:9999"),
        ]);
        assert!(cross_site(&other_port).is_some());
        let null = headers(&[("host", "127.0.0.1:7878"), ("origin", "null")]);
        assert!(cross_site(&null).is_some());
        let fetch_site = headers(&[("host", "127.0.0.1:7878"), ("sec-fetch-site", "same-site")]);
        assert!(cross_site(&fetch_site).is_some());
        let own = headers(&[
            ("host", "127.0.0.1:7878"),
            ("sec-fetch-site", "same-origin"),
            ("origin", "null"),
        ]);
        assert_eq!(cross_site(&own), None);
        // The CLI sends neither header.
        assert_eq!(cross_site(&headers(&[("host", "127.0.0.1:7878")])), None);
    }

    #[test]
    fn csrf_must_match_exactly() {
        let s = Session {
            name: "x".into(),
            role: Role::Admin,
            csrf: "abc".into(),
            expires_at_ms: 1,
        };
        assert!(csrf_matches(&s, Some("abc")));
        assert!(!csrf_matches(&s, Some("abd")));
        assert!(!csrf_matches(&s, None));
    }
}
