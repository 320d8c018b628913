//! A real etcd server for multi-process cluster tests: Debian's
//! `etcd-server` (etcd 3.4), one member on loopback, its data and log in a
//! temporary directory.
//!
//! ```no_run
//! use isoflow_testkit::Etcd;
//!
//! let mut etcd = Etcd::start()?;
//! // ... point the nodes at etcd.endpoint() ...
//! etcd.kill(); // etcd goes away, as in a crash
//! etcd.restart()?; // same ports, same data
//! # anyhow::Ok(())
//! ```
//!
//! Dropping an [`Etcd`] kills (SIGKILL) and reaps the server, then removes
//! its directory. [`request`] is a tiny HTTP/1.0 client over a std
//! `TcpStream`, for `/health` and the v3 JSON gateway (`/v3/kv/put`, ...).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::free_port;

/// Where Debian's `etcd-server` puts the binary.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

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
    child: Option<Child>,
    /// Holds `data/` (the data dir) and `etcd.log`; removed when dropped,
    /// after the server is gone (see `Drop`).
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd on two free loopback ports (client and peer) with a
    /// fresh data dir, and waits until `/health` says it is healthy (at
    /// most 20 s). An error quotes the end of etcd's log.
    pub fn start() -> Result<Etcd> {
        if !Path::new(ETCD_BIN).exists() {
            bail!("etcd is not installed ({ETCD_BIN} is missing): run deploy/scripts/setup.sh");
        }
        let dir = tempfile::Builder::new()
            .prefix("isoflow-etcd-")
            .tempdir()
            .context("creating etcd's temporary directory")?;
        let (client_port, peer_port) = two_free_ports();
        let mut etcd = Etcd {
            client_port,
            peer_port,
            child: None,
            dir,
        };
        etcd.launch()?;
        Ok(etcd)
    }

    /// `http://127.0.0.1:<client port>`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
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

    /// [`request`] to this server's client port.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        request(self.client_port, method, path, body)
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
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(ETCD_BIN);
        // etcd reads ETCD_* variables as flags: none of the test's own
        // environment reaches it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        command
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
        if let Err(e) = self.wait_healthy() {
            self.kill();
            return Err(e);
        }
        Ok(())
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + HEALTHY_WITHIN;
        loop {
            let last = match self.request("GET", "/health", b"") {
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
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Two distinct ports that were free a moment ago.
fn two_free_ports() -> (u16, u16) {
    let client = free_port();
    loop {
        let peer = free_port();
        if peer != client {
            return (client, peer);
        }
    }
}

/// One HTTP/1.0 request to `127.0.0.1:port`: `body` is sent as
/// `application/json` when it is not empty. Returns the status and the
/// body (invalid UTF-8 replaced). Connecting waits at most 500 ms, reading
/// and writing at most 5 s each.
pub fn request(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
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
