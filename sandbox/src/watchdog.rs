//! One thread that enforces the running step's deadline.
//!
//! A step's thread arms the watchdog with its [`Control`] and a function
//! that interrupts the engine (V8's `TerminateExecution`, the one call that
//! is safe from another thread). When the deadline passes first, the
//! watchdog records [`AbortReason::Timeout`] and calls the function, and
//! calls it again every [`REPEAT`] until the guard is dropped: V8 forgets a
//! termination once it has unwound to the host, so any JavaScript the host
//! might still call after the deadline (a getter on a thrown value, say) is
//! stopped too.
//!
//! Invariant: the interrupt function is only ever called while its [`Armed`]
//! guard is alive, because both the call and the guard's drop take the same
//! lock. The step's thread drops the guard before it disposes the isolate,
//! so the watchdog never touches a disposed isolate.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::host::{AbortReason, Control};

/// How often a step past its deadline is interrupted again.
pub(crate) const REPEAT: Duration = Duration::from_millis(10);

type Interrupt = Box<dyn Fn() + Send>;

struct Entry {
    id: u64,
    /// When to interrupt next: the step's deadline, then every [`REPEAT`].
    due: Instant,
    control: Arc<Control>,
    interrupt: Interrupt,
}

#[derive(Default)]
struct State {
    /// A sandbox process runs one step at a time, so this holds one entry
    /// or none; a list is the simplest correct structure.
    armed: Vec<Entry>,
    next_id: u64,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock guards plain data and no code under it can leave it half
        // updated, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The watchdog thread and the deadlines it watches.
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("armed", &self.shared.lock().armed.len())
            .finish()
    }
}

impl Watchdog {
    pub fn start() -> std::io::Result<Watchdog> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = std::thread::Builder::new()
            .name("isoflow-watchdog".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared)
            })?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches `control.deadline`; `interrupt` is called once the deadline
    /// has passed, and again every [`REPEAT`], but never after the returned
    /// guard is dropped.
    pub fn arm(&self, control: Arc<Control>, interrupt: impl Fn() + Send + 'static) -> Armed<'_> {
        let mut state = self.shared.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.armed.push(Entry {
            id,
            due: control.deadline,
            control,
            interrupt: Box::new(interrupt),
        });
        drop(state);
        self.shared.wake.notify_one();
        Armed { watchdog: self, id }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keeps a deadline armed; dropping it disarms.
pub(crate) struct Armed<'a> {
    watchdog: &'a Watchdog,
    id: u64,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let id = self.id;
        self.watchdog.shared.lock().armed.retain(|e| e.id != id);
    }
}

fn run(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.shutdown {
            return;
        }
        let now = Instant::now();
        for entry in state.armed.iter_mut().filter(|e| e.due <= now) {
            entry.control.abort(AbortReason::Timeout);
            // Called under the lock: see the module invariant.
            (entry.interrupt)();
            entry.due = now + REPEAT;
        }
        match state.armed.iter().map(|e| e.due).min() {
            Some(due) => {
                state = shared
                    .wake
                    .wait_timeout(state, due.saturating_duration_since(now))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            None => {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn fires_after_the_deadline_and_again_until_disarmed() {
        let watchdog = Watchdog::start().unwrap();
        let fired = Arc::new(AtomicUsize::new(0));
        let control = Arc::new(Control::new(Instant::now() + Duration::from_millis(20)));
        let armed = watchdog.arm(control.clone(), {
            let fired = fired.clone();
            move || {
                fired.fetch_add(1, Ordering::SeqCst);
            }
        });
        let start = Instant::now();
        // Fired once at the deadline, then again: a host call after the
        // deadline is interrupted too.
        while fired.load(Ordering::SeqCst) < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "watchdog fired {} times",
                fired.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(control.reason(), Some(AbortReason::Timeout));
        drop(armed);
        let after = fired.load(Ordering::SeqCst);
        std::thread::sleep(REPEAT * 5);
        assert_eq!(fired.load(Ordering::SeqCst), after, "never after disarming");
    }

    #[test]
    fn disarmed_deadline_never_fires() {
        let watchdog = Watchdog::start().unwrap();
        let fired = Arc::new(AtomicUsize::new(0));
        let control = Arc::new(Control::new(Instant::now() + Duration::from_millis(10)));
        {
            let fired = fired.clone();
            let _armed = watchdog.arm(control.clone(), move || {
                fired.fetch_add(1, Ordering::SeqCst);
            });
        }
        // A later deadline proves the thread went past the disarmed one.
        let later = Arc::new(Control::new(Instant::now() + Duration::from_millis(30)));
        let done = Arc::new(AtomicUsize::new(0));
        let _armed = watchdog.arm(later, {
            let done = done.clone();
            move || {
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        let start = Instant::now();
        while done.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(fired.load(Ordering::SeqCst), 0);
        assert_eq!(control.reason(), None);
    }

    #[test]
    fn earlier_deadline_armed_later_fires_first() {
        let watchdog = Watchdog::start().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let far = Arc::new(Control::new(Instant::now() + Duration::from_secs(3600)));
        let near = Arc::new(Control::new(Instant::now() + Duration::from_millis(10)));
        let _far = watchdog.arm(far.clone(), {
            let order = order.clone();
            move || order.lock().unwrap().push("far")
        });
        let _near = watchdog.arm(near, {
            let order = order.clone();
            move || order.lock().unwrap().push("near")
        });
        let start = Instant::now();
        while order.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(order.lock().unwrap().iter().all(|o| *o == "near"));
        assert_eq!(far.reason(), None);
    }
}
