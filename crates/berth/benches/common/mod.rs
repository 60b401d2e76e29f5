//! The real `berth serve` binary for the benchmarks that measure it over
//! HTTP: started on a free loopback port with its own owner and network,
//! and on drop killed with every container and network of that owner (and
//! of `<owner>-raw`, where a benchmark runs raw Docker side by side).

#![allow(dead_code)]

pub mod seed;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct BerthProcess {
    pub child: Child,
    pub base: String,
    pub owner: String,
}

impl BerthProcess {
    /// Starts `berth serve` on `data_dir` with owner `<prefix>-<random>`
    /// and waits until `/healthz` answers (at most 30 s).
    pub async fn start(prefix: &str, data_dir: &Path, envs: &[(&str, String)]) -> BerthProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let owner = format!(
            "{prefix}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[22..]
        );
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--owner",
                &owner,
                "--network",
                &owner,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .env("BERTH_LOG", "warn")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("berth binary");
        let process = BerthProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            owner,
        };
        let http = reqwest::Client::new();
        for _ in 0..600 {
            if http
                .get(format!("{}/healthz", process.base))
                .send()
                .await
                .is_ok()
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("berth serve did not answer /healthz within 30 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BerthProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for owner in [self.owner.clone(), format!("{}-raw", self.owner)] {
            let ids = Command::new("docker")
                .args(["ps", "-aq", "--filter"])
                .arg(format!("label=io.berth.owner={owner}"))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
            let _ = Command::new("docker")
                .args(["network", "rm", &owner])
                .output();
        }
    }
}
