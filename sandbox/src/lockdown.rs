//! Locking a sandbox process down, in two stages around the engines'
//! start-up, and what each layer stops.
//!
//! | layer | stops |
//! | --- | --- |
//! | the node starts it with an empty environment, only its socket (stdin), `/dev/null` (stdout) and a pipe for fatal messages (stderr), in a process group of its own | secrets in variables, inherited files, terminal signals |
//! | `PR_SET_PDEATHSIG` | a process outliving its node |
//! | no core dumps, not dumpable | tenant data in core files; same-uid processes reading its memory through `/proc` or `ptrace` |
//! | network namespace of its own (no interface up) | every network connection, even if seccomp failed |
//! | mount namespace of its own, root changed to an empty read-only tmpfs | every file on the machine, even if seccomp failed |
//! | capabilities dropped (bounding set too), then a non-root uid/gid when the node runs as root | privileged system calls; files and processes of the node's user |
//! | `RLIMIT_NOFILE`, `RLIMIT_FSIZE` 0, `RLIMIT_MEMLOCK` 0 | new descriptors, file writes, locked memory |
//! | `PR_SET_NO_NEW_PRIVS` | gaining privileges through any executable |
//! | seccomp-BPF on every thread (see [`filter`]) | all system calls but the few V8 and QuickJS need to compute: no open, no socket, no exec, no ptrace, no new processes |
//!
//! Memory, threads and time are capped from outside, by the node, because a
//! process that ran customer code cannot be trusted to keep its own limits:
//! a memory cgroup set per step (or a hard `RLIMIT_AS`), a pids cgroup, a
//! kill a grace period past the step's deadline, and, between steps, a kill
//! for any process that keeps using CPU while idle.
//!
//! Namespaces need root, or user namespaces for an unprivileged node;
//! where the machine allows neither, the process runs without them and
//! says so in its [`Layers`]. Seccomp and the uid change are not optional:
//! a process that cannot apply them refuses to start.

use std::ffi::CStr;
use std::io::Write;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid};

use crate::protocol::Layers;

/// How a sandbox process is to lock itself down. Passed on its command line
/// (see [`crate::process::Options`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockdown {
    /// The user and group to run as when started as root.
    pub uid: u32,
    pub gid: u32,
    /// Whether to try network and mount namespaces.
    pub namespaces: bool,
    /// The node's pid: the process dies with it.
    pub parent: Option<u32>,
    /// Refuse to create executable memory (with V8 `--jitless`).
    pub no_exec_memory: bool,
}

impl Default for Lockdown {
    fn default() -> Self {
        Lockdown {
            uid: 65534,
            gid: 65534,
            namespaces: true,
            parent: None,
            no_exec_memory: false,
        }
    }
}

/// The niceness sandbox processes run at.
pub const NICE: i32 = 10;

/// Exit code of a process whose seccomp filter refused a system call.
pub const EXIT_FORBIDDEN_SYSCALL: i32 = 159;
/// Exit code of a process that could not lock itself down or start.
pub const EXIT_STARTUP: i32 = 71;

