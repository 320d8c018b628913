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

/// `F_SETSIG`, which the libc crate does not name for glibc.
const F_SETSIG: libc::c_int = 10;

/// A hook's numeric argument; 0 when it is not a number.
fn number(text: &str) -> i64 {
    text.trim().parse().unwrap_or(0)
}

/// "fd:pid:signal": `F_SETOWN(pid)`, `F_SETSIG(signal)` and `O_ASYNC` on
/// descriptor `fd`, then a line on stderr. Stands in for an exploit that
/// has the kernel signal another process (another tenant's sandbox, or an
/// unprivileged node) for it: every read the node makes of that pipe, or
/// write to that socket, sends the signal, and only the uid is checked.
fn setown(arg: &str) -> String {
    let mut parts = arg.split(':').map(number);
    let fd = parts.next().unwrap_or(2) as libc::c_int;
    let pid = parts.next().unwrap_or(0) as libc::c_int;
    let signal = parts.next().unwrap_or(0) as libc::c_int;
    // SAFETY: fcntl and write with integer arguments and a buffer of its
    // length, on descriptors this process has.
    unsafe {
        let owner = libc::fcntl(fd, libc::F_SETOWN, pid);
        let signal = libc::fcntl(fd, F_SETSIG, signal);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let asynchronous = libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC);
        let line = b"armed\n";
        libc::write(2, line.as_ptr().cast(), line.len());
        format!("F_SETOWN {owner}, F_SETSIG {signal}, O_ASYNC {asynchronous}")
    }
}

/// "fd:command:value": one `fcntl` call, for the commands an exploit could
/// abuse (pipe sizes, leases, signals) and those the process needs.
fn fcntl(arg: &str) -> String {
    let mut parts = arg.split(':').map(number);
    let fd = parts.next().unwrap_or(0) as libc::c_int;
    let command = parts.next().unwrap_or(0) as libc::c_int;
    let value = parts.next().unwrap_or(0) as libc::c_int;
    // SAFETY: fcntl with integer arguments only, on a descriptor this
    // process has.
    let rc = unsafe { libc::fcntl(fd, command, value) };
    if rc < 0 {
        format!("refused: {}", errno())
    } else {
        format!("fcntl = {rc}")
    }
}

