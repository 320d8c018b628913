//! A sandbox program for tests only: the real sandbox process, with test
//! hooks that a step calls as `isoflowTestHook(name, arg)` to do what an
//! exploit that escaped the isolate would do. The production programs
//! (`isoflow sandbox-process`, the engine's `isoflow-sandbox`) register no
//! hooks, and there the global does not exist.
//!
//! Each hook returns a line saying what happened, unless the sandbox ends
//! the process first (which is what the tests expect of most of them).

use std::ffi::CString;

use isoflow_sandbox::runner::Hooks;

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

/// `open("/etc/passwd")`: refused with EPERM inside the sandbox.
fn open(path: &str) -> String {
    let path = if path.is_empty() { "/etc/passwd" } else { path };
    let c_path = CString::new(path).expect("no NUL in the path");
    // SAFETY: a valid C string; the descriptor is closed below.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return format!("refused: {}", errno());
    }
    let mut buffer = [0u8; 64];
    // SAFETY: reads into a buffer of its length from the descriptor just opened.
    let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    format!("opened {path}, read {n} bytes")
}

/// `socket()`: ends the process inside the sandbox.
fn socket(_: &str) -> String {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return format!("refused: {}", errno());
    }
    // SAFETY: closes the descriptor just made.
    unsafe { libc::close(fd) };
    "made a socket".to_owned()
}

/// `execve("/bin/true")`: ends the process inside the sandbox.
fn execve(_: &str) -> String {
    let program = CString::new("/bin/true").expect("no NUL");
    let argv = [program.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: valid NULL-terminated argument and environment arrays.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    format!("refused: {}", errno())
}

/// `ptrace(PTRACE_ATTACH, parent)`: ends the process inside the sandbox.
fn ptrace(_: &str) -> String {
    // SAFETY: integer arguments only; a failed attach changes nothing.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            libc::getppid(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if rc < 0 {
        format!("refused: {}", errno())
    } else {
        "attached to the node".to_owned()
    }
}

/// `fork()`: ends the process inside the sandbox.
fn fork(_: &str) -> String {
    // SAFETY: the child exits at once, touching nothing.
    match unsafe { libc::fork() } {
        -1 => format!("refused: {}", errno()),
        // SAFETY: _exit in the child.
        0 => unsafe { libc::_exit(0) },
        _ => "forked".to_owned(),
    }
}

/// `kill(node, SIGKILL)`: ends the process inside the sandbox (it may only
/// signal itself).
fn kill_node(_: &str) -> String {
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::kill(libc::getppid(), libc::SIGKILL) };
    if rc < 0 {
        format!("refused: {}", errno())
    } else {
        "killed the node".to_owned()
    }
}

/// Crashes the process like an exploit gone wrong.
fn abort(_: &str) -> String {
    std::process::abort()
}

fn null(_: &str) -> String {
    // SAFETY: deliberately not: a write through a null pointer, to crash
    // the process with SIGSEGV as a memory-corruption exploit might.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
    "survived a null dereference".to_owned()
}

/// Allocates and touches `arg` MiB outside V8's heap, as ICU or an escaped
/// exploit could: only the process's memory cap stops it.
fn allocate(arg: &str) -> String {
    let mib: usize = arg.parse().unwrap_or(0);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        kept.push(vec![1u8; 1 << 20]);
    }
    let total: usize = kept.iter().map(Vec::len).sum();
    format!("allocated {} MiB", total >> 20)
}

/// Spins in native code, where no JavaScript time limit is checked.
fn spin(_: &str) -> String {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

/// Leaves a thread spinning after the step has answered, as an exploit
/// mining CPU between steps would.
fn background(_: &str) -> String {
    std::thread::spawn(|| spin(""));
    "a thread spins in the background".to_owned()
}

/// The process's ids as the kernel reports them to it.
fn ids(_: &str) -> String {
    // SAFETY: getters without arguments.
    unsafe { format!("{}:{}:{}", libc::getuid(), libc::getgid(), libc::getpid()) }
}

/// Makes a page executable: refused when the sandbox runs V8 without JIT.
fn exec_memory(_: &str) -> String {
    // SAFETY: maps one anonymous page and unmaps it again.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return format!("refused: {}", errno());
        }
        libc::munmap(page, 4096);
    }
    "mapped an executable page".to_owned()
}

static HOOKS: &[(&str, isoflow_sandbox::runner::Hook)] = &[
    ("open", open),
    ("socket", socket),
    ("execve", execve),
    ("ptrace", ptrace),
    ("fork", fork),
    ("kill-node", kill_node),
    ("abort", abort),
    ("null", null),
    ("allocate", allocate),
    ("spin", spin),
    ("background", background),
    ("ids", ids),
    ("exec-memory", exec_memory),
];

fn main() -> std::process::ExitCode {
    isoflow_sandbox::process::main_with_hooks(std::env::args().skip(1), Hooks(HOOKS))
}
