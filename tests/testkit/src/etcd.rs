//! A real etcd server for multi-process cluster tests: Debian's
//! `etcd-server` (etcd 3.4), one member on loopback, its data and log in a
//! temporary directory, with authentication on, as in production.
//!
//! ```no_run
//! use isoflow_testkit::Etcd;
//!
//! let mut etcd = Etcd::start()?;
//! // ... put etcd.node_config() in the nodes' [etcd] section ...
//! etcd.kill(); // etcd goes away, as in a crash
//! etcd.restart()?; // same ports, same data
//! # anyhow::Ok(())
//! ```
//!
//! Users (made with `etcdctl` before `auth enable`): `root`, and
//! [`USER`] (`isoflow`), whose role may read and write every key that
//! starts with [`PREFIX`] (`/isoflow`, so `/isoflow-test/...` too).
//! [`Etcd::start_tls`] also serves clients over TLS only and requires a
//! client certificate signed by the test's CA.
//!
//! Dropping an [`Etcd`] kills (SIGKILL) and reaps the server, then removes
//! its directory. [`request`] is a tiny HTTP/1.0 client over a std
//! `TcpStream`, for `/health` and the v3 JSON gateway (`/v3/kv/put`, ...);
//! [`Etcd::request`] sends the gateway calls as `root`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::free_port;
use crate::tls::{Ca, Files};

/// Where Debian's `etcd-server` puts the binary.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// Where Debian's `etcd-client` puts `etcdctl`.
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

/// The user the nodes log in as.
pub const USER: &str = "isoflow";

/// The keys [`USER`] may read and write: every key starting with this.
pub const PREFIX: &str = "/isoflow";

/// The common name of the nodes' client certificate with TLS: not the name
/// of an etcd user, since etcd takes a certificate's common name as the
/// user of a request that carries no token.
pub const NODE_CERT_NAME: &str = "isoflow-node";

/// How long [`Etcd::start`] and [`Etcd::restart`] wait for `/health`.
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);

/// How often the health wait asks again.
const HEALTH_POLL: Duration = Duration::from_millis(25);

/// The member name, also in `--initial-cluster`.
const NAME: &str = "isoflow-test";

/// How many lines of the log an error quotes.
const LOG_TAIL: usize = 20;

/// A one-member etcd on loopback. Dropping it kills the server and removes
/// its data.
pub struct Etcd {
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP `/health` (`--listen-metrics-urls`), TLS or not.
    metrics_port: u16,
    child: Option<Child>,
    /// Holds `data/` (the data dir), `etcd.log`, the password file and the
    /// certificates; removed when dropped, after the server is gone (see
    /// `Drop`).
    dir: TempDir,
    root_password: String,
    password: String,
    tls: Option<Tls>,
    /// Users and roles are made once, on the first start.
    auth_enabled: bool,
}

/// The files of an etcd with TLS.
#[derive(Debug, Clone)]
struct Tls {
    ca: PathBuf,
    server: Files,
    /// `etcdctl`'s, and `request`'s if it spoke TLS.
    admin: Files,
    /// The nodes' ([`NODE_CERT_NAME`]).
    node: Files,
}

