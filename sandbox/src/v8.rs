//! The V8 engine: a safe wrapper over the C++ bridge in `cpp/`.
//!
//! The unsafe surface is this file's `ffi` module, the [`Isolate`] type that
//! owns one bridge handle, and the host callbacks. Their rules, checked here
//! rather than trusted to callers:
//! - an [`Isolate`] is created, run at most once and disposed on one thread:
//!   it is neither `Send` nor `Sync`, and [`V8Engine`] never runs one twice;
//! - the watchdog may call `isoflow_v8_terminate` from its thread only while
//!   the step's [`Armed`](crate::watchdog::Armed) guard lives, and the guard
//!   is dropped before the isolate is disposed;
//! - host callbacks receive a pointer to a [`Call`] that outlives the
//!   `isoflow_v8_run` call they happen in; each callback makes one `&mut`
//!   to it and borrows the strings it is given separately, and none of them
//!   unwinds into C++.
//!
//! Miri cannot check this file: it cannot run the C++ bridge or V8 (foreign
//! code), and the toolchain here has no nightly Miri either. The pure-Rust
//! parts the callbacks use (`host.rs`, `protocol.rs`, `xml.rs`) have no
//! unsafe code.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use crate::host::{Control, Host, PRELUDE, XmlOp};
use crate::runner::{Engine, Hooks, Job, Settings};
use crate::step::{Limits, Location, MAX_ERROR_TEXT, StepError};
use crate::watchdog::Watchdog;

/// V8 flags set once per process.
/// - `--no-verify-snapshot-checksum`: otherwise V8 checksums the whole
///   start-up snapshot at every isolate creation (~0.12 ms each).
/// - `--no-expose-wasm`: WebAssembly memories are reserved outside the heap
///   limit, and steps have no use for them.
const FLAGS: &str = "--no-verify-snapshot-checksum --no-expose-wasm";

mod ffi {
    use std::ffi::{c_char, c_int, c_void};

    #[repr(C)]
    pub struct Bridge {
        _private: [u8; 0],
    }

    #[repr(C)]
    pub struct Slice {
        pub ptr: *const c_char,
        pub len: usize,
        pub ok: c_int,
    }

    #[repr(C)]
    pub struct HostCallbacks {
        pub data: *mut c_void,
        pub log: unsafe extern "C" fn(*mut c_void, c_int, *const c_char, usize, usize) -> c_int,
        pub xml: unsafe extern "C" fn(
            *mut c_void,
            c_int,
            *const c_char,
            usize,
            *const c_char,
            usize,
        ) -> Slice,
        pub output: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_char,
        pub text: unsafe extern "C" fn(*mut c_void, c_int, *const c_char, usize),
        pub code_cache: unsafe extern "C" fn(*mut c_void, *const c_char, usize),
        pub test:
            unsafe extern "C" fn(*mut c_void, *const c_char, usize, *const c_char, usize) -> Slice,
        pub input_consumed: unsafe extern "C" fn(*mut c_void),
    }

    #[repr(C)]
    pub struct Options {
        pub flags: *const c_char,
        pub prelude: *const c_char,
        pub prelude_len: usize,
        pub max_log_line: usize,
        pub max_error_text: usize,
        pub test_hooks: c_int,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct RunResult {
        pub status: c_int,
        pub line: c_int,
        pub column: c_int,
    }

    pub const OK: c_int = 0;
    pub const SYNTAX: c_int = 1;
    pub const EXCEPTION: c_int = 2;
    pub const TERMINATED: c_int = 3;
    pub const HEAP_LIMIT: c_int = 4;
    pub const MODULE: c_int = 5;
    pub const INPUT: c_int = 6;
    pub const NOT_SERIALIZABLE: c_int = 7;
    pub const NEVER_SETTLED: c_int = 8;
    pub const OUTPUT_LIMIT: c_int = 9;

    pub const FIELD_MESSAGE: c_int = 0;
    pub const FIELD_STACK: c_int = 1;

