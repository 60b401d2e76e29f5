//! HTTPS on the API: a self-signed test certificate made with the
//! `openssl` CLI, plain HTTP refused on the TLS port, a replaced
//! certificate picked up by new connections, the CLI with `--ca-cert`.

use crate::common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// A self-signed certificate for localhost and 127.0.0.1, written to
/// `dir/cert.pem` and `dir/key.pem`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            // webpki refuses a CA certificate as a server's own (openssl's
            // default for -x509 is CA:TRUE).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI runs (scripts/test-env.sh installs it)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// A client that trusts `ca` and nothing else; a new client is a new
/// connection.
fn trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Replaces a file the way a certificate manager does: written aside,
/// then renamed over the old one.
fn replace(from: &Path, to: &Path) {
    let aside = to.with_extension("new");
    std::fs::copy(from, &aside).unwrap();
    std::fs::rename(&aside, to).unwrap();
}

async fn healthz(client: &reqwest::Client, base: &str) -> Result<reqwest::StatusCode, String> {
    client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .map(|r| r.status())
        .map_err(|e| format!("{e:?}"))
}

/// `berth status` run as a child process (off the runtime's threads).
async fn status_cli(base: &str, extra: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["--api-url", base])
        .args(extra)
        .arg("status")
        .env_remove("BERTH_API_TOKEN")
        .env_remove("BERTH_CA_CERT");
    tokio::task::spawn_blocking(move || cmd.output().expect("berth binary runs"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_refuses_plain_http_and_picks_up_a_new_certificate() {
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(live.path());
    let first = tempfile::tempdir().unwrap();
    std::fs::copy(&cert, first.path().join("cert.pem")).unwrap();
    let first_ca = first.path().join("cert.pem");

    let t = TestServer::start_with(Options {
        toml: format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    let addr = t.server.as_ref().unwrap().addr;
    let base = format!("https://127.0.0.1:{}", addr.port());

    // HTTPS with the certificate trusted, by IP and by name.
    assert_eq!(
        healthz(&trusting(&first_ca), &base).await,
        Ok(reqwest::StatusCode::OK)
    );
    assert_eq!(
        healthz(
            &trusting(&first_ca),
            &format!("https://localhost:{}", addr.port())
        )
        .await,
        Ok(reqwest::StatusCode::OK)
    );
    // Not trusted: refused by the client.
    let stranger = tempfile::tempdir().unwrap();
    let (stranger_ca, _) = self_signed(stranger.path());
    assert!(healthz(&trusting(&stranger_ca), &base).await.is_err());

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer = healthz(&plain, &format!("http://127.0.0.1:{}", addr.port())).await;
    assert!(answer.is_err(), "plain HTTP answered: {answer:?}");
    let raw = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {}",
        String::from_utf8_lossy(&raw)
    );

    // A new certificate: new connections present it.
    let second = tempfile::tempdir().unwrap();
    let (second_cert, second_key) = self_signed(second.path());
    replace(&second_key, &key);
    replace(&second_cert, &cert);
    assert_eq!(
        healthz(&trusting(&second_cert), &base).await,
        Ok(reqwest::StatusCode::OK)
    );
    assert!(
        healthz(&trusting(&first_ca), &base).await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken new file keeps the certificate that works.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    assert_eq!(
        healthz(&trusting(&second_cert), &base).await,
        Ok(reqwest::StatusCode::OK)
    );
    replace(&second_cert, &cert);

    // The CLI over HTTPS.
    let second_ca = second_cert.display().to_string();
    let out = status_cli(&base, &["--ca-cert", &second_ca]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = status_cli(&base, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--ca-cert"), "{stderr}");

    // Graceful shutdown stops the TLS listener too.
    t.shutdown().await;
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn a_bad_certificate_fails_the_boot() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let args = berth::config::ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.path().join("data")),
        tls_cert: Some(dir.path().join("cert.pem")),
        tls_key: Some(dir.path().join("key.pem")),
        ..Default::default()
    };
    let config = berth::config::Config::from_toml(&args, "", "test").unwrap();
    let err = berth::app::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("cert.pem"), "{err}");
}

#[tokio::test]
async fn under_https_the_console_session_cookie_is_secure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let t = TestServer::start_with(Options {
        token: Some("tls-console-secret".into()),
        toml: format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    let port = t.server.as_ref().unwrap().addr.port();
    let pem = std::fs::read(&cert).unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = client
        .post(format!("https://127.0.0.1:{port}/ui/login"))
        .form(&[("token", "tls-console-secret")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("berth_session="), "{cookie}");
    assert!(cookie.contains("; HttpOnly; SameSite=Strict; "), "{cookie}");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    t.shutdown().await;
}
