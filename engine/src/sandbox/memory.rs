//! Capping a sandbox process's memory (and its threads) from outside, where
//! a process that ran customer code cannot lift the cap.
//!
//! V8 counts its own heap and (through the bridge's allocator) ArrayBuffers,
//! but not what it allocates elsewhere: ICU's `Intl` objects, buffers inside
//! builtins, the host's `ctx.xml` work. The cap is on the whole process: a
//! step's heap limit, plus its input (held once outside the heap while it
//! is read), plus [`SandboxConfig::memory_margin`](super::SandboxConfig)
//! for the process's own needs. It is set before each step, so steps with
//! different limits can share a process.
//!
//! - [`MemoryCap::Cgroup`]: a memory cgroup per process (cgroup v1's memory
//!   controller, under the node's own cgroup). Going over the cap gets the
//!   process killed by the kernel's OOM killer, which the cgroup counts, so
//!   the step fails with [`StepError::MemoryLimit`](super::StepError).
//!   Counts resident memory only.
//! - [`MemoryCap::AddressSpace`]: `RLIMIT_AS`, set from outside with
//!   `prlimit`. Works everywhere, but counts address space, which V8
//!   reserves generously, so the cap there is the process's address space
//!   when it became ready plus the same allowance; an allocation over it
//!   fails, and V8 ends the process.
//! - [`MemoryCap::Auto`] takes a cgroup where the node may create one and
//!   falls back to the address space.
//!
//! Threads: where the pids controller is there, each process also gets a
//! pids cgroup capped at [`MAX_THREADS`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// How sandbox processes' memory is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryCap {
    /// A cgroup if this node can make one, else the address space.
    #[default]
    Auto,
    /// A memory cgroup per process; the sandbox refuses to start without.
    Cgroup,
    /// `RLIMIT_AS` per process.
    AddressSpace,
    /// No cap beyond V8's own heap limit (tests of the cap's absence only).
    Off,
}

/// The memory control a sandbox runs with, once resolved.
#[derive(Debug)]
pub(crate) enum Control {
    Cgroup(CgroupTree),
    AddressSpace,
    Off,
}

/// Which kind of [`Control`] a process is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Cgroup,
    AddressSpace,
    Off,
}

impl Control {
    pub fn mode(&self) -> Mode {
        match self {
            Control::Cgroup(_) => Mode::Cgroup,
            Control::AddressSpace => Mode::AddressSpace,
            Control::Off => Mode::Off,
        }
    }

    pub fn resolve(cap: MemoryCap) -> Result<Control, String> {
        match cap {
            MemoryCap::Off => Ok(Control::Off),
            MemoryCap::AddressSpace => Ok(Control::AddressSpace),
            MemoryCap::Cgroup => CgroupTree::create(Controller::Memory)
                .map(Control::Cgroup)
                .map_err(|e| format!("cannot create a memory cgroup for sandbox processes: {e}")),
            MemoryCap::Auto => Ok(CgroupTree::create(Controller::Memory)
                .map(Control::Cgroup)
                .unwrap_or(Control::AddressSpace)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Control::Cgroup(tree) => format!("memory cgroup under {}", tree.root().display()),
            Control::AddressSpace => "address space limit (RLIMIT_AS)".to_owned(),
            Control::Off => "none".to_owned(),
        }
    }
}

/// The cgroup v1 controllers sandbox processes are put under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    /// The memory cap.
    Memory,
    /// How many threads a process may have: code that escaped its isolate
    /// could otherwise start threads until the machine has no pids left.
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }

    /// The file whose presence says the controller works here.
    fn probe(self) -> &'static str {
        match self {
            Controller::Memory => "memory.limit_in_bytes",
            Controller::Pids => "pids.max",
        }
    }
}

/// This node's folder of per-process cgroups under one controller (cgroup
/// v1), removed when the sandbox is dropped.
#[derive(Debug)]
pub(crate) struct CgroupTree {
    root: PathBuf,
}

const PREFIX: &str = "isoflow-sandbox-";

/// Threads a sandbox process may have: its step thread, the watchdog,
/// V8's platform workers, the main thread, with room to spare.
pub(crate) const MAX_THREADS: u32 = 64;

impl CgroupTree {
    pub fn create(controller: Controller) -> io::Result<CgroupTree> {
        let own = own_cgroup(controller)?;
        remove_stale(&own);
        let root = own.join(format!("{PREFIX}{}", std::process::id()));
        match fs::create_dir(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if !root.join(controller.probe()).is_file() {
            let _ = fs::remove_dir(&root);
            return Err(io::Error::other(format!(
                "the cgroup has no {}",
                controller.probe()
            )));
        }
        Ok(CgroupTree { root })
    }

    /// A cgroup of its own for the process `pid`, which is moved into it.
    pub fn adopt(&self, pid: u32) -> io::Result<Cgroup> {
        let dir = self.root.join(format!("p{pid}"));
        fs::create_dir(&dir)?;
        let cgroup = Cgroup {
            dir,
            limit: usize::MAX,
        };
        fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string())?;
        Ok(cgroup)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let _ = remove_children(&self.root);
        let _ = fs::remove_dir(&self.root);
    }
}

/// One process's memory cgroup.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
    limit: usize,
}

impl Cgroup {
    /// Sets the cap, when it differs from the one set.
    pub fn set_limit(&mut self, bytes: usize) -> io::Result<()> {
        if bytes == self.limit {
            return Ok(());
        }
        // With swap accounting, memory+swap must never be below memory:
        // raise it first, lower it last.
        let memsw = self.dir.join("memory.memsw.limit_in_bytes");
        let has_swap = memsw.is_file();
        if has_swap && bytes > self.limit {
            fs::write(&memsw, bytes.to_string())?;
        }
        fs::write(self.dir.join("memory.limit_in_bytes"), bytes.to_string())?;
        if has_swap && bytes < self.limit {
            fs::write(&memsw, bytes.to_string())?;
        }
        self.limit = bytes;
        Ok(())
    }

    /// Caps the number of threads in the cgroup (pids controller).
    pub fn set_max_threads(&self, max: u32) -> io::Result<()> {
        fs::write(self.dir.join("pids.max"), max.to_string())
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        fs::read_to_string(self.dir.join("memory.oom_control"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|kills| kills > 0)
    }

    /// The most memory the process ever had charged, in bytes.
    pub fn peak(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("memory.max_usage_in_bytes"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Only empty cgroups can go: the pool drops this after reaping the
        // process.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The folder of this process's cgroup in a v1 hierarchy.
fn own_cgroup(controller: Controller) -> io::Result<PathBuf> {
    let name = controller.name();
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let path = text
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == name)
                .then(|| path.to_owned())
        })
        .ok_or_else(|| io::Error::other(format!("no cgroup v1 {name} controller")))?;
    Ok(Path::new("/sys/fs/cgroup")
        .join(name)
        .join(path.trim_start_matches('/')))
}

/// Removes the folders earlier nodes left behind when they were killed
/// (their processes died with them).
fn remove_stale(own: &Path) {
    let Ok(entries) = fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = remove_children(&entry.path());
        let _ = fs::remove_dir(entry.path());
    }
}

fn remove_children(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir(entry.path());
        }
    }
    Ok(())
}