    unsafe extern "C" {
        pub fn isoflow_v8_init(
            options: *const Options,
            error: *mut c_char,
            error_len: usize,
        ) -> c_int;
        pub fn isoflow_v8_new(
            heap_limit: usize,
            error: *mut c_char,
            error_len: usize,
        ) -> *mut Bridge;
        pub fn isoflow_v8_run(
            v8: *mut Bridge,
            host: *const HostCallbacks,
            source: *const c_char,
            source_len: usize,
            filename: *const c_char,
            filename_len: usize,
            input: *const c_char,
            input_len: usize,
            cache: *const c_char,
            cache_len: usize,
        ) -> RunResult;
        pub fn isoflow_v8_terminate(v8: *mut Bridge);
        pub fn isoflow_v8_dispose(v8: *mut Bridge);
    }
}

/// Whether this process exposes test hooks to JavaScript: fixed by the
/// first [`init`], because V8 builds every context's host object the same.
static TEST_HOOKS: OnceLock<bool> = OnceLock::new();

/// Initialises V8 once per process, with `--jitless` if asked. Later calls
/// return the first result.
pub(crate) fn init(jitless: bool, hooks: bool) -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = TEST_HOOKS.set(hooks);
        let flags = if jitless {
            format!("{FLAGS} --jitless")
        } else {
            FLAGS.to_owned()
        };
        let flags = std::ffi::CString::new(flags).expect("flags have no NUL");
        let options = ffi::Options {
            flags: flags.as_ptr(),
            prelude: PRELUDE.as_ptr().cast(),
            prelude_len: PRELUDE.len(),
            max_log_line: Limits::MAX_LOG_LINE_BYTES,
            max_error_text: MAX_ERROR_TEXT,
            test_hooks: c_int::from(hooks),
        };
        let mut error = [0 as c_char; 512];
        // SAFETY: all pointers are valid for the lengths given; the bridge
        // copies what it keeps and runs its initialisation once.
        let status = unsafe { ffi::isoflow_v8_init(&options, error.as_mut_ptr(), error.len()) };
        if status == 0 {
            Ok(())
        } else {
            Err(format!("cannot start V8: {}", c_message(&error)))
        }
    })
    .clone()
}

fn c_message(buffer: &[c_char]) -> String {
    let bytes: Vec<u8> = buffer
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// One fresh isolate, with its context and the prelude already run.
struct Isolate {
    bridge: NonNull<ffi::Bridge>,
    heap_limit: usize,
}

impl Isolate {
    fn new(heap_limit: usize) -> Result<Isolate, StepError> {
        let mut error = [0 as c_char; 512];
        // SAFETY: `error` is valid for its length; V8 was initialised by
        // `init` before the step thread started.
        let bridge = unsafe { ffi::isoflow_v8_new(heap_limit, error.as_mut_ptr(), error.len()) };
        NonNull::new(bridge)
            .map(|bridge| Isolate { bridge, heap_limit })
            .ok_or_else(|| StepError::Internal {
                message: c_message(&error),
            })
    }

    fn terminator(&self) -> Terminator {
        Terminator(self.bridge)
    }

    fn run(&mut self, job: &Job<'_>, cache: Option<&[u8]>, call: &mut Call<'_>) -> ffi::RunResult {
        // Owned by `call` until the bridge says it has its copy.
        call.input = Some(job.input.take());
        let (input_ptr, input_len) = call
            .input
            .as_deref()
            .map_or((std::ptr::null(), 0), |i| (i.as_ptr(), i.len()));
        let callbacks = ffi::HostCallbacks {
            data: std::ptr::from_mut(call).cast(),
            log: host_log,
            xml: host_xml,
            output: host_output,
            text: host_text,
            code_cache: host_code_cache,
            test: host_test,
            input_consumed: host_input_consumed,
        };
        let (cache_ptr, cache_len) =
            cache.map_or((std::ptr::null(), 0), |c| (c.as_ptr().cast(), c.len()));
        // SAFETY: the bridge is alive and used on its creating thread (this
        // type is !Send); every buffer outlives the call (the input until
        // `input_consumed`, after which the bridge does not read it);
        // `callbacks.data` points at `call`, which outlives the call and is
        // only touched by the callbacks during it.
        unsafe {
            ffi::isoflow_v8_run(
                self.bridge.as_ptr(),
                &callbacks,
                job.source.as_ptr().cast(),
                job.source.len(),
                job.filename.as_ptr().cast(),
                job.filename.len(),
                input_ptr.cast(),
                input_len,
                cache_ptr,
                cache_len,
            )
        }
    }
}

impl Drop for Isolate {
    fn drop(&mut self) {
        // SAFETY: the bridge is alive, on its creating thread, not running,
        // and no watchdog entry refers to it any more (see module docs).
        unsafe { ffi::isoflow_v8_dispose(self.bridge.as_ptr()) }
    }
}

/// Lets the watchdog stop a running isolate from its own thread.
struct Terminator(NonNull<ffi::Bridge>);

// SAFETY: `isoflow_v8_terminate` sets an atomic flag and calls V8's
// `TerminateExecution`, which is documented as callable from any thread;
// the watchdog only calls it while the isolate is alive (module docs).
unsafe impl Send for Terminator {}

impl Terminator {
    fn terminate(&self) {
        // SAFETY: see `unsafe impl Send for Terminator`.
        unsafe { ffi::isoflow_v8_terminate(self.0.as_ptr()) }
    }
}

/// What the host callbacks of one run read and write.
struct Call<'a> {
    host: &'a mut Host,
    control: &'a Control,
    hooks: Hooks,
    output_limit: usize,
    output: Vec<u8>,
    output_len: usize,
    /// The text a callback hands back to V8 (`ctx.xml`, test hooks); it
    /// stays valid until the next callback.
    answer: String,
    /// The step's input, until the bridge has made its string of it.
    input: Option<String>,
    message: String,
    stack: Option<String>,
    offered_cache: Option<Vec<u8>>,
}

