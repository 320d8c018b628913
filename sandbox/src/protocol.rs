//! The protocol between a node and one of its sandbox processes, over the
//! Unix socket that is the process's standard input.
//!
//! Both sides depend on this file and on [`crate::step`], not on each other.
//!
//! # Frames
//!
//! ```text
//! u64 LE  length of everything after this field
//! u8      tag (Hello, Run, Done)
//! u32 LE  length of the meta
//! meta    JSON (a Hello, RunMeta or DoneMeta)
//! body    raw bytes whose sections the meta measures
//! ```
//!
//! Payloads are never JSON-encoded again: a step's source and input travel
//! as the body of a Run, its output as the body of a Done, each written with
//! one vectored write and read into one buffer.
//!
//! # The conversation
//!
//! 1. The process starts, locks itself down, prepares its isolates and sends
//!    [`Hello`] (protocol version, pid, the lockdown layers in force).
//! 2. The node sends [`RunMeta`] + filename + source + input; the process
//!    runs the step and answers [`DoneMeta`] + output. Repeat.
//! 3. The node closes the socket; the process exits.
//!
//! The process trusts the node. The node trusts nothing a process sends: a
//! process that ran customer code may have been taken over, so every length
//! is checked against the step's limits before anything is allocated, and
//! every text is bounded again on the node's side.

use std::io::{self, IoSlice, Read, Write};

use serde::{Deserialize, Serialize};

use crate::step::{Limits, LogLine, Runtime, StepError};

/// Bumped whenever a message changes shape.
pub const VERSION: u32 = 1;

/// Tags of the three messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Hello = 1,
    Run = 2,
    Done = 3,
}

impl Tag {
    fn from_byte(byte: u8) -> Option<Tag> {
        match byte {
            1 => Some(Tag::Hello),
            2 => Some(Tag::Run),
            3 => Some(Tag::Done),
            _ => None,
        }
    }
}

/// The first message of a process: it is ready for steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub pid: u32,
    pub layers: Layers,
}

/// The lockdown layers in force in a sandbox process, as the process saw
/// them applied. The node logs them; tests check them from outside too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// The seccomp-BPF filter is installed on every thread.
    pub seccomp: bool,
    pub no_new_privs: bool,
    /// The user and group the process runs as.
    pub uid: u32,
    pub gid: u32,
    /// Capabilities dropped: effective, permitted, inheritable, ambient and
    /// the bounding set.
    pub capabilities_dropped: bool,
    /// A network namespace of its own, with no interface up.
    pub network_namespace: bool,
    /// A mount namespace of its own, rooted (chroot) in an empty read-only
    /// directory.
    pub empty_root: bool,
    /// V8 runs without a JIT.
    pub jitless: bool,
    /// Layers that could not be applied on this machine, and why.
    pub missing: Vec<String>,
}

/// A step to run: what the body of a Run frame holds, and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub runtime: Runtime,
    pub limits: Limits,
    /// When the node caps memory by address space: how much address space
    /// the process may add for this step (its `RLIMIT_AS` is set to what
    /// it has plus this before the step runs; the first step's cap is also
    /// the hard limit, for the rest of the process's life).
    pub address_space: Option<u64>,
    /// Body sections, in order: the input JSON, the file name, the source.
    /// The input comes first so that the process can keep it as a buffer
    /// of its own and free it as soon as the isolate has its copy.
    pub input_len: u64,
    pub filename_len: u64,
    pub source_len: u64,
}

/// How a step ended: the meta of a Done frame, whose body is the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneMeta {
    /// `None` when the step succeeded and the body is its output.
    pub error: Option<StepError>,
    pub logs: Vec<LogLine>,
    /// From taking the isolate to having the output serialised.
    pub duration_us: u64,
    /// How long the isolate (or QuickJS runtime) the step ran in took to
    /// make, usually ahead of the step; `None` when none was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate_create_us: Option<u64>,
}