/// Answers with the header of a Done frame announcing `arg` bytes, then
/// sends one byte a second, for ever: a taken-over process holding the
/// node's step (and its turn) with an answer that never ends.
fn trickle(arg: &str) -> String {
    let len = u64::try_from(number(arg)).unwrap_or(0).max(64);
    let mut header = [0u8; 13];
    header[..8].copy_from_slice(&len.to_le_bytes());
    header[8] = 3; // Done
    let meta_len = u32::try_from(len - 5).unwrap_or(u32::MAX);
    header[9..].copy_from_slice(&meta_len.to_le_bytes());
    // SAFETY: writes a buffer of its length to the socket.
    unsafe { libc::write(0, header.as_ptr().cast(), header.len()) };
    loop {
        // SAFETY: as above.
        unsafe { libc::write(0, b"{".as_ptr().cast(), 1) };
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Answers the step itself at once (a Done frame whose output is this
/// process's pid), then reads the node's next step 64 KiB every two
/// seconds and never answers: a taken-over process holding the node's
/// step (and its turn) in the write of a large step.
fn slow_reader(_: &str) -> String {
    let meta = br#"{"error":null,"logs":[],"duration_us":1,"cpu_us":1}"#;
    let body = std::process::id().to_string();
    let len = (1 + 4 + meta.len() + body.len()) as u64;
    let mut frame = len.to_le_bytes().to_vec();
    frame.push(3); // Done
    frame.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    frame.extend_from_slice(meta);
    frame.extend_from_slice(body.as_bytes());
    // SAFETY: writes a buffer of its length to the socket.
    unsafe { libc::write(0, frame.as_ptr().cast(), frame.len()) };
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        std::thread::sleep(std::time::Duration::from_secs(2));
        // SAFETY: reads into a buffer of its length from the socket.
        unsafe { libc::recv(0, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    }
}

/// Raises its soft `RLIMIT_AS` to the hard limit, then allocates `arg`
/// MiB: an exploit lifting the address space cap, which only a hard limit
/// set outside its reach stops.
fn lift_and_allocate(arg: &str) -> String {
    // SAFETY: prlimit64 on this process, with rlimit structs it owns.
    let rc = unsafe {
        let mut old: libc::rlimit64 = std::mem::zeroed();
        libc::prlimit64(0, libc::RLIMIT_AS, std::ptr::null(), &mut old);
        let new = libc::rlimit64 {
            rlim_cur: old.rlim_max,
            rlim_max: old.rlim_max,
        };
        libc::prlimit64(0, libc::RLIMIT_AS, &new, std::ptr::null_mut())
    };
    format!("lifted ({rc}), {}", allocate(arg))
}

/// `send(MSG_OOB)` on the socket: AF_UNIX out-of-band data, the way from
/// Chrome's renderer sandbox into the kernel of CVE-2025-38236.
fn oob(_: &str) -> String {
    // SAFETY: sends one byte from a static buffer.
    let rc = unsafe { libc::send(0, b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    format!("send(MSG_OOB) = {rc}")
}

/// `recv(MSG_PEEK)` on the socket: only plain reads are the process's own.
fn peek(_: &str) -> String {
    let mut byte = [0u8; 1];
    // SAFETY: reads at most one byte into a buffer of one byte.
    let rc = unsafe {
        libc::recv(
            0,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    format!("recv(MSG_PEEK) = {rc}")
}

/// Sends the socket over itself with `SCM_RIGHTS`: descriptors in flight
/// on AF_UNIX sockets are the garbage collector's long line of kernel bugs
/// (CVE-2021-0920).
fn scm_rights(_: &str) -> String {
    let mut control = [0u64; 4];
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        // Nothing of the stream itself: the node reads no stray byte.
        iov_len: 0,
    };
    // SAFETY: a msghdr pointing at the iovec and control buffer above,
    // which outlive the call; the control buffer (32 bytes, aligned) has
    // room for one header and one descriptor.
    let rc = unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(4) as usize;
        libc::CMSG_DATA(header)
            .cast::<libc::c_int>()
            .write_unaligned(0);
        libc::sendmsg(0, &message, libc::MSG_DONTWAIT)
    };
    format!("sendmsg(SCM_RIGHTS) = {rc}")
}

static TRAPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigsys(_: libc::c_int) {
    TRAPPED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Installs its own SIGSYS handler, then calls `socket()`: an exploit that
/// catches the trap survives every forbidden call and probes the filter at
/// leisure.
fn sigsys(_: &str) -> String {
    // SAFETY: installs a handler that only stores to an atomic, then makes
    // a system call with integer arguments.
    let fd = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as extern "C" fn(libc::c_int) as usize;
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
        libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)
    };
    let trapped = TRAPPED.load(std::sync::atomic::Ordering::Relaxed);
    format!("socket() = {fd}, trapped {trapped}, still running")
}

/// `newfstatat(path)`, which the filter allows with any path: what of the
/// machine's files an exploit can see.
fn stat(path: &str) -> String {
    let c_path = CString::new(path).expect("no NUL in the path");
    // SAFETY: a valid C string and a stat buffer of the right type.
    let rc = unsafe {
        let mut buffer: libc::stat = std::mem::zeroed();
        libc::syscall(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            &mut buffer,
            0,
        )
    };
    if rc != 0 {
        return format!("stat {path}: {}", errno());
    }
    format!("stat {path}: found")
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
    ("setown", setown),
    ("fcntl", fcntl),
    ("trickle", trickle),
    ("slow-reader", slow_reader),
    ("lift-and-allocate", lift_and_allocate),
    ("oob", oob),
    ("peek", peek),
    ("scm-rights", scm_rights),
    ("sigsys", sigsys),
    ("stat", stat),
];

fn main() -> std::process::ExitCode {
    isoflow_sandbox::process::main_with_hooks(std::env::args().skip(1), Hooks(HOOKS))
}
