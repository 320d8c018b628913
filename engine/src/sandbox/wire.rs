//! The node's end of a sandbox process's socket: frames sent and received
//! without blocking, each against a deadline, driven either by a thread
//! that may wait ([`send_blocking`], [`receive_blocking`]) or by a tokio
//! task ([`send_async`], [`receive_async`]), which waits on the runtime's
//! reactor: a step whose caller is async then costs two thread wake-ups,
//! one each way, and no hand-off to another thread.
//!
//! Deadlines, because a process that ran customer code may be hostile:
//! a frame must start arriving by its deadline and then arrive whole within
//! [`transfer`] of its largest allowed size (so trickling an answer a byte
//! at a time is cut off as surely as never answering), and a frame sent
//! must be taken within [`transfer`] of its size whatever the reader's
//! pace (a blocking write could not promise that: a Unix socket gives
//! every buffer it allocates during one write the whole time-out again).

use std::io::{self, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use isoflow_sandbox::protocol::{self, Frame};
use tokio::io::unix::AsyncFd;

/// How long a frame may take beyond what its size explains.
const PROGRESS: Duration = Duration::from_secs(10);

/// How long a frame of `len` bytes may take to cross once it has started:
/// [`PROGRESS`] plus the time its bytes take at a rate no honest process is
/// slower than (they send and read at memory speed).
pub(crate) fn transfer(len: u64) -> Duration {
    const MIN_RATE: u64 = 64 << 20;
    PROGRESS + Duration::from_millis(len.saturating_mul(1000) / MIN_RATE)
}

/// Why no frame came.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Nothing by the deadline for its first byte.
    NoAnswer,
    /// The socket closed or broke.
    Closed,
    /// A frame too large, malformed, or so slow that it cannot be honest.
    Misbehaved(String),
}

/// A frame being written: what is left of its slices.
pub(crate) struct Outgoing<'a> {
    slices: Vec<IoSlice<'a>>,
    next: usize,
    len: u64,
}