/// Stage 1, before any thread exists: descriptors, parent death, dumps,
/// namespaces, the empty root, and privileges. Namespaces cannot be entered
/// by a threaded process, and capabilities belong to each thread: dropping
/// them before the engines start their threads means no thread ever has
/// any. Only the namespaces and the empty root are optional (they need root
/// or user namespaces); an `Err` means the process must not go on.
pub(crate) fn before_threads(lockdown: &Lockdown, layers: &mut Layers) -> Result<(), String> {
    close_other_descriptors();
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    let _ = STATM.set(std::fs::File::open("/proc/self/statm").ok());
    // Customer code yields to the node: on a busy CPU the node's threads
    // (the one waiting for this process's answer, above all) run first,
    // while this process disposes of the isolate it used and makes the
    // next. Every thread started from here on inherits it.
    // SAFETY: setpriority with integer arguments, for this process only.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };

    let root = Uid::effective().is_root();
    let mut user_namespace = false;
    if lockdown.namespaces {
        let isolated = CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS;
        let entered = if root {
            nix::sched::unshare(isolated).map_err(|e| format!("unshare: {e}"))
        } else {
            enter_user_namespace(isolated).inspect(|()| user_namespace = true)
        };
        match entered.and_then(|()| {
            layers.network_namespace = true;
            empty_root()
        }) {
            Ok(()) => layers.empty_root = true,
            Err(why) => layers.missing.push(format!("namespaces: {why}")),
        }
    } else {
        layers
            .missing
            .push("namespaces: turned off in the configuration".to_owned());
    }
    drop_privileges(lockdown, root && !user_namespace)?;
    // Only now: a process that is not dumpable cannot write its own
    // /proc/self/uid_map (so an unprivileged node never got its namespaces
    // and empty root), and a uid change resets the flag to
    // fs.suid_dumpable anyway.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("set_dumpable: {e}"))?;
    // After the uid change too: the kernel clears the parent-death signal
    // whenever the effective uid or gid changes, so set before it, it was
    // gone by the time a root node's sandbox ran steps.
    if let Some(parent) = lockdown.parent {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| format!("set_pdeathsig: {e}"))?;
        // The node may have died before the line above.
        if nix::unistd::getppid().as_raw() != i32::try_from(parent).unwrap_or(-1) {
            // SAFETY: _exit ends the process at once; nothing is shared yet.
            unsafe { libc::_exit(0) };
        }
    }
    layers.uid = Uid::current().as_raw();
    layers.gid = Gid::current().as_raw();
    layers.capabilities_dropped = capabilities_are_empty();
    if !layers.capabilities_dropped {
        return Err("capabilities remain after dropping them".to_owned());
    }
    Ok(())
}

/// An unprivileged node's way into namespaces: a user namespace of our own
/// in which we are root (mapped to the node's uid outside).
fn enter_user_namespace(isolated: CloneFlags) -> Result<(), String> {
    let uid = Uid::current().as_raw();
    let gid = Gid::current().as_raw();
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | isolated)
        .map_err(|e| format!("unshare with a user namespace: {e}"))?;
    let write = |path: &str, text: &str| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("{path}: {e}"))
    };
    write("/proc/self/setgroups", "deny")?;
    write("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", &format!("0 {gid} 1"))
}

