//! The host side of `prelude.js`, shared by both engines: log capture with
//! its limits, the `ctx.xml` functions, and the abort signal through which
//! the watchdog and the host stop a step.
//!
//! Both engines call into this module with plain strings, so the rules for
//! logs and XML are written once and behave identically on V8 and QuickJS.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Instant, SystemTime};

use crate::step::{Limits, LogLevel, LogLimitKind, LogLine, StepError};
use crate::xml;

/// The JavaScript both engines evaluate in every fresh context before the
/// step's module. It evaluates to a function that takes the host object and
/// returns `{ parseInput, finish }`.
pub(crate) const PRELUDE: &str = include_str!("prelude.js");

/// Why the host asked an engine to stop a running step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum AbortReason {
    Timeout = 1,
    LogLimit = 2,
}

/// Shared between the thread running a step and the watchdog.
#[derive(Debug)]
pub(crate) struct Control {
    abort: AtomicU8,
    pub deadline: Instant,
}

impl Control {
    pub fn new(deadline: Instant) -> Self {
        Control {
            abort: AtomicU8::new(0),
            deadline,
        }
    }

    /// Records the first reason only: a step that hit its log limit and then
    /// ran out of time failed because of the logs.
    pub fn abort(&self, reason: AbortReason) {
        let _ = self
            .abort
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn reason(&self) -> Option<AbortReason> {
        match self.abort.load(Ordering::Acquire) {
            1 => Some(AbortReason::Timeout),
            2 => Some(AbortReason::LogLimit),
            _ => None,
        }
    }
}

/// `ctx.xml` operations, numbered as `prelude.js` and the C++ bridge number them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XmlOp {
    Parse = 0,
    Stringify = 1,
}

impl XmlOp {
    pub fn from_code(code: i32) -> Option<XmlOp> {
        match code {
            0 => Some(XmlOp::Parse),
            1 => Some(XmlOp::Stringify),
            _ => None,
        }
    }
}

/// Per-execution host state: the captured logs and the limits on them.
#[derive(Debug)]
pub(crate) struct Host {
    limits: Limits,
    logs: Vec<LogLine>,
    log_bytes: usize,
    log_error: Option<StepError>,
}

impl Host {
    pub fn new(limits: Limits) -> Self {
        Host {
            limits,
            logs: Vec::new(),
            log_bytes: 0,
            log_error: None,
        }
    }

    /// Records a log line. `total_len` is the line's full length in bytes,
    /// of which an engine may have handed over only the start. Returns
    /// `false` once a log limit is exceeded: the engine must then stop the
    /// step, which fails with [`Host::log_error`].
    pub fn log(&mut self, level: i32, text: &str, total_len: usize) -> bool {
        if self.log_error.is_some() {
            return false;
        }
        if self.logs.len() >= self.limits.log_lines {
            self.log_error = Some(StepError::LogLimit {
                what: LogLimitKind::Lines,
                limit: self.limits.log_lines,
            });
            return false;
        }
        let message = truncate_line(text, total_len.max(text.len()));
        self.log_bytes += message.len();
        if self.log_bytes > self.limits.log_bytes {
            self.log_error = Some(StepError::LogLimit {
                what: LogLimitKind::Bytes,
                limit: self.limits.log_bytes,
            });
            return false;
        }
        self.logs.push(LogLine {
            level: LogLevel::from_code(level),
            message,
            time: SystemTime::now(),
        });
        true
    }

    /// The log-limit error, once one was hit.
    pub fn log_error(&self) -> Option<&StepError> {
        self.log_error.as_ref()
    }

    /// The error for a step the host stopped (`control` says why), or `None`
    /// when nobody asked for the step to stop.
    pub fn abort_error(&self, control: &Control, limits: &Limits) -> Option<StepError> {
        match control.reason()? {
            AbortReason::Timeout => Some(StepError::Timeout {
                limit: limits.timeout,
            }),
            AbortReason::LogLimit => Some(self.log_error.clone().unwrap_or(StepError::Internal {
                message: "step stopped for its log limit without a log error".to_owned(),
            })),
        }
    }