/// A frame as read: its tag, meta (JSON) and body.
#[derive(Debug)]
pub struct Frame {
    pub tag: Tag,
    pub meta: Vec<u8>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn meta<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.meta)
            .map_err(|e| ProtocolError::Malformed(format!("{:?} meta: {e}", self.tag)))
    }

    pub fn expect(self, tag: Tag) -> Result<Frame, ProtocolError> {
        if self.tag == tag {
            Ok(self)
        } else {
            Err(ProtocolError::Malformed(format!(
                "expected {tag:?}, got {:?}",
                self.tag
            )))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the socket at a frame boundary.
    #[error("the other side closed the connection")]
    Closed,
    #[error("a frame of {len} bytes is over the limit of {limit} bytes")]
    TooLarge { len: u64, limit: u64 },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The length of a frame's fixed header.
pub const HEADER: usize = 8 + 1 + 4;

/// What a frame's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: Tag,
    pub meta_len: usize,
    pub body_len: usize,
}

/// Reads a header, refusing a frame of more than `limit` bytes before
/// anything is allocated for it.
pub fn decode_header(header: &[u8; HEADER], limit: u64) -> Result<Header, ProtocolError> {
    let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    let tag = Tag::from_byte(header[8])
        .ok_or_else(|| ProtocolError::Malformed(format!("unknown tag {}", header[8])))?;
    let meta_len = u64::from(u32::from_le_bytes(header[9..].try_into().expect("4 bytes")));
    if len > limit {
        return Err(ProtocolError::TooLarge { len, limit });
    }
    let Some(body_len) = len.checked_sub(1 + 4 + meta_len) else {
        return Err(ProtocolError::Malformed(format!(
            "meta of {meta_len} bytes in a frame of {len}"
        )));
    };
    Ok(Header {
        tag,
        meta_len: usize::try_from(meta_len).expect("u32 fits usize"),
        body_len: usize::try_from(body_len)
            .map_err(|_| ProtocolError::Malformed("body larger than memory".into()))?,
    })
}

/// A frame ready to write: `head` is filled with the header and meta, and
/// the returned slices are `head` followed by the body's sections, to be
/// written with one vectored write (or as few as the socket allows).
pub fn frame_slices<'a, M: Serialize>(
    head: &'a mut Vec<u8>,
    tag: Tag,
    meta: &M,
    sections: &[&'a [u8]],
) -> Result<Vec<&'a [u8]>, ProtocolError> {
    head.clear();
    head.extend_from_slice(&[0u8; HEADER]);
    serde_json::to_writer(&mut *head, meta)
        .map_err(|e| ProtocolError::Malformed(format!("cannot encode {tag:?}: {e}")))?;
    let meta_len = u32::try_from(head.len() - HEADER)
        .map_err(|_| ProtocolError::Malformed(format!("{tag:?} meta is over 4 GiB")))?;
    let body: u64 = sections.iter().map(|s| s.len() as u64).sum();
    let len = 1 + 4 + u64::from(meta_len) + body;
    head[..8].copy_from_slice(&len.to_le_bytes());
    head[8] = tag as u8;
    head[9..HEADER].copy_from_slice(&meta_len.to_le_bytes());
    let mut slices = Vec::with_capacity(1 + sections.len());
    slices.push(&head[..]);
    slices.extend(sections.iter().copied().filter(|s| !s.is_empty()));
    Ok(slices)
}