/// Stage 2, once the engines have started and prepared their first
/// isolates, before the first step: limits and seccomp, on every thread.
/// An `Err` means the process must not run customer code.
pub(crate) fn before_steps(lockdown: &Lockdown, layers: &mut Layers) -> Result<(), String> {
    let limits = [
        (Resource::RLIMIT_NOFILE, 16),
        (Resource::RLIMIT_FSIZE, 0),
        (Resource::RLIMIT_MEMLOCK, 0),
    ];
    for (resource, value) in limits {
        setrlimit(resource, value, value).map_err(|e| format!("setrlimit {resource:?}: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    layers.no_new_privs = true;
    install_sigsys_handler()?;
    filter::install(lockdown.no_exec_memory)?;
    layers.seccomp = true;
    Ok(())
}

/// `/proc/self/statm`, opened before the root changes, to read this
/// process's address space before each step.
static STATM: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();

/// Limits the address space this process may add from now on to
/// `allowance` bytes (`RLIMIT_AS`). The node asks for it before each step
/// when it has no memory cgroup; an allocation over it fails, and V8 then
/// ends the process. The first call also lowers the hard limit to that
/// cap, for good: nothing in the process, not even code that escaped its
/// isolate, can raise it again, and a later step that needs more gets
/// another process (the node keeps track).
pub(crate) fn cap_address_space(allowance: u64) {
    let Some(Some(statm)) = STATM.get() else {
        return;
    };
    let mut buffer = [0u8; 128];
    let Ok(n) = std::os::unix::fs::FileExt::read_at(statm, &mut buffer, 0) else {
        return;
    };
    let pages: Option<u64> = std::str::from_utf8(&buffer[..n])
        .ok()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|p| p.parse().ok());
    // SAFETY: sysconf with a constant argument.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if let Some(pages) = pages {
        let cap = pages.saturating_mul(page).saturating_add(allowance);
        let (_, hard) =
            nix::sys::resource::getrlimit(Resource::RLIMIT_AS).unwrap_or((0, libc::RLIM_INFINITY));
        let hard = if hard == libc::RLIM_INFINITY {
            cap
        } else {
            hard
        };
        let _ = setrlimit(Resource::RLIMIT_AS, cap.min(hard), hard);
    }
}

/// A read-only, empty tmpfs as the root directory. Mounted on a directory
/// every Linux system has, inside our own mount namespace (nobody else
/// sees it), and entered with chroot.
fn empty_root() -> Result<(), String> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;
    let dir = "/proc";
    nix::mount::mount(
        Some("isoflow-sandbox"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=4k,mode=0555"),
    )
    .map_err(|e| format!("mounting an empty tmpfs: {e}"))?;
    nix::unistd::chdir(dir).map_err(|e| format!("chdir: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Drops every capability, the bounding set too, and, when running as real
/// root, becomes `lockdown.uid`/`lockdown.gid` (which clears the rest).
fn drop_privileges(lockdown: &Lockdown, real_root: bool) -> Result<(), String> {
    // Root, or root in our own user namespace: both may drop from the
    // bounding set, which limits what an exec could ever regain.
    if Uid::effective().is_root() {
        for cap in 0..=63 {
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                return Err(format!(
                    "dropping capability {cap} from the bounding set: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
        };
    }
    if real_root {
        if lockdown.uid == 0 || lockdown.gid == 0 {
            return Err("the sandbox's uid and gid must not be 0".to_owned());
        }
        let gid = Gid::from_raw(lockdown.gid);
        let uid = Uid::from_raw(lockdown.uid);
        nix::unistd::setgroups(&[gid]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
        if Uid::current() != uid || Uid::effective() != uid || Gid::current() != gid {
            return Err("the uid or gid did not change".to_owned());
        }
    }
    // Root in a user namespace, or an unprivileged user with file
    // capabilities: clear what is left.
    set_capabilities_empty()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn set_capabilities_empty() -> Result<(), String> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a header and two data structs of the layout above.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn capabilities_are_empty() -> bool {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data structs of the layout above.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) };
    rc == 0
        && data
            .iter()
            .all(|d| d.effective == 0 && d.permitted == 0 && d.inheritable == 0)
}

fn close_other_descriptors() {
    // SAFETY: closes descriptors 3 and up, none of which this process uses:
    // it has not opened anything yet, and Rust's standard library opens
    // nothing at start-up.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        for fd in 3..1024 {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// `siginfo_t` as the kernel fills it for SIGSYS on 64-bit Linux.
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// A refused system call ends the process with [`EXIT_FORBIDDEN_SYSCALL`]
/// after writing its number (and name, for the usual suspects) to stderr,
/// so that the node can say which call it was.
extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a SIGSYS siginfo, whose layout is SigsysInfo.
    let number = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let mut buffer = [0u8; 128];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buffer.len() - len);
        buffer[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    put(b"isoflow-sandbox: forbidden system call ");
    let mut digits = [0u8; 12];
    let mut value = i64::from(number).unsigned_abs();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    put(&digits[at..]);
    if let Some(name) = syscall_name(i64::from(number)) {
        put(b" (");
        put(name.to_bytes());
        put(b")");
    }
    put(b"\n");
    // SAFETY: write and _exit are async-signal-safe.
    unsafe {
        libc::write(2, buffer.as_ptr().cast(), len);
        libc::_exit(EXIT_FORBIDDEN_SYSCALL);
    }
}

fn install_sigsys_handler() -> Result<(), String> {
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Names of the system calls a hostile step is most likely to try, for the
/// message that reports one.
pub fn syscall_name(number: i64) -> Option<&'static CStr> {
    let names: &[(i64, &CStr)] = &[
        (libc::SYS_socket, c"socket"),
        (libc::SYS_connect, c"connect"),
        (libc::SYS_bind, c"bind"),
        (libc::SYS_execve, c"execve"),
        (libc::SYS_execveat, c"execveat"),
        (libc::SYS_ptrace, c"ptrace"),
        (libc::SYS_clone, c"clone"),
        (libc::SYS_clone3, c"clone3"),
        (libc::SYS_process_vm_readv, c"process_vm_readv"),
        (libc::SYS_process_vm_writev, c"process_vm_writev"),
        (libc::SYS_kill, c"kill"),
        (libc::SYS_tgkill, c"tgkill"),
        (libc::SYS_unshare, c"unshare"),
        (libc::SYS_mount, c"mount"),
        (libc::SYS_ioctl, c"ioctl"),
        (libc::SYS_setrlimit, c"setrlimit"),
        (libc::SYS_prlimit64, c"prlimit64"),
        (libc::SYS_mprotect, c"mprotect"),
        (libc::SYS_mmap, c"mmap"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_fork, c"fork"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_vfork, c"vfork"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| *name)
}

/// The seccomp-BPF filters.
pub(crate) mod filter {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };

    /// System calls allowed with any arguments: memory, threads' waiting
    /// and signals, time, reading and writing the descriptors the process
    /// already has, and leaving.
    const ALLOWED: &[i64] = &[
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_lseek,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_mincore,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_futex,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_set_tid_address,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_gettimeofday,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getppid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getrandom,
        libc::SYS_getrusage,
        libc::SYS_sysinfo,
        libc::SYS_uname,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_membarrier,
        libc::SYS_exit,
        libc::SYS_exit_group,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_time,
    ];

    /// System calls that fail with EPERM instead of ending the process:
    /// what libraries probe and can live without (V8 reading
    /// /dev/urandom, the C library looking for a time-zone file).
    const REFUSED: &[i64] = &[
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_statx,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlinkat,
        libc::SYS_getcwd,
        libc::SYS_ioctl,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_open,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_creat,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_stat,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_lstat,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_access,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_readlink,
    ];

    fn arch() -> Result<seccompiler::TargetArch, String> {
        std::env::consts::ARCH
            .try_into()
            .map_err(|e| format!("seccomp on {}: {e:?}", std::env::consts::ARCH))
    }

    fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
            .map_err(|e| format!("seccomp condition: {e}"))
    }

    fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
        SeccompRule::new(conditions).map_err(|e| format!("seccomp rule: {e}"))
    }

    /// The allow-list: everything else traps (the SIGSYS handler reports
    /// the call and ends the process).
    fn allow_list(no_exec_memory: bool) -> Result<BpfProgram, String> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
            ALLOWED.iter().map(|&n| (n, Vec::new())).collect();
        for &n in REFUSED.iter().chain(&[libc::SYS_clone3]) {
            // Allowed here, refused by another filter: the stricter answer
            // of the filters wins (and allowing here keeps it from trapping).
            rules.insert(n, Vec::new());
        }
        let pid = u64::from(std::process::id());
        // Signals only to this process (abort() raises SIGABRT with tgkill).
        rules.insert(
            libc::SYS_tgkill,
            vec![rule(vec![condition(0, SeccompCmpOp::Eq, pid)?])?],
        );
        rules.insert(
            libc::SYS_kill,
            vec![rule(vec![condition(0, SeccompCmpOp::Eq, pid)?])?],
        );
        // The socket is read with recv(2) and no flags: no MSG_OOB, no
        // MSG_PEEK tricks; sendto/sendmsg/recvmsg (SCM_RIGHTS, MSG_OOB)
        // are not allowed at all (frames go out with writev).
        rules.insert(
            libc::SYS_recvfrom,
            vec![rule(vec![condition(3, SeccompCmpOp::Eq, 0)?])?],
        );
        // fcntl for reading and setting descriptor flags only: never
        // F_SETOWN/F_SETOWN_EX/F_SETSIG or O_ASYNC, which make the kernel
        // signal any process of the same uid (another tenant's sandbox, or
        // the node itself when it is not root), nor leases, dnotify or pipe
        // sizes.
        let o_async = libc::O_ASYNC as u64;
        rules.insert(
            libc::SYS_fcntl,
            vec![
                rule(vec![condition(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)?])?,
                rule(vec![condition(1, SeccompCmpOp::Eq, libc::F_SETFD as u64)?])?,
                rule(vec![condition(1, SeccompCmpOp::Eq, libc::F_GETFL as u64)?])?,
                rule(vec![condition(
                    1,
                    SeccompCmpOp::Eq,
                    libc::F_DUPFD_CLOEXEC as u64,
                )?])?,
                rule(vec![
                    condition(1, SeccompCmpOp::Eq, libc::F_SETFL as u64)?,
                    condition(2, SeccompCmpOp::MaskedEq(o_async), 0)?,
                ])?,
            ],
        );
        // Signal handlers, but never for SIGSYS: code that escaped its
        // isolate would otherwise catch the trap and carry on probing.
        rules.insert(
            libc::SYS_rt_sigaction,
            vec![rule(vec![condition(
                0,
                SeccompCmpOp::Ne,
                libc::SIGSYS as u64,
            )?])?],
        );
        // New threads of this process, never new processes.
        let thread = libc::CLONE_THREAD as u64;
        rules.insert(
            libc::SYS_clone,
            vec![rule(vec![condition(
                0,
                SeccompCmpOp::MaskedEq(thread),
                thread,
            )?])?],
        );
        // Reading this process's resource limits; changing only its own
        // soft address space limit (see `cap_address_space`).
        rules.insert(
            libc::SYS_prlimit64,
            vec![
                rule(vec![
                    condition(0, SeccompCmpOp::Eq, 0)?,
                    condition(2, SeccompCmpOp::Eq, 0)?,
                ])?,
                rule(vec![
                    condition(0, SeccompCmpOp::Eq, 0)?,
                    condition(1, SeccompCmpOp::Eq, libc::RLIMIT_AS as u64)?,
                ])?,
            ],
        );
        // Naming threads.
        rules.insert(
            libc::SYS_prctl,
            vec![
                rule(vec![condition(
                    0,
                    SeccompCmpOp::Eq,
                    libc::PR_SET_NAME as u64,
                )?])?,
                rule(vec![condition(
                    0,
                    SeccompCmpOp::Eq,
                    libc::PR_GET_NAME as u64,
                )?])?,
            ],
        );
        let exec = libc::PROT_EXEC as u64;
        let memory = if no_exec_memory {
            vec![rule(vec![condition(2, SeccompCmpOp::MaskedEq(exec), 0)?])?]
        } else {
            Vec::new()
        };
        rules.insert(libc::SYS_mmap, memory.clone());
        rules.insert(libc::SYS_mprotect, memory);
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch()?)
            .and_then(BpfProgram::try_from)
            .map_err(|e| format!("seccomp filter: {e}"))
    }

    /// The refusals: EPERM for [`REFUSED`], ENOSYS for `clone3` (so that
    /// the C library falls back to `clone`, whose flags the first filter
    /// can check).
    fn refusals() -> Result<Vec<BpfProgram>, String> {
        let eperm: BTreeMap<i64, Vec<SeccompRule>> =
            REFUSED.iter().map(|&n| (n, Vec::new())).collect();
        let enosys: BTreeMap<i64, Vec<SeccompRule>> =
            [(libc::SYS_clone3, Vec::new())].into_iter().collect();
        [
            (eperm, SeccompAction::Errno(libc::EPERM as u32)),
            (enosys, SeccompAction::Errno(libc::ENOSYS as u32)),
        ]
        .into_iter()
        .map(|(rules, action)| {
            SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?)
                .and_then(BpfProgram::try_from)
                .map_err(|e| format!("seccomp filter: {e}"))
        })
        .collect()
    }

    /// Installs the filters on every thread of the process.
    pub(crate) fn install(no_exec_memory: bool) -> Result<(), String> {
        let mut programs = refusals()?;
        programs.push(allow_list(no_exec_memory)?);
        for program in &programs {
            seccompiler::apply_filter_all_threads(program)
                .map_err(|e| format!("installing the seccomp filter: {e}"))?;
        }
        Ok(())
    }
}
