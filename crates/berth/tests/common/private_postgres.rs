//! A PostgreSQL cluster of one test, on its own loopback port, that the
//! test may restart (the shared one of `scripts/test-env.sh` serves every
//! other test at once).

use std::path::PathBuf;

use super::required_env;

pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    /// Owned by `postgres` when the tests run as root (it refuses root).
    dir: tempfile::TempDir,
}

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        let bin = PathBuf::from(required_env("BERTH_TEST_PG_BIN"));
        let port = super::binary::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = PrivatePostgres { port, bin, dir };
        if is_root() {
            run(std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path()))
            .await;
        }
        let data = pg.data();
        pg.pg_ctl_like("initdb", |c| {
            c.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]);
        })
        .await;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            pg.dir.path().display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        pg.ctl(&["start"]).await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast`: every session is ended, the server stops
    /// and starts again; returns once it accepts connections.
    pub async fn restart(&self) {
        self.ctl(&["restart", "-m", "fast"]).await;
    }

    /// `pg_ctl stop -m fast`: ends every session and stops the server.
    pub async fn stop(&self) {
        self.ctl(&["stop", "-m", "fast"]).await;
    }

    /// Starts a stopped server again on the same port and data.
    pub async fn start_again(&self) {
        self.ctl(&["start"]).await;
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.dir.path().join("postgres.log");
        self.pg_ctl_like("pg_ctl", |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60"])
                .args(args);
        })
        .await;
    }

    /// Runs `program` of the server binaries and waits for its success.
    async fn pg_ctl_like(&self, program: &str, args: impl FnOnce(&mut std::process::Command)) {
        let mut cmd = self.command(program);
        args(&mut cmd);
        run(&mut cmd).await;
    }

    /// `program` of the server binaries, as `postgres` when root (the
    /// server refuses root), in the cluster's directory.
    fn command(&self, program: &str) -> std::process::Command {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        cmd.current_dir(self.dir.path());
        cmd
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

async fn run(cmd: &mut std::process::Command) {
    let shown = format!("{cmd:?}");
    let mut cmd =
        tokio::process::Command::from(std::mem::replace(cmd, std::process::Command::new("true")));
    let out = cmd
        .output()
        .await
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
