//! Real services for tests (feature `test-services`, and this crate's own unit tests): a
//! throwaway PostgreSQL cluster on a free 127.0.0.1 port, one per test process, started on first
//! use and gone when the process ends.
//!
//! The cluster runs under a small `sh` watchdog that stops PostgreSQL (fast shutdown) and
//! removes its folder once the test process has exited, however it exited: the Rust test harness
//! has no end-of-run hook. As root (CI) PostgreSQL runs as `nobody`, since it refuses to run as
//! root. `TUNA_TEST_PG_BIN` names the folder of `initdb`/`postgres` when they are not in
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package) or on `PATH`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// The unprivileged account services run as when the tests run as root.
const NOBODY: (u32, u32) = (65534, 65534);

/// A running PostgreSQL cluster (superuser `tuna`, trust authentication, 127.0.0.1 only).
pub struct PostgresCluster {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

fn running_as_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Runs `cmd` as `nobody` when we are root.
fn unprivileged(cmd: &mut Command) -> &mut Command {
    if running_as_root() {
        // std drops the supplementary groups when root sets a uid.
        cmd.uid(NOBODY.0).gid(NOBODY.1);
    }
    cmd
}

fn chown_to_nobody(path: &Path) {
    if running_as_root() {
        std::os::unix::fs::chown(path, Some(NOBODY.0), Some(NOBODY.1))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// The folder holding PostgreSQL's programs.
fn postgres_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("TUNA_TEST_PG_BIN") {
        return dir.into();
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    debian.sort();
    if let Some(newest) = debian.pop() {
        return newest;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin nor on PATH): \
         `apt-get install postgresql` (scripts/test.sh does), or set TUNA_TEST_PG_BIN"
    );
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl PostgresCluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> &'static PostgresCluster {
        static CLUSTER: OnceLock<PostgresCluster> = OnceLock::new();
        CLUSTER.get_or_init(PostgresCluster::start)
    }

    fn start() -> PostgresCluster {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("tuna-pg-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        chown_to_nobody(&dir);
        let data = dir.join("data");
        let out = unprivileged(
            Command::new(bin.join("initdb"))
                .args([
                    "-U",
                    "tuna",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data)
                .current_dir(&dir),
        )
        .output()
        .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = PostgresCluster {
            port: free_port(),
            dir,
            bin,
        };
        cluster.launch();
        cluster
    }

    /// Starts the server under its watchdog (see the module docs) and waits until it accepts
    /// connections.
    fn launch(&self) {
        let watchdog = r#"
            "$1/postgres" -D "$2/data" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=200 >"$2/postgres.log" 2>&1 &
            pg=$!
            echo $pg >"$2/postmaster.watch"
            while [ -d "/proc/$4" ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done
            kill -INT $pg 2>/dev/null
            wait $pg
            [ -d "/proc/$4" ] || rm -rf "$2"
        "#;
        // Never waited for: the watchdog outlives this process on purpose (it cleans up after it).
        #[allow(clippy::zombie_processes)]
        unprivileged(
            Command::new("sh")
                .args(["-c", watchdog, "sh"])
                .arg(&self.bin)
                .arg(&self.dir)
                .arg(self.port.to_string())
                .arg(std::process::id().to_string())
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0),
        )
        .spawn()
        .expect("starting postgres");
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://tuna@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database (each test gets its own).
    pub async fn fresh_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let mut admin = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connecting to the test cluster");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("creating a test database");
        self.url(&name)
    }
}

/// A fresh database on the shared test cluster.
pub async fn fresh_postgres_database() -> String {
    let cluster = tokio::task::spawn_blocking(PostgresCluster::shared)
        .await
        .expect("starting the test cluster");
    cluster.fresh_database().await
}