/// # Safety
/// `data` is the `Call` passed to `isoflow_v8_run`, and no other reference
/// to it is alive.
unsafe fn call_mut<'a>(data: *mut c_void) -> &'a mut Call<'a> {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut *data.cast::<Call<'a>>() }
}

/// # Safety
/// `text` is valid for `len` bytes for the duration of the callback.
unsafe fn text<'a>(text: *const c_char, len: usize) -> std::borrow::Cow<'a, str> {
    let bytes = if len == 0 {
        &[][..]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) }
    };
    String::from_utf8_lossy(bytes)
}

fn answer(call: &mut Call<'_>, result: Result<String, String>) -> ffi::Slice {
    let ok = c_int::from(result.is_ok());
    call.answer = result.unwrap_or_else(|message| message);
    ffi::Slice {
        ptr: call.answer.as_ptr().cast(),
        len: call.answer.len(),
        ok,
    }
}

fn failed_answer(what: &'static std::ffi::CStr) -> ffi::Slice {
    ffi::Slice {
        ptr: what.as_ptr(),
        len: what.to_bytes().len(),
        ok: 0,
    }
}

unsafe extern "C" fn host_log(
    data: *mut c_void,
    level: c_int,
    line: *const c_char,
    len: usize,
    total_len: usize,
) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and a valid string.
        let (call, line) = unsafe { (call_mut(data), text(line, len)) };
        if call.host.log(level, &line, total_len) {
            1
        } else {
            call.control.abort(crate::host::AbortReason::LogLimit);
            0
        }
    }))
    .unwrap_or(0)
}

unsafe extern "C" fn host_xml(
    data: *mut c_void,
    op: c_int,
    arg: *const c_char,
    arg_len: usize,
    options: *const c_char,
    options_len: usize,
) -> ffi::Slice {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and valid strings.
        let (call, arg, options) = unsafe {
            (
                call_mut(data),
                text(arg, arg_len),
                text(options, options_len),
            )
        };
        let result = match XmlOp::from_code(op) {
            Some(op) => call.host.xml(op, &arg, &options),
            None => Err(format!("ctx.xml: unknown operation {op}")),
        };
        answer(call, result)
    }))
    .unwrap_or_else(|_| failed_answer(c"ctx.xml failed"))
}

