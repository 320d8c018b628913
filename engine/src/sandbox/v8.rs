//! The V8 engine: a safe wrapper over the C++ bridge in `engine/cpp/`.
//!
//! The unsafe surface is this file's `ffi` module and the [`Isolate`] type
//! that owns one bridge handle. Its rules, checked here rather than trusted
//! to callers:
//! - an [`Isolate`] is created, run at most once and disposed on one thread:
//!   it is neither `Send` nor `Sync`, and [`Isolate::run`] consumes nothing
//!   but is only reachable through [`V8Engine`], which never runs one twice;
//! - the watchdog may call `isoflow_v8_terminate` from its thread only while
//!   the step's [`Armed`](super::watchdog::Armed) guard lives, and the guard
//!   is dropped before the isolate is disposed;
//! - host callbacks receive a pointer to a [`Call`] that outlives the
//!   `isoflow_v8_run` call they happen in, and they never unwind into C++.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use super::host::{Control, Host, PRELUDE, XmlOp};
use super::pool::Engine;
use super::watchdog::Watchdog;
use super::{Execution, Limits, Location, Script, StepError};

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
        pub log: unsafe extern "C" fn(*mut c_void, c_int, *const c_char, usize) -> c_int,
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
    pub const FATAL_OOM: c_int = 11;

    pub const FIELD_MESSAGE: c_int = 0;
    pub const FIELD_STACK: c_int = 1;

    unsafe extern "C" {
        pub fn isoflow_v8_init(
            flags: *const c_char,
            prelude: *const c_char,
            prelude_len: usize,
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

/// Initialises V8 once per process. Later calls return the first result.
pub(crate) fn init() -> Result<(), String> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let flags = std::ffi::CString::new(FLAGS).expect("flags have no NUL");
        let mut error = [0 as c_char; 512];
        // SAFETY: all pointers are valid for the lengths given; the bridge
        // copies the prelude and runs its initialisation once.
        let status = unsafe {
            ffi::isoflow_v8_init(
                flags.as_ptr(),
                PRELUDE.as_ptr().cast(),
                PRELUDE.len(),
                error.as_mut_ptr(),
                error.len(),
            )
        };
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
        // `Sandbox::new` before any engine thread started.
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

    fn run(&mut self, exec: &Execution, call: &mut Call<'_>) -> ffi::RunResult {
        let callbacks = ffi::HostCallbacks {
            data: std::ptr::from_mut(call).cast(),
            log: host_log,
            xml: host_xml,
            output: host_output,
            text: host_text,
            code_cache: host_code_cache,
        };
        let cache = CODE_CACHES.get(&exec.script);
        let (cache_ptr, cache_len) = cache
            .as_deref()
            .map_or((std::ptr::null(), 0), |c| (c.as_ptr().cast(), c.len()));
        let source = exec.script.source.as_bytes();
        let filename = exec.script.filename.as_bytes();
        let input = exec.input_json.as_bytes();
        // SAFETY: the bridge is alive and used on its creating thread (this
        // type is !Send); every buffer outlives the call; `callbacks.data`
        // points at `call`, which outlives the call and is only touched by the
        // callbacks during it.
        unsafe {
            ffi::isoflow_v8_run(
                self.bridge.as_ptr(),
                &callbacks,
                source.as_ptr().cast(),
                source.len(),
                filename.as_ptr().cast(),
                filename.len(),
                input.as_ptr().cast(),
                input.len(),
                cache_ptr,
                cache_len,
            )
        }
    }
}

/// V8 code caches of step modules, shared by all sandbox threads: a step
/// that ran once skips parsing and compiling in every later fresh isolate.
/// A cache is derived from the source alone (no run-time state), so sharing
/// one between runs, or tenants with identical code, reveals nothing. V8
/// only checks a cache against the source's length, so the key is the full
/// text (and file name, which stack traces show).
struct CodeCaches {
    caches: Mutex<HashMap<Script, Arc<[u8]>>>,
}

impl CodeCaches {
    /// Steps whose caches are kept; past it the map starts again, which
    /// costs each step one compilation.
    const CAPACITY: usize = 1024;

    fn get(&self, script: &Script) -> Option<Arc<[u8]>> {
        self.lock().get(script).cloned()
    }

    fn put(&self, script: &Script, cache: &[u8]) {
        let mut caches = self.lock();
        if caches.len() >= Self::CAPACITY {
            caches.clear();
        }
        caches.insert(script.clone(), cache.into());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Script, Arc<[u8]>>> {
        // A map of immutable byte strings is consistent even if a holder panicked.
        self.caches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

static CODE_CACHES: LazyLock<CodeCaches> = LazyLock::new(|| CodeCaches {
    caches: Mutex::new(HashMap::new()),
});

impl Drop for Isolate {
    fn drop(&mut self) {
        // SAFETY: the bridge is alive, on its creating thread, not running,
        // and no watchdog entry refers to it any more (see module docs).
        unsafe { ffi::isoflow_v8_dispose(self.bridge.as_ptr()) }
    }
}

/// Lets the watchdog stop a running isolate from its own thread.
struct Terminator(NonNull<ffi::Bridge>);

// SAFETY: `isoflow_v8_terminate` is V8's `TerminateExecution`, which is
// documented as callable from any thread; the watchdog only calls it while
// the isolate is alive (module docs).
unsafe impl Send for Terminator {}

impl Terminator {
    fn terminate(&self) {
        // SAFETY: see `unsafe impl Send for Terminator`.
        unsafe { ffi::isoflow_v8_terminate(self.0.as_ptr()) }
    }
}

/// What the host callbacks of one run read and write.
struct Call<'a> {
    script: &'a Script,
    host: &'a mut Host,
    control: &'a Control,
    output_limit: usize,
    output: Vec<u8>,
    output_len: usize,
    xml_result: String,
    message: String,
    stack: Option<String>,
}

/// # Safety
/// `data` is the `Call` passed to `isoflow_v8_run`, and `text` is valid for `len` bytes.
unsafe fn call_and_text<'a>(
    data: *mut c_void,
    text: *const c_char,
    len: usize,
) -> (&'a mut Call<'a>, std::borrow::Cow<'a, str>) {
    // SAFETY: guaranteed by the caller.
    let call = unsafe { &mut *data.cast::<Call<'a>>() };
    let bytes = if len == 0 {
        &[][..]
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) }
    };
    (call, String::from_utf8_lossy(bytes))
}

unsafe extern "C" fn host_log(
    data: *mut c_void,
    level: c_int,
    text: *const c_char,
    len: usize,
) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and a valid string.
        let (call, text) = unsafe { call_and_text(data, text, len) };
        if call.host.log(level, &text) {
            1
        } else {
            call.control.abort(super::host::AbortReason::LogLimit);
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
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and valid strings.
        let (call, arg) = unsafe { call_and_text(data, arg, arg_len) };
        // SAFETY: as above.
        let (_, options) = unsafe { call_and_text(data, options, options_len) };
        let (text, ok) = match XmlOp::from_code(op).map(|op| call.host.xml(op, &arg, &options)) {
            Some(Ok(text)) => (text, 1),
            Some(Err(message)) => (message, 0),
            None => (format!("ctx.xml: unknown operation {op}"), 0),
        };
        call.xml_result = text;
        ffi::Slice {
            ptr: call.xml_result.as_ptr().cast(),
            len: call.xml_result.len(),
            ok,
        }
    }));
    result.unwrap_or(ffi::Slice {
        ptr: c"ctx.xml failed".as_ptr(),
        len: "ctx.xml failed".len(),
        ok: 0,
    })
}

