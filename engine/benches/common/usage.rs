//! CPU time and memory of a bench and of the sandbox processes it started,
//! shared by the sandbox and run benches (each includes this file with
//! `#[path]`). Code steps run in `isoflow-sandbox` processes, children of
//! the bench: a figure that read only `/proc/self` would leave their cost
//! out. Other children (a bench's HTTP fixture process) are not counted.

// Each bench uses part of this.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The sandbox program's name as the kernel keeps it (`comm`, 15 bytes at
/// most: `isoflow-sandbox` fits, and so does the prefix of
/// `isoflow-sandbox-hooked`).
const SANDBOX_COMM: &str = "isoflow-sandbox";

/// CPU time used, split by who used it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The bench process (the node's side: engine, pool, store).
    pub own: Duration,
    /// Every sandbox process, started or reaped in between included.
    pub sandboxes: Duration,
}

impl Cpu {
    pub fn total(&self) -> Duration {
        self.own + self.sandboxes
    }

    pub fn per(&self, n: usize) -> Cpu {
        let n = n.max(1) as u32;
        Cpu {
            own: self.own / n,
            sandboxes: self.sandboxes / n,
        }
    }
}

/// CPU time so far of this process, of its live sandbox processes (by
/// pid), and of the children it has reaped.
pub struct CpuSnapshot {
    own: Duration,
    live: BTreeMap<u32, Duration>,
    reaped: Duration,
}

impl CpuSnapshot {
    pub fn take() -> CpuSnapshot {
        loop {
            let reaped = reaped_children_cpu();
            let live = sandbox_children()
                .into_iter()
                .filter_map(|pid| Some((pid, ticks(proc_ticks(pid)?))))
                .collect();
            let own = ticks(proc_ticks_self());
            // A child reaped while the pids were read would count twice or
            // not at all: read again.
            if reaped_children_cpu() == reaped {
                return CpuSnapshot { own, live, reaped };
            }
        }
    }

    /// What was used since `before`. Only sandbox processes are reaped
    /// while a bench measures (a fixture process lives to the end).
    pub fn since(&self, before: &CpuSnapshot) -> Cpu {
        // A process live before and gone now was reaped in between: the
        // reaped total holds its whole life, of which `before` held a part.
        let gone: Duration = before
            .live
            .iter()
            .filter(|(pid, _)| !self.live.contains_key(pid))
            .map(|(_, &t)| t)
            .sum();
        // A process new now counts whole.
        let live: Duration = self
            .live
            .iter()
            .map(|(pid, &t)| t.saturating_sub(before.live.get(pid).copied().unwrap_or_default()))
            .sum();
        let reaped = self.reaped.saturating_sub(before.reaped);
        Cpu {
            own: self.own.saturating_sub(before.own),
            sandboxes: live + reaped.saturating_sub(gone),
        }
    }
}

/// The pids of this process's children (zombies included).
pub fn children() -> BTreeSet<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(&format!("/proc/{pid}/stat")).and_then(|f| f.get(1)?.parse::<u32>().ok())
                == Some(me)
        })
        .collect()
}

/// The children that are sandbox processes.
pub fn sandbox_children() -> BTreeSet<u32> {
    children()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(SANDBOX_COMM))
        })
        .collect()
}

/// The fields of a `/proc/.../stat` after the command name (which may hold
/// spaces, in parentheses): state is the first, ppid the second, utime the
/// 12th.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ticks_from(path: &str) -> Option<u64> {
    let fields = stat_fields(path)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// utime + stime of a process, all its threads, in clock ticks.
pub fn proc_ticks(pid: u32) -> Option<u64> {
    ticks_from(&format!("/proc/{pid}/stat"))
}

fn proc_ticks_self() -> u64 {
    ticks_from("/proc/self/stat").expect("this process's /proc/self/stat")
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf with a constant argument.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .expect("sysconf(_SC_CLK_TCK) is positive")
        .max(1)
}

fn ticks(n: u64) -> Duration {
    Duration::from_nanos(n * 1_000_000_000 / ticks_per_second())
}

/// User + system CPU time of the children this process has waited for.
fn reaped_children_cpu() -> Duration {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given, which we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_CHILDREN)");
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A `kB` field of a `/proc/<pid>/…` file.
fn kb_field(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Memory in use now, in kB: this process's RSS, and the proportional set
/// size (Pss: shared pages divided among the processes sharing them) of
/// every sandbox process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub own_rss_kb: u64,
    pub sandboxes_pss_kb: u64,
}

impl Memory {
    pub fn now() -> Memory {
        Memory {
            own_rss_kb: kb_field("/proc/self/status", "VmRSS:").unwrap_or(0),
            sandboxes_pss_kb: sandbox_children()
                .into_iter()
                .filter_map(|pid| kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:"))
                .sum(),
        }
    }

    pub fn total_kb(&self) -> u64 {
        self.own_rss_kb + self.sandboxes_pss_kb
    }
}

/// Samples [`Memory::now`] every `every` on a thread of its own until
/// stopped, keeping the largest total seen.
pub struct PeakMemory {
    stop: Arc<AtomicBool>,
    peak: Arc<(AtomicU64, AtomicU64)>,
    thread: Option<JoinHandle<()>>,
}

impl PeakMemory {
    pub fn start(every: Duration) -> PeakMemory {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let thread = std::thread::spawn({
            let (stop, peak) = (stop.clone(), peak.clone());
            move || {
                let mut best = 0;
                while !stop.load(Ordering::Relaxed) {
                    let now = Memory::now();
                    if now.total_kb() > best {
                        best = now.total_kb();
                        peak.0.store(now.own_rss_kb, Ordering::Relaxed);
                        peak.1.store(now.sandboxes_pss_kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
            }
        });
        PeakMemory {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The sample with the largest total.
    pub fn stop(mut self) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Memory {
            own_rss_kb: self.peak.0.load(Ordering::Relaxed),
            sandboxes_pss_kb: self.peak.1.load(Ordering::Relaxed),
        }
    }
}