unsafe extern "C" fn host_test(
    data: *mut c_void,
    name: *const c_char,
    name_len: usize,
    arg: *const c_char,
    arg_len: usize,
) -> ffi::Slice {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and valid strings.
        let (call, name, arg) =
            unsafe { (call_mut(data), text(name, name_len), text(arg, arg_len)) };
        let result = call
            .hooks
            .call(&name, &arg)
            .ok_or_else(|| format!("no test hook named {name:?}"));
        answer(call, result)
    }))
    .unwrap_or_else(|_| failed_answer(c"test hook failed"))
}

unsafe extern "C" fn host_input_consumed(data: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call`.
        let call = unsafe { call_mut(data) };
        call.input = None;
    }));
}

unsafe extern "C" fn host_output(data: *mut c_void, len: usize) -> *mut c_char {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call`.
        let call = unsafe { call_mut(data) };
        call.output_len = len;
        if len > call.output_limit {
            return std::ptr::null_mut();
        }
        call.output = vec![0; len];
        call.output.as_mut_ptr().cast()
    }))
    .unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn host_text(data: *mut c_void, field: c_int, bytes: *const c_char, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and a valid string.
        let (call, value) = unsafe { (call_mut(data), text(bytes, len)) };
        match field {
            ffi::FIELD_MESSAGE => call.message = value.into_owned(),
            ffi::FIELD_STACK => call.stack = Some(value.into_owned()),
            _ => debug_assert!(false, "unknown text field {field}"),
        }
    }));
}

unsafe extern "C" fn host_code_cache(data: *mut c_void, bytes: *const c_char, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and `len` valid bytes.
        let (call, bytes) = unsafe {
            (
                call_mut(data),
                std::slice::from_raw_parts(bytes.cast::<u8>(), len),
            )
        };
        call.offered_cache = Some(bytes.to_vec());
    }));
}

/// The process's V8 state: the next fresh isolate, the one the last step
/// used (waiting to be disposed), and the code caches of the steps this
/// process ran.
pub(crate) struct V8Engine<'w> {
    watchdog: &'w Watchdog,
    settings: Settings,
    ready: Option<Isolate>,
    /// How long `ready` took to make (µs).
    ready_us: u64,
    spent: Option<Isolate>,
    /// How long the isolate the last step ran in took to make (µs).
    spent_us: Option<u64>,
    /// A step that ran once skips parsing and compiling in every later fresh
    /// isolate of this process. The key is the full text (and file name,
    /// which stack traces show): V8 only checks a cache against the
    /// source's length. Caches never leave the process, so one tenant's
    /// process cannot hand another a cache it forged.
    caches: HashMap<(String, String), Arc<[u8]>>,
}

impl<'w> V8Engine<'w> {
    /// Steps whose caches are kept; past it the map starts again, which
    /// costs each step one compilation.
    const CACHE_CAPACITY: usize = 256;

    pub fn new(watchdog: &'w Watchdog, settings: Settings) -> Self {
        let mut engine = V8Engine {
            watchdog,
            settings,
            ready: None,
            ready_us: 0,
            spent: None,
            spent_us: None,
            caches: HashMap::new(),
        };
        engine.recycle();
        engine
    }
}