    pub fn into_logs(self) -> Vec<LogLine> {
        self.logs
    }

    /// Runs a `ctx.xml` operation. `arg` is the XML text (parse) or the
    /// value's JSON text (stringify); `options` is the options' JSON text.
    /// The error is the message of the exception thrown to JavaScript.
    ///
    /// The work happens outside the JavaScript heap, so it is charged
    /// against the step's heap limit here: neither the result nor what is
    /// built on the way to it may take more than half of it, because the
    /// argument is in the heap already and the result goes there next.
    pub fn xml(&self, op: XmlOp, arg: &str, options: &str) -> Result<String, String> {
        let budget = self.limits.heap_bytes / 2;
        match op {
            XmlOp::Parse => {
                let options: xml::ParseOptions = serde_json::from_str(options)
                    .map_err(|e| format!("ctx.xml.parse: invalid options: {e}"))?;
                xml::parse_to_json(arg, &options, budget).map_err(|e| e.to_string())
            }
            XmlOp::Stringify => {
                let options: xml::StringifyOptions = serde_json::from_str(options)
                    .map_err(|e| format!("ctx.xml.stringify: invalid options: {e}"))?;
                xml::stringify_json(arg, &options, budget).map_err(|e| e.to_string())
            }
        }
    }
}

/// Makes a step's JSON output well-formed Unicode: `JSON.stringify` writes a
/// lone UTF-16 surrogate (a string cut in the middle of an emoji, say) as an
/// escape such as `\ud83d`, which is valid JSON text but no Unicode scalar,
/// and Rust, RocksDB consumers and most JSON parsers reject it. Each lone
/// surrogate escape becomes `\ufffd`, the replacement character, which has
/// the same length, so output limits stay exact. Valid pairs are kept.
pub(crate) fn well_formed_json(text: String) -> String {
    // Pairs are written as raw UTF-8, so `\ud` only appears for a lone
    // surrogate or after an escaped backslash: the common case is one scan.
    if !text.contains("\\ud") && !text.contains("\\uD") {
        return text;
    }
    let mut bytes = text.into_bytes();
    let unit = |b: &[u8], at: usize| -> Option<u16> {
        let hex = b.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) != Some(&b'u') {
            // An escaped character such as `\\` or `\"`: skip both bytes.
            i += 2;
            continue;
        }
        match unit(&bytes, i + 2) {
            Some(high @ 0xD800..=0xDBFF) => {
                let low = (bytes.get(i + 6) == Some(&b'\\') && bytes.get(i + 7) == Some(&b'u'))
                    .then(|| unit(&bytes, i + 8))
                    .flatten();
                if matches!(low, Some(0xDC00..=0xDFFF)) {
                    i += 12;
                } else {
                    debug_assert!((0xD800..=0xDBFF).contains(&high));
                    bytes[i + 2..i + 6].copy_from_slice(b"fffd");
                    i += 6;
                }
            }
            Some(0xDC00..=0xDFFF) => {
                bytes[i + 2..i + 6].copy_from_slice(b"fffd");
                i += 6;
            }
            _ => i += 6,
        }
    }
    String::from_utf8(bytes).expect("only ASCII hex digits were replaced")
}