/// Writes one frame with as few system calls as the socket allows (one,
/// when it all fits in the socket's buffer).
pub fn write_frame<M: Serialize>(
    writer: &mut impl Write,
    tag: Tag,
    meta: &M,
    sections: &[&[u8]],
) -> Result<(), ProtocolError> {
    let mut head = Vec::new();
    let slices = frame_slices(&mut head, tag, meta, sections)?;
    let mut slices: Vec<IoSlice<'_>> = slices.iter().map(|s| IoSlice::new(s)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one frame of at most `limit` bytes. Nothing is allocated for a
/// frame before its length is checked, so a peer cannot make this side
/// allocate more than `limit`.
pub fn read_frame(reader: &mut impl Read, limit: u64) -> Result<Frame, ProtocolError> {
    let mut header = [0u8; HEADER];
    let mut filled = 0;
    while filled < HEADER {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let Header {
        tag,
        meta_len,
        body_len,
    } = decode_header(&header, limit)?;
    let mut meta = vec![0u8; meta_len];
    reader.read_exact(&mut meta)?;
    let mut body = Vec::new();
    body.try_reserve_exact(body_len)
        .map_err(|_| ProtocolError::Malformed(format!("cannot allocate {body_len} bytes")))?;
    reader.take(body_len as u64).read_to_end(&mut body)?;
    if body.len() != body_len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Frame { tag, meta, body })
}

/// A Run body split into its sections: the input keeps the body's buffer
/// (only the short file name and source are copied out).
#[derive(Debug)]
pub struct RunBody {
    pub input: Vec<u8>,
    pub filename: Vec<u8>,
    pub source: Vec<u8>,
}

/// Splits a Run body into its three sections, checking their lengths.
pub fn split_run(meta: &RunMeta, mut body: Vec<u8>) -> Result<RunBody, ProtocolError> {
    let lens = [meta.input_len, meta.filename_len, meta.source_len];
    let total = lens.iter().try_fold(0u64, |a, &b| a.checked_add(b));
    if total != Some(body.len() as u64) {
        return Err(ProtocolError::Malformed(format!(
            "run sections {lens:?} do not add up to a body of {}",
            body.len()
        )));
    }
    let mut tail = body.split_off(meta.input_len as usize);
    let source = tail.split_off(meta.filename_len as usize);
    Ok(RunBody {
        input: body,
        filename: tail,
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::step::LogLevel;

    #[test]
    fn a_run_and_a_done_round_trip() {
        let meta = RunMeta {
            runtime: Runtime::QuickJs,
            limits: Limits::default(),
            address_space: Some(1 << 30),
            input_len: 2,
            filename_len: 4,
            source_len: 5,
        };
        let mut wire = Vec::new();
        write_frame(&mut wire, Tag::Run, &meta, &[b"{}", b"s.js", b"x=1;\n"]).unwrap();
        let done = DoneMeta {
            error: None,
            logs: vec![LogLine {
                level: LogLevel::Warn,
                message: "careful".into(),
                time: SystemTime::UNIX_EPOCH,
            }],
            duration_us: 7,
            isolate_create_us: Some(3),
        };
        write_frame(&mut wire, Tag::Done, &done, &[b"[1,2]"]).unwrap();

        let mut reader = &wire[..];
        let frame = read_frame(&mut reader, 1 << 20)
            .unwrap()
            .expect(Tag::Run)
            .unwrap();
        let back: RunMeta = frame.meta().unwrap();
        assert_eq!(back, meta);
        let body = split_run(&back, frame.body).unwrap();
        assert_eq!(
            (&body.input[..], &body.filename[..], &body.source[..]),
            (&b"{}"[..], &b"s.js"[..], &b"x=1;\n"[..])
        );
        let frame = read_frame(&mut reader, 1 << 20).unwrap();
        assert_eq!(frame.tag, Tag::Done);
        assert_eq!(frame.meta::<DoneMeta>().unwrap(), done);
        assert_eq!(frame.body, b"[1,2]");
        assert!(matches!(
            read_frame(&mut reader, 1 << 20),
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_before_allocating() {
        let mut huge = Vec::new();
        huge.extend_from_slice(&(u64::MAX).to_le_bytes());
        huge.push(Tag::Done as u8);
        huge.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &huge[..], 1 << 20),
            Err(ProtocolError::TooLarge { .. })
        ));

        let mut short = Vec::new();
        short.extend_from_slice(&3u64.to_le_bytes());
        short.push(Tag::Done as u8);
        short.extend_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &short[..], 1 << 20),
            Err(ProtocolError::Malformed(_))
        ));

        let mut unknown = Vec::new();
        unknown.extend_from_slice(&5u64.to_le_bytes());
        unknown.push(99);
        unknown.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &unknown[..], 1 << 20),
            Err(ProtocolError::Malformed(_))
        ));

        let meta = RunMeta {
            runtime: Runtime::V8,
            limits: Limits::default(),
            address_space: None,
            input_len: 2,
            filename_len: 1,
            source_len: u64::MAX,
        };
        assert!(split_run(&meta, b"abc".to_vec()).is_err());
    }

    #[test]
    fn truncated_frames_are_errors_not_hangs() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Tag::Done, &"meta", &[b"0123456789"]).unwrap();
        for cut in 1..wire.len() {
            let result = read_frame(&mut &wire[..cut], 1 << 20);
            assert!(result.is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = read_frame(&mut &bytes[..], 1 << 16);
        }
    }
}