impl Engine for V8Engine<'_> {
    fn execute(
        &mut self,
        job: &Job<'_>,
        limits: &Limits,
        control: &Arc<Control>,
        host: &mut Host,
    ) -> Result<String, StepError> {
        debug_assert_eq!(
            TEST_HOOKS.get().copied(),
            Some(!self.settings.hooks.is_empty())
        );
        self.spent_us = None;
        let mut isolate = match self.ready.take() {
            Some(isolate) if isolate.heap_limit == limits.heap_bytes => {
                self.spent_us = Some(self.ready_us);
                isolate
            }
            other => {
                // Keep the prepared isolate for the next step with default limits.
                self.ready = other;
                let start = std::time::Instant::now();
                let isolate = Isolate::new(limits.heap_bytes)?;
                self.spent_us = Some(crate::runner::micros_since(start));
                isolate
            }
        };
        let key = (job.filename.to_owned(), job.source.to_owned());
        let cache = self.caches.get(&key).cloned();
        let mut call = Call {
            host,
            control,
            hooks: self.settings.hooks,
            output_limit: limits.output_bytes,
            output: Vec::new(),
            output_len: 0,
            answer: String::new(),
            input: None,
            message: String::new(),
            stack: None,
            offered_cache: None,
        };
        let result = {
            let terminator = isolate.terminator();
            let _armed = self
                .watchdog
                .arm(control.clone(), move || terminator.terminate());
            isolate.run(job, cache.as_deref(), &mut call)
        };
        // Never run again: disposed in `recycle`, after the reply is sent.
        self.spent = Some(isolate);
        if let Some(made) = call.offered_cache.take() {
            if self.caches.len() >= Self::CACHE_CAPACITY {
                self.caches.clear();
            }
            self.caches.insert(key, made.into());
        }
        outcome(result, call, job, limits)
    }

    fn recycle(&mut self) {
        self.spent = None;
        if self.ready.is_none() {
            // A failure here shows up again, with its message, when a step
            // needs the isolate.
            let start = std::time::Instant::now();
            self.ready = Isolate::new(self.settings.heap_bytes).ok();
            self.ready_us = crate::runner::micros_since(start);
        }
    }

    fn created_us(&self) -> Option<u64> {
        self.spent_us
    }
}

fn outcome(
    result: ffi::RunResult,
    call: Call<'_>,
    job: &Job<'_>,
    limits: &Limits,
) -> Result<String, StepError> {
    let location = || {
        (result.line > 0).then(|| Location {
            filename: job.filename.to_owned(),
            line: u32::try_from(result.line).unwrap_or(0),
            column: u32::try_from(result.column.max(1)).unwrap_or(1),
        })
    };
    match result.status {
        ffi::OK => String::from_utf8(call.output).map_err(|e| StepError::Internal {
            message: format!("V8 produced output that is not UTF-8: {e}"),
        }),
        ffi::HEAP_LIMIT => Err(StepError::HeapLimit {
            limit_bytes: limits.heap_bytes,
        }),
        ffi::TERMINATED => {
            Err(call
                .host
                .abort_error(call.control, limits)
                .unwrap_or(StepError::Internal {
                    message: "V8 stopped the step without a reason".to_owned(),
                }))
        }
        ffi::SYNTAX => Err(StepError::Syntax {
            message: call.message,
            // V8 gives no position for some errors at the end of the
            // source (an unterminated template after a backslash): the
            // last line is where they are.
            location: location().unwrap_or(Location {
                filename: job.filename.to_owned(),
                line: u32::try_from(js_line_count(job.source)).unwrap_or(u32::MAX),
                column: 1,
            }),
        }),
        ffi::EXCEPTION => Err(StepError::Exception {
            message: call.message,
            location: location(),
            stack: call.stack,
        }),
        ffi::MODULE => Err(StepError::Module {
            message: strip_error_name(call.message),
        }),
        ffi::INPUT => Err(StepError::Input {
            message: call.message,
        }),
        ffi::NOT_SERIALIZABLE => Err(StepError::NotSerializable {
            reason: strip_error_name(call.message),
        }),
        ffi::NEVER_SETTLED => Err(StepError::NeverSettled),
        ffi::OUTPUT_LIMIT => Err(StepError::OutputLimit {
            limit_bytes: limits.output_bytes,
            actual_bytes: call.output_len,
        }),
        _ => Err(StepError::Internal {
            message: format!("V8 bridge failed: {}", call.message),
        }),
    }
}

/// "TypeError: output.total is a function" → "output.total is a function".
fn strip_error_name(message: String) -> String {
    for name in ["TypeError: ", "Error: "] {
        if let Some(rest) = message.strip_prefix(name) {
            return rest.to_owned();
        }
    }
    message
}

/// How many lines JavaScript sees in `source` (at least 1).
fn js_line_count(source: &str) -> usize {
    1 + source
        .replace("\r\n", "\n")
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}'))
        .count()
}