unsafe extern "C" fn host_output(data: *mut c_void, len: usize) -> *mut c_char {
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call`.
        let call = unsafe { &mut *data.cast::<Call<'_>>() };
        call.output_len = len;
        if len > call.output_limit {
            return std::ptr::null_mut();
        }
        call.output = vec![0; len];
        call.output.as_mut_ptr().cast()
    }))
    .unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn host_text(data: *mut c_void, field: c_int, text: *const c_char, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and a valid string.
        let (call, text) = unsafe { call_and_text(data, text, len) };
        match field {
            ffi::FIELD_MESSAGE => call.message = text.into_owned(),
            ffi::FIELD_STACK => call.stack = Some(text.into_owned()),
            _ => debug_assert!(false, "unknown text field {field}"),
        }
    }));
}

unsafe extern "C" fn host_code_cache(data: *mut c_void, bytes: *const c_char, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: called by the bridge with the run's `Call` and `len` valid bytes.
        let call = unsafe { &mut *data.cast::<Call<'_>>() };
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) };
        CODE_CACHES.put(call.script, bytes);
    }));
}

/// A sandbox thread's V8 state: the next fresh isolate, and the one the last
/// step used, waiting to be disposed.
pub(crate) struct V8Engine<'w> {
    watchdog: &'w Watchdog,
    default_heap: usize,
    ready: Option<Isolate>,
    spent: Option<Isolate>,
}

impl<'w> V8Engine<'w> {
    pub fn new(watchdog: &'w Watchdog, limits: Limits) -> Self {
        let mut engine = V8Engine {
            watchdog,
            default_heap: limits.heap_bytes,
            ready: None,
            spent: None,
        };
        engine.recycle();
        engine
    }
}

impl Engine for V8Engine<'_> {
    fn execute(
        &mut self,
        exec: &Execution,
        limits: &Limits,
        control: &Arc<Control>,
        host: &mut Host,
    ) -> Result<String, StepError> {
        let mut isolate = match self.ready.take() {
            Some(isolate) if isolate.heap_limit == limits.heap_bytes => isolate,
            other => {
                // Keep the prepared isolate for the next step with default limits.
                self.ready = other;
                Isolate::new(limits.heap_bytes)?
            }
        };
        let mut call = Call {
            script: &exec.script,
            host,
            control,
            output_limit: limits.output_bytes,
            output: Vec::new(),
            output_len: 0,
            xml_result: String::new(),
            message: String::new(),
            stack: None,
        };
        let result = {
            let terminator = isolate.terminator();
            let _armed = self
                .watchdog
                .arm(control.clone(), move || terminator.terminate());
            isolate.run(exec, &mut call)
        };
        // Never run again: disposed in `recycle`, after the reply is sent.
        self.spent = Some(isolate);
        outcome(result, call, exec, limits)
    }

    fn recycle(&mut self) {
        self.spent = None;
        if self.ready.is_none() {
            // A failure here shows up again, with its message, when a step
            // needs the isolate.
            self.ready = Isolate::new(self.default_heap).ok();
        }
    }
}

fn outcome(
    result: ffi::RunResult,
    call: Call<'_>,
    exec: &Execution,
    limits: &Limits,
) -> Result<String, StepError> {
    let location = || {
        (result.line > 0).then(|| Location {
            filename: exec.script.filename.to_string(),
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
        ffi::FATAL_OOM => {
            // Rare, and it leaks the abandoned isolate's memory: say so.
            tracing::warn!(
                file = %exec.script.filename,
                "{}; the step's isolate was abandoned and its memory leaked",
                call.message
            );
            Err(StepError::HeapLimit {
                limit_bytes: limits.heap_bytes,
            })
        }
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
            location: location().unwrap_or(Location {
                filename: exec.script.filename.to_string(),
                line: 0,
                column: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Runtime, Sandbox, SandboxConfig};

    #[test]
    fn code_cache_is_made_once_and_keyed_by_the_whole_source() {
        let sandbox = Sandbox::new(SandboxConfig {
            threads: 1,
            warm: vec![Runtime::V8],
            ..SandboxConfig::default()
        })
        .unwrap();
        let run = |source: &str, input: &str| {
            let exec = Execution::new(Runtime::V8, Script::new("cache.js", source), input);
            sandbox.execute_blocking(exec).result.unwrap()
        };
        // Same length, different code: V8 alone would accept one's cache for
        // the other, which is why the key is the full text.
        let double = "export default (x) => x * 2;";
        let triple = "export default (x) => x * 3;";
        assert_eq!(double.len(), triple.len());
        assert_eq!(run(double, "5"), "10");
        assert!(CODE_CACHES.get(&Script::new("cache.js", double)).is_some());
        assert_eq!(run(triple, "5"), "15");
        assert_eq!(run(double, "7"), "14", "second run, from the cache");
        assert_eq!(run(triple, "7"), "21", "second run, from the cache");
    }
}
