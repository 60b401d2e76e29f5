//! The real `berth` binary as a child process, for the tests that kill it,
//! fill its disk or restart its database.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::docker_lines;

/// `berth serve` with Redis at `redis_url`.
pub fn spawn_berth(data: &std::path::Path, owner: &str, port: u16, redis_url: &str) -> Child {
    berth_command(data, owner, port)
        .args(["--redis-url", redis_url])
        .spawn()
        .expect("berth binary runs")
}

/// `berth serve` on its own data dir, owner, network and port.
pub fn berth_command(data: &std::path::Path, owner: &str, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--owner", owner, "--network", owner])
        .args(["--job-claim-idle", "2s", "--reconcile-interval", "1s"])
        .env_remove("BERTH_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn remove_owner_containers(owner: &str) {
    let ids = docker_lines(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.berth.owner={owner}"),
    ]);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().map(String::as_str));
        docker_lines(&args);
    }
    docker_lines(&["network", "rm", owner]);
}

pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_healthy(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("berth did not come up on {base}");
}
