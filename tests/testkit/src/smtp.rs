//! [`SmtpSink`]: a small SMTP server on loopback that accepts every message
//! and records it, for tests of what the node mails.
//!
//! It speaks the part of SMTP a plain client uses: `EHLO`/`HELO`, `MAIL`,
//! `RCPT`, `DATA`, `RSET`, `NOOP`, `QUIT` (no `STARTTLS`, no `AUTH`: a node
//! pointed at it has `starttls = false` and no username). Each connection
//! is served on its own thread; a message is recorded when its `DATA` ends,
//! before the `250` that accepts it. Dropping the sink stops it.
//!
//! ```no_run
//! let sink = isoflow_testkit::SmtpSink::start();
//! // ... `[smtp] host = "127.0.0.1", port = sink.port(), starttls = false` ...
//! assert!(sink.wait_for_count(1, std::time::Duration::from_secs(5)));
//! let mail = &sink.messages()[0];
//! assert!(mail.body().contains("failed"));
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most a message may be: a sender that goes on gets `552`.
const MAX_MESSAGE: usize = 10 << 20;

/// A loopback SMTP server that records what it is sent.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Mail>>,
    stopping: AtomicBool,
}

/// One message as it arrived: the envelope and the data (dot-unstuffed,
/// CRLF line ends as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// `MAIL FROM`'s address.
    pub from: String,
    /// Each `RCPT TO`'s address, in order.
    pub to: Vec<String>,
    /// Headers, a blank line, the body, as the client encoded them.
    pub data: String,
}

impl Mail {
    /// The first header called `name` (any case), unfolded. Encoded words
    /// (RFC 2047) are left as they are.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next().unwrap_or_default();
        let mut found: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                // A folded line continues the header before it.
                if let Some(value) = &mut found {
                    value.push_str(line);
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((key, value)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                found = Some(value.trim_start().to_owned());
            }
        }
        found.map(|v| v.trim_end().to_owned())
    }

    /// The body, decoded from its `Content-Transfer-Encoding` (7bit, 8bit,
    /// quoted-printable or base64), with `\n` line ends.
    pub fn body(&self) -> String {
        let body = self
            .data
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body);
        let encoding = self
            .header("content-transfer-encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = match encoding.as_str() {
            "quoted-printable" => quoted_printable(body),
            "base64" => base64(body),
            _ => body.as_bytes().to_vec(),
        };
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    }
}

impl SmtpSink {
    /// Starts the server on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be had.
    pub fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name("smtp-sink".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if accepting.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = accepting.clone();
                    std::thread::spawn(move || {
                        // A client that goes away mid-dialogue is its loss.
                        let _ = serve(stream, &shared);
                    });
                }
            })
            .expect("a thread");
        SmtpSink {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every message so far, in the order they were accepted.
    pub fn messages(&self) -> Vec<Mail> {
        lock(&self.shared.messages).clone()
    }

    /// Waits until `n` messages were accepted; false if `timeout` passed
    /// first.
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> bool {
        crate::poll_every(Duration::from_millis(10), timeout, || {
            lock(&self.shared.messages).len() >= n
        })
    }
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("addr", &self.addr)
            .field("messages", &lock(&self.shared.messages).len())
            .finish()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection's dialogue.
fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 isoflow-testkit ESMTP sink\r\n")?;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end();
        let verb = command
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-isoflow-testkit\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n",
            "HELO" => b"250 isoflow-testkit\r\n",
            "MAIL" => {
                from = Some(address(command));
                to.clear();
                b"250 OK\r\n"
            }
            "RCPT" if from.is_some() => {
                to.push(address(command));
                b"250 OK\r\n"
            }
            "RCPT" => b"503 MAIL first\r\n",
            "DATA" if to.is_empty() => b"503 RCPT first\r\n",
            "DATA" => {
                out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
                let Some(data) = read_data(&mut input)? else {
                    out.write_all(b"552 Message too large\r\n")?;
                    continue;
                };
                lock(&shared.messages).push(Mail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data,
                });
                b"250 OK queued\r\n"
            }
            "RSET" => {
                from = None;
                to.clear();
                b"250 OK\r\n"
            }
            "NOOP" => b"250 OK\r\n",
            "QUIT" => {
                out.write_all(b"221 Bye\r\n")?;
                return Ok(());
            }
            _ => b"502 Command not implemented\r\n",
        };
        out.write_all(reply)?;
    }
}

/// The address in `MAIL FROM:<a>` or `RCPT TO:<a> ...`.
fn address(command: &str) -> String {
    match (command.find('<'), command.find('>')) {
        (Some(start), Some(end)) if start < end => command[start + 1..end].to_owned(),
        _ => command
            .split_once(':')
            .map_or("", |(_, rest)| rest.trim())
            .to_owned(),
    }
}

/// The lines up to `.`, dot-unstuffed; `None` over [`MAX_MESSAGE`] (the
/// rest is read and dropped).
fn read_data(input: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut data = String::new();
    let mut too_large = false;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == ".\r\n" || line == ".\n" {
            break;
        }
        let line = line.strip_prefix('.').unwrap_or(&line);
        if data.len() + line.len() > MAX_MESSAGE {
            too_large = true;
        } else {
            data.push_str(line);
        }
    }
    // The CRLF before the final dot belongs to the terminator.
    if data.ends_with("\r\n") {
        data.truncate(data.len() - 2);
    }
    Ok((!too_large).then_some(data))
}

fn quoted_printable(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i + 1..];
        if bytes[i] != b'=' {
            out.push(bytes[i]);
            i += 1;
        } else if rest.starts_with(b"\r\n") {
            // A soft line break.
            i += 3;
        } else if rest.starts_with(b"\n") {
            i += 2;
        } else if let Some(byte) = rest
            .get(..2)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(b'=');
            i += 1;
        }
    }
    out
}

fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for sixbits in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | u32::from(sixbits);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).expect("masked to a byte"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_from_their_transfer_encoding() {
        assert_eq!(
            quoted_printable("caf=C3=A9 =\r\nau lait=3D"),
            "café au lait=".as_bytes()
        );
        assert_eq!(base64("aGVsbG8g\r\nd29ybGQ="), b"hello world");
        let mail = Mail {
            from: "a@b.c".into(),
            to: vec!["d@e.f".into()],
            data: "Subject: a long\r\n subject\r\nContent-Transfer-Encoding: base64\r\n\r\naGk="
                .into(),
        };
        assert_eq!(mail.header("subject").as_deref(), Some("a long subject"));
        assert_eq!(mail.body(), "hi");
    }
}