impl<'a> Outgoing<'a> {
    pub fn new(slices: &[&'a [u8]]) -> Outgoing<'a> {
        Outgoing {
            slices: slices.iter().map(|s| IoSlice::new(s)).collect(),
            next: 0,
            len: slices.iter().map(|s| s.len() as u64).sum(),
        }
    }

    /// When the whole frame must have been taken, counted from now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + transfer(self.len)
    }

    /// Writes what the socket takes: `true` once all of it is written,
    /// `false` when the socket would block.
    fn advance(&mut self, socket: &UnixStream) -> io::Result<bool> {
        while self.next < self.slices.len() {
            match (&mut &*socket).write_vectored(&self.slices[self.next..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    while n > 0 {
                        let first = &mut self.slices[self.next];
                        if n >= first.len() {
                            n -= first.len();
                            self.next += 1;
                        } else {
                            first.advance(n);
                            n = 0;
                        }
                    }
                    while self.next < self.slices.len() && self.slices[self.next].is_empty() {
                        self.next += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// A frame being read: the header (and whatever came with it) in
/// `staging`, then the meta and body in `whole`.
pub(crate) struct Incoming {
    first_by: Instant,
    all_by: Option<Instant>,
    budget: Duration,
    limit: u64,
    staging: Vec<u8>,
    header: Option<protocol::Header>,
    whole: Vec<u8>,
}

impl Incoming {
    /// A frame of at most `limit` bytes whose first byte is due by `first_by`.
    pub fn new(first_by: Instant, limit: u64) -> Incoming {
        Incoming {
            first_by,
            all_by: None,
            budget: transfer(limit),
            limit,
            staging: Vec::new(),
            header: None,
            whole: Vec::new(),
        }
    }

    fn deadline(&self) -> Instant {
        self.all_by.unwrap_or(self.first_by)
    }

    fn timed_out(&self) -> Received {
        if self.all_by.is_some() {
            Received::Misbehaved("its answer stalled".to_owned())
        } else {
            Received::NoAnswer
        }
    }

    /// Reads what the socket has: the frame once it is whole, `None` while
    /// more is to come.
    fn advance(&mut self, fd: RawFd) -> Result<Option<Frame>, Received> {
        loop {
            if let Some(header) = self.header {
                if self.whole.len() == header.meta_len + header.body_len {
                    let mut meta = std::mem::take(&mut self.whole);
                    let body = meta.split_off(header.meta_len);
                    return Ok(Some(Frame {
                        tag: header.tag,
                        meta,
                        body,
                    }));
                }
                let left = self.whole.capacity() - self.whole.len();
                let Some(n) = recv(fd, &mut self.whole.spare_capacity_mut()[..left])? else {
                    return Ok(None);
                };
                // SAFETY: recv initialised `n` more bytes of the spare capacity.
                unsafe { self.whole.set_len(self.whole.len() + n) };
                continue;
            }
            if self.staging.capacity() == 0 {
                self.staging.reserve_exact(64 << 10);
            }
            let Some(n) = recv(fd, self.staging.spare_capacity_mut())? else {
                return Ok(None);
            };
            // SAFETY: recv initialised `n` more bytes of the spare capacity.
            unsafe { self.staging.set_len(self.staging.len() + n) };
            if self.all_by.is_none() {
                self.all_by = Some(Instant::now() + self.budget);
            }
            if self.staging.len() < protocol::HEADER {
                continue;
            }
            let bytes: &[u8; protocol::HEADER] = self.staging[..protocol::HEADER]
                .try_into()
                .expect("the header's length");
            let header = protocol::decode_header(bytes, self.limit)
                .map_err(|e| Received::Misbehaved(e.to_string()))?;
            self.whole
                .try_reserve_exact(header.meta_len + header.body_len)
                .map_err(|_| Received::Misbehaved("an answer larger than memory".to_owned()))?;
            let extra = &self.staging[protocol::HEADER..];
            if extra.len() > self.whole.capacity() {
                return Err(Received::Misbehaved("more than its frame".to_owned()));
            }
            self.whole.extend_from_slice(extra);
            self.staging = Vec::new();
            self.header = Some(header);
        }
    }
}

/// One non-blocking read into `into`: `None` if nothing is there yet.
fn recv(fd: RawFd, into: &mut [MaybeUninit<u8>]) -> Result<Option<usize>, Received> {
    loop {
        // SAFETY: recv writes at most `into.len()` bytes into memory `into`
        // owns; writing to uninitialised bytes is what MaybeUninit is for.
        let n = unsafe { libc::recv(fd, into.as_mut_ptr().cast(), into.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            return Ok(Some(n as usize));
        }
        if n == 0 {
            return Err(Received::Closed);
        }
        match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => {}
            _ => return Err(Received::Closed),
        }
    }
}

/// Waits until `fd` is ready for `events` or `deadline` passes (`false`).
fn wait_for(fd: RawFd, events: libc::c_short, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Past the deadline, one look that does not wait: what is there
        // already still counts (a spare's Hello, sent long before anyone
        // asked for it).
        let ms = if left.is_zero() {
            0
        } else {
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
        };
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one pollfd for a descriptor the caller owns.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 if ms == 0 => return Ok(false),
            0 => {}
            n if n > 0 => return Ok(true),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
}

/// Writes `out` to the (non-blocking) socket by `deadline`, waiting on this
/// thread.
pub(crate) fn send_blocking(
    socket: &UnixStream,
    out: &mut Outgoing<'_>,
    deadline: Instant,
) -> io::Result<()> {
    while !out.advance(socket)? {
        if !wait_for(socket.as_raw_fd(), libc::POLLOUT, deadline)? {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
    Ok(())
}

/// Reads a frame from the (non-blocking) socket, waiting on this thread.
pub(crate) fn receive_blocking(
    socket: &UnixStream,
    mut incoming: Incoming,
) -> Result<Frame, Received> {
    let fd = socket.as_raw_fd();
    // Waits first: the frame is only ever asked for before it can be there.
    loop {
        match wait_for(fd, libc::POLLIN, incoming.deadline()) {
            Ok(true) => {}
            Ok(false) => return Err(incoming.timed_out()),
            Err(_) => return Err(Received::Closed),
        }
        if let Some(frame) = incoming.advance(fd)? {
            return Ok(frame);
        }
    }
}

/// A socket's descriptor, borrowed for one step's [`AsyncFd`]: registering
/// it with the reactor of whichever runtime runs the step, and only for as
/// long as the step, keeps processes free of any one runtime.
pub(crate) struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A socket registered with a tokio runtime's reactor, for as long as the
/// borrow of the socket lasts.
pub(crate) struct Registered<'a> {
    fd: AsyncFd<Borrowed>,
    _socket: std::marker::PhantomData<&'a UnixStream>,
}

/// Registers `socket` with the current tokio runtime's reactor.
pub(crate) fn register(socket: &UnixStream) -> io::Result<Registered<'_>> {
    // SAFETY: the descriptor belongs to `socket`, which the returned value
    // borrows: it stays open and the same for the registration's lifetime.
    let fd = unsafe { AsyncFd::register(Borrowed(socket.as_raw_fd())) }.map_err(io::Error::from)?;
    Ok(Registered {
        fd,
        _socket: std::marker::PhantomData,
    })
}

/// [`send_blocking`] for a tokio task.
pub(crate) async fn send_async(
    socket: &UnixStream,
    registered: &Registered<'_>,
    out: &mut Outgoing<'_>,
    deadline: Instant,
) -> io::Result<()> {
    loop {
        let ready = tokio::time::timeout_at(deadline.into(), registered.fd.writable()).await;
        let mut guard = match ready {
            Ok(guard) => guard?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        if out.advance(socket)? {
            return Ok(());
        }
        guard.clear_ready();
    }
}

/// [`receive_blocking`] for a tokio task.
pub(crate) async fn receive_async(
    registered: &Registered<'_>,
    mut incoming: Incoming,
) -> Result<Frame, Received> {
    loop {
        let ready =
            tokio::time::timeout_at(incoming.deadline().into(), registered.fd.readable()).await;
        let mut guard = match ready {
            Ok(Ok(guard)) => guard,
            Ok(Err(_)) => return Err(Received::Closed),
            Err(_) => {
                // Past the deadline, what is there already still counts:
                // the reactor may not have seen it yet (a socket
                // registered just now, a spare's Hello sent long ago).
                return match incoming.advance(registered.fd.get_ref().0)? {
                    Some(frame) => Ok(frame),
                    None => Err(incoming.timed_out()),
                };
            }
        };
        if let Some(frame) = incoming.advance(registered.fd.get_ref().0)? {
            return Ok(frame);
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use isoflow_sandbox::protocol::Tag;

    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        let (node, process) = UnixStream::pair().unwrap();
        node.set_nonblocking(true).unwrap();
        (node, process)
    }

    /// A process that announces a 60 MiB answer and sends a byte every
    /// 100 ms (the 60 MiB would take two months).
    fn trickle(process: UnixStream) {
        std::thread::spawn(move || {
            let announced: u64 = 60 << 20;
            let mut header = announced.to_le_bytes().to_vec();
            header.push(Tag::Done as u8);
            header.extend_from_slice(&((announced - 5) as u32).to_le_bytes());
            let mut process = &process;
            let _ = process.write_all(&header);
            while process.write_all(b"{").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    #[test]
    fn a_trickled_answer_is_cut_off() {
        let (node, process) = pair();
        trickle(process);
        let limit = 64 << 20;
        let start = Instant::now();
        let received = receive_blocking(
            &node,
            Incoming::new(Instant::now() + Duration::from_secs(5), limit),
        );
        assert_eq!(
            received.map(|_| ()),
            Err(Received::Misbehaved("its answer stalled".to_owned()))
        );
        assert!(start.elapsed() < transfer(limit) + Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_trickled_answer_is_cut_off_in_a_task_too() {
        let (node, process) = pair();
        trickle(process);
        let registered = register(&node).unwrap();
        let incoming = Incoming::new(Instant::now() + Duration::from_secs(5), 64 << 20);
        assert_eq!(
            receive_async(&registered, incoming).await.map(|_| ()),
            Err(Received::Misbehaved("its answer stalled".to_owned()))
        );
    }

    /// A Hello frame, as a process sends it once ready.
    fn hello(mut process: &UnixStream) {
        let meta = b"{}";
        let mut frame = ((1 + 4 + meta.len()) as u64).to_le_bytes().to_vec();
        frame.push(Tag::Hello as u8);
        frame.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        frame.extend_from_slice(meta);
        process.write_all(&frame).unwrap();
    }

    #[test]
    fn a_frame_already_there_is_read_past_its_deadline() {
        let (node, process) = pair();
        hello(&process);
        let past = Instant::now() - Duration::from_secs(1);
        let frame = receive_blocking(&node, Incoming::new(past, 1 << 20));
        assert_eq!(frame.map(|f| f.tag), Ok(Tag::Hello));
        assert_eq!(
            receive_blocking(&node, Incoming::new(past, 1 << 20)).map(|_| ()),
            Err(Received::NoAnswer),
            "nothing more there: no answer, at once"
        );
    }

    #[tokio::test]
    async fn a_frame_already_there_is_read_past_its_deadline_in_a_task_too() {
        let (node, process) = pair();
        hello(&process);
        let registered = register(&node).unwrap();
        let past = Instant::now() - Duration::from_secs(1);
        let frame = receive_async(&registered, Incoming::new(past, 1 << 20)).await;
        assert_eq!(frame.map(|f| f.tag), Ok(Tag::Hello));
    }

    #[test]
    fn no_answer_and_a_closed_socket_are_told_apart() {
        let (node, process) = pair();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            receive_blocking(&node, Incoming::new(soon, 1 << 20)).map(|_| ()),
            Err(Received::NoAnswer)
        );
        drop(process);
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            receive_blocking(&node, Incoming::new(later, 1 << 20)).map(|_| ()),
            Err(Received::Closed)
        );
    }

    #[test]
    fn a_reader_that_stops_reading_cannot_hold_a_write() {
        let (node, process) = pair();
        // Nobody reads `process`: the socket's buffer fills and the write
        // must give up by its deadline, not wait for ever.
        let big = vec![0u8; 32 << 20];
        let mut out = Outgoing::new(&[&big]);
        let soon = Instant::now() + Duration::from_millis(200);
        let result = send_blocking(&node, &mut out, soon);
        assert!(result.is_err_and(|e| e.kind() == io::ErrorKind::TimedOut));
        drop(process);
    }

    #[tokio::test]
    async fn frames_cross_both_ways_in_a_task() {
        let (node, process) = pair();
        let registered = register(&node).unwrap();
        let echo = std::thread::spawn(move || {
            let frame = protocol::read_frame(&mut &process, 1 << 30).unwrap();
            protocol::write_frame(&mut &process, Tag::Done, &"back", &[&frame.body]).unwrap();
        });
        let big = vec![7u8; 8 << 20];
        let mut head = Vec::new();
        let slices = protocol::frame_slices(&mut head, Tag::Run, &"there", &[&big]).unwrap();
        let mut out = Outgoing::new(&slices);
        let deadline = out.deadline();
        send_async(&node, &registered, &mut out, deadline)
            .await
            .unwrap();
        let incoming = Incoming::new(Instant::now() + Duration::from_secs(10), 1 << 30);
        let frame = receive_async(&registered, incoming).await.unwrap();
        assert_eq!(frame.tag, Tag::Done);
        assert_eq!(frame.meta::<String>().unwrap(), "back");
        assert_eq!(frame.body, big);
        echo.join().unwrap();
    }
}