/// A node's TLS files for an etcd with TLS: `etcd.ca`, `etcd.cert`,
/// `etcd.key`.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Etcd {
    /// Starts etcd on free loopback ports (client, peer and metrics) with
    /// a fresh data dir, waits until `/health` says it is healthy (at most
    /// 20 s), then makes the users and turns authentication on. An error
    /// quotes the end of etcd's log.
    pub fn start() -> Result<Etcd> {
        Etcd::start_with(None)
    }

    /// [`Etcd::start`], serving clients over TLS only (a server certificate
    /// for 127.0.0.1 signed by `ca`) and requiring a client certificate
    /// signed by `ca` (`--client-cert-auth`). [`Etcd::client_files`] has
    /// one for the nodes.
    pub fn start_tls(ca: &Ca) -> Result<Etcd> {
        Etcd::start_with(Some(ca))
    }

    fn start_with(ca: Option<&Ca>) -> Result<Etcd> {
        for bin in [ETCD_BIN, ETCDCTL_BIN] {
            if !Path::new(bin).exists() {
                bail!("etcd is not installed ({bin} is missing): run deploy/scripts/setup.sh");
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("isoflow-etcd-")
            .tempdir()
            .context("creating etcd's temporary directory")?;
        let tls = ca.map(|ca| Tls {
            ca: ca.write(dir.path(), "etcd-ca"),
            server: ca
                .server(&["127.0.0.1", "localhost"])
                .write(dir.path(), "etcd-server"),
            admin: ca.client("etcd-admin").write(dir.path(), "etcd-admin"),
            node: ca.client(NODE_CERT_NAME).write(dir.path(), "etcd-node"),
        });
        let (client_port, peer_port, metrics_port) = three_free_ports();
        let mut etcd = Etcd {
            client_port,
            peer_port,
            metrics_port,
            child: None,
            dir,
            root_password: secret("root"),
            password: secret(USER),
            tls,
            auth_enabled: false,
        };
        std::fs::write(etcd.password_file(), &etcd.password)
            .context("writing the password file")?;
        etcd.launch()?;
        Ok(etcd)
    }

    /// `http://127.0.0.1:<client port>` (`https://` with TLS), for clients.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The user nodes log in as: [`USER`].
    pub fn user(&self) -> &str {
        USER
    }

    /// [`USER`]'s password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A file holding [`USER`]'s password, for `etcd.password_file`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// The CA and a client certificate for the nodes (common name
    /// [`NODE_CERT_NAME`]), when etcd uses TLS.
    pub fn client_files(&self) -> Option<ClientFiles> {
        self.tls.as_ref().map(|tls| ClientFiles {
            ca: tls.ca.clone(),
            cert: tls.node.cert.clone(),
            key: tls.node.key.clone(),
        })
    }

    /// The lines of a node's `[etcd]` section that reach this etcd as
    /// [`USER`]: `endpoints`, `user`, `password_file`, and with TLS `ca`,
    /// `cert` and `key`.
    pub fn node_config(&self) -> String {
        let mut lines = format!(
            "endpoints = [\"{}\"]\nuser = \"{USER}\"\npassword_file = \"{}\"\n",
            self.endpoint(),
            self.password_file().display()
        );
        if let Some(files) = self.client_files() {
            lines.push_str(&format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            ));
        }
        lines
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// etcd's `--data-dir`; it survives [`Etcd::kill`] and
    /// [`Etcd::restart`].
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's stdout and stderr, every run appended.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read(self.log_path()).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// True while the server process is alive (an exited one is reaped).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    false
                }
            },
        }
    }

    /// SIGKILL, as a crash would, and reaps it: when this returns, the
    /// ports no longer answer. Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only when it exited meanwhile; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data dir (killing it first
    /// if it still runs) and waits until it is healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }

    /// [`request`] to this server's client port; every path but `/health`
    /// as `root` (a token from `/v3/auth/authenticate` in the
    /// `Authorization` header). Not with TLS: the gateway is then behind it.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        use std::io::{Error, ErrorKind};

        if self.tls.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "etcd serves its JSON gateway over TLS only: request() speaks plain HTTP",
            ));
        }
        if path == "/health" || !self.auth_enabled {
            return request(self.client_port, method, path, body, None);
        }
        let login = format!(
            "{{\"name\":\"root\",\"password\":\"{}\"}}",
            self.root_password
        );
        let (status, text) = request(
            self.client_port,
            "POST",
            "/v3/auth/authenticate",
            login.as_bytes(),
            None,
        )?;
        let token = text
            .split("\"token\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .filter(|_| status == 200)
            .ok_or_else(|| Error::other(format!("etcd refused root's login: {status} {text}")))?;
        request(self.client_port, method, path, body, Some(token))
    }

    /// Spawns etcd and waits for `/health`; on failure the child is killed.
    fn launch(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log's handle")?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(ETCD_BIN);
        clear_env(&mut command);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.cert)
                .arg("--key-file")
                .arg(&tls.server.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        command
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", self.metrics_port))
            .arg("--name")
            .arg(NAME)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("{NAME}={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {ETCD_BIN}"))?;
        self.child = Some(child);
        let ready = self.wait_healthy().and_then(|()| self.enable_auth());
        if let Err(e) = ready {
            self.kill();
            return Err(e);
        }
        Ok(())
    }

    /// Once: `root` (with etcd's root role), [`USER`] with a role that may
    /// read and write under [`PREFIX`], then `auth enable`. The data dir
    /// keeps them.
    fn enable_auth(&mut self) -> Result<()> {
        if self.auth_enabled {
            return Ok(());
        }
        let steps: [(&[&str], Option<&str>); 8] = [
            (
                &["user", "add", "root", "--interactive=false"],
                Some(self.root_password.as_str()),
            ),
            (&["role", "add", "root"], None),
            (&["user", "grant-role", "root", "root"], None),
            (
                &["user", "add", USER, "--interactive=false"],
                Some(self.password.as_str()),
            ),
            (&["role", "add", USER], None),
            (
                &[
                    "role",
                    "grant-permission",
                    USER,
                    "readwrite",
                    "--prefix=true",
                    PREFIX,
                ],
                None,
            ),
            (&["user", "grant-role", USER, USER], None),
            (&["auth", "enable"], None),
        ];
        for (args, stdin) in steps {
            self.etcdctl(args, stdin)?;
        }
        self.auth_enabled = true;
        Ok(())
    }

    /// Runs `etcdctl` against this server (before `auth enable`: no user
    /// needed); an error quotes its output.
    fn etcdctl(&self, args: &[&str], stdin: Option<&str>) -> Result<()> {
        let mut command = Command::new(ETCDCTL_BIN);
        clear_env(&mut command);
        command
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.endpoint())
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=10s");
        if let Some(tls) = &self.tls {
            command
                .arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.admin.cert)
                .arg("--key")
                .arg(&tls.admin.key);
        }
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {ETCDCTL_BIN}"))?;
        // Dropped at once either way: etcdctl sees the end of its input.
        let input = child.stdin.take();
        if let (Some(mut input), Some(text)) = (input, stdin) {
            input
                .write_all(format!("{text}\n").as_bytes())
                .context("writing to etcdctl")?;
        }
        let output = child.wait_with_output().context("waiting for etcdctl")?;
        if !output.status.success() {
            bail!(
                "etcdctl {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + HEALTHY_WITHIN;
        loop {
            let last = match request(self.metrics_port, "GET", "/health", b"", None) {
                Ok((200, body)) if body.contains("\"health\":\"true\"") => return Ok(()),
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            let exited = match &mut self.child {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                bail!(
                    "etcd on port {} exited before it was healthy ({status}); last lines of {}:\n{}",
                    self.client_port,
                    self.log_path().display(),
                    self.log_tail(LOG_TAIL)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd on port {} was not healthy within {:?} (last /health: {last}); last lines of {}:\n{}",
                    self.client_port,
                    started.elapsed(),
                    self.log_path().display(),
                    self.log_tail(LOG_TAIL)
                );
            }
            std::thread::sleep(HEALTH_POLL);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // The server goes before its directory does (fields drop after this).
        self.kill();
    }
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoint", &self.endpoint())
            .field("peer_port", &self.peer_port)
            .field("metrics_port", &self.metrics_port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Three distinct ports that were free a moment ago.
fn three_free_ports() -> (u16, u16, u16) {
    let mut ports = Vec::with_capacity(3);
    while ports.len() < 3 {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    (ports[0], ports[1], ports[2])
}

/// etcd and etcdctl read ETCD_* and ETCDCTL_* variables as flags: none of
/// the test's own environment reaches them.
fn clear_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD") {
            command.env_remove(key);
        }
    }
}

/// A password no other test run shares.
fn secret(user: &str) -> String {
    let mut bytes = [0u8; 12];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !random {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{user}-{hex}")
}

/// One HTTP/1.0 request to `127.0.0.1:port`: `body` is sent as
/// `application/json` when it is not empty, `token` as the `Authorization`
/// header etcd's gateway reads. Returns the status and the body (invalid
/// UTF-8 replaced). Connecting waits at most 500 ms, reading and writing at
/// most 5 s each.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: {token}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    // HTTP/1.0: the server closes the connection after the response.
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no end of the response's head"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidData,
                format!("no status in {:?}", head.lines().next().unwrap_or_default()),
            )
        })?;
    Ok((status, body.to_owned()))
}