/// Cuts a log line to [`Limits::MAX_LOG_LINE_BYTES`] on a character
/// boundary, noting how much was cut of its `total_len` bytes.
fn truncate_line(text: &str, total_len: usize) -> String {
    let max = Limits::MAX_LOG_LINE_BYTES;
    if total_len <= max && text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], total_len - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(lines: usize, bytes: usize) -> Limits {
        Limits {
            log_lines: lines,
            log_bytes: bytes,
            ..Limits::default()
        }
    }

    #[test]
    fn log_lines_limit_is_reported_and_sticks() {
        let mut host = Host::new(limits(2, 1000));
        assert!(host.log(1, "a", 1));
        assert!(host.log(1, "b", 1));
        assert!(!host.log(1, "c", 1));
        assert!(
            !host.log(1, "d", 1),
            "after the limit nothing more is taken"
        );
        assert_eq!(
            host.log_error(),
            Some(&StepError::LogLimit {
                what: LogLimitKind::Lines,
                limit: 2
            })
        );
        assert_eq!(host.into_logs().len(), 2);
    }

    #[test]
    fn log_bytes_limit_counts_text() {
        let mut host = Host::new(limits(100, 10));
        assert!(host.log(1, "12345", 5));
        assert!(!host.log(1, "123456", 6));
        assert!(matches!(
            host.log_error(),
            Some(StepError::LogLimit {
                what: LogLimitKind::Bytes,
                limit: 10
            })
        ));
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let long = "é".repeat(Limits::MAX_LOG_LINE_BYTES);
        let cut = truncate_line(&long, long.len());
        assert!(cut.len() < Limits::MAX_LOG_LINE_BYTES + 40);
        assert!(cut.ends_with(&format!(
            "({} bytes cut)",
            long.len() - Limits::MAX_LOG_LINE_BYTES
        )));
    }

    #[test]
    fn levels_map_from_prelude_codes() {
        let mut host = Host::new(Limits::default());
        for code in 0..4 {
            host.log(code, "x", 1);
        }
        let levels: Vec<_> = host.into_logs().into_iter().map(|l| l.level).collect();
        assert_eq!(
            levels,
            [
                LogLevel::Debug,
                LogLevel::Info,
                LogLevel::Warn,
                LogLevel::Error
            ]
        );
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let fix = |s: &str| well_formed_json(s.to_owned());
        assert_eq!(fix(r#""a\ud800b""#), r#""a\ufffdb""#);
        assert_eq!(fix(r#""\udc00""#), r#""\ufffd""#);
        assert_eq!(
            fix(r#""\ud83d\ude00""#),
            r#""\ud83d\ude00""#,
            "a valid pair stays"
        );
        assert_eq!(
            fix(r#""\\ud800""#),
            r#""\\ud800""#,
            "an escaped backslash is text"
        );
        assert_eq!(fix(r#"{"\ud800":"\uDBFF"}"#), r#"{"\ufffd":"\ufffd"}"#);
        assert_eq!(fix(r#""\ud800\ud800\udc00""#), r#""\ufffd\ud800\udc00""#);
        assert_eq!(fix(r#""plain""#), r#""plain""#);
    }

    proptest::proptest! {
        #[test]
        fn well_formed_json_always_parses(units in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..24)) {
            // What JSON.stringify writes for any UTF-16 string: lone
            // surrogates escaped, everything else as is.
            let mut text = String::from("\"");
            for c in char::decode_utf16(units.iter().copied()) {
                match c {
                    Ok('"') => text.push_str("\\\""),
                    Ok('\\') => text.push_str("\\\\"),
                    Ok(c) if (c as u32) < 0x20 => text.push_str(&format!("\\u{:04x}", c as u32)),
                    Ok(c) => text.push(c),
                    Err(e) => text.push_str(&format!("\\u{:04x}", e.unpaired_surrogate())),
                }
            }
            text.push('"');
            let fixed = well_formed_json(text.clone());
            proptest::prop_assert_eq!(fixed.len(), text.len());
            let parsed: Result<String, _> = serde_json::from_str(&fixed);
            proptest::prop_assert!(parsed.is_ok(), "{} -> {}", text, fixed);
        }
    }

    #[test]
    fn first_abort_reason_wins() {
        let control = Control::new(Instant::now());
        assert_eq!(control.reason(), None);
        control.abort(AbortReason::LogLimit);
        control.abort(AbortReason::Timeout);
        assert_eq!(control.reason(), Some(AbortReason::LogLimit));
    }
}
