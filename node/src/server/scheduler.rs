//! Which run goes to which worker, and when: the coordinator's scheduling
//! as a pure state machine. No I/O, no runtime, no store: the coordinator
//! (`coordinator.rs`) holds a [`Scheduler`] under its lock, tells it what
//! happened (a run was started, a worker joined or left, a checkpoint
//! write began or ended) and carries out what it answers (an [`Assigned`]
//! becomes an Assign message or a local run, a [`Revoked`] a log line).
//!
//! # Assignments
//!
//! A run is given to one worker at a time, under an assignment id; a run
//! has at most one assignment. A checkpoint write is admitted
//! ([`Scheduler::begin_write`]) only from the assignment's worker, only
//! while the assignment is not revoked, and once per checkpoint number.
//! Revoking an assignment (its worker left, connected again, or gave the
//! run back) queues its run again at once, unless a checkpoint write of it
//! is in progress: then the assignment keeps its run and its slot until the
//! last such write ends, and the run is queued then, once. So two workers
//! never write one run at once.
//!
//! # Fairness
//!
//! Runs wait in one queue per tenant, in the order they were started; a
//! run taken back from a worker goes to the front of its tenant's queue, to
//! resume first. Tenants with waiting runs are served in turn: each run
//! assigned goes to the tenant served least recently, so a tenant that
//! starts a thousand runs delays another tenant's run by at most one turn.
//! A tenant never served yet goes before every tenant served; one that
//! goes quiet and comes back keeps its place (when it was last served), so
//! it cannot skip a tenant it was served ahead of. That costs one entry per
//! tenant ever seen, for the coordinator's life.
//!
//! A tenant with `tenant_runs_in_flight` assignments (those revoked but
//! still writing included: they hold a slot) is skipped until one ends;
//! its runs wait while other tenants' runs go. 0 means no limit. A
//! tenant's own limit ([`Scheduler::set_tenant_limit`], its quota set
//! through the admin API) replaces that default for it.
//!
//! The run chosen goes to the worker with the most free slots, ties to the
//! one given the fewest runs since it joined, so idle workers take turns;
//! no worker is given more than its capacity.
//!
//! Where to look next: `coordinator.rs` (the I/O around this), and this
//! module's tests, which check these rules after every step of random
//! sequences of events.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// A run: (tenant, run id).
pub type RunKey = (String, String);

/// A run given to a worker under assignment `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub id: u64,
    pub key: RunKey,
    pub worker: String,
}

/// An assignment taken back from its worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub id: u64,
    pub key: RunKey,
    /// Whether its run was queued again at once; if not, a checkpoint
    /// write is in progress and the run is queued when it ends.
    pub requeued: bool,
}

/// What [`Scheduler::begin_write`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Write it: the checkpoint is new, and belongs to this run.
    Write(RunKey),
    /// This number was stored before: acknowledge it again, write nothing.
    Repeat,
}

/// The assignment is not (or no longer) the worker's: the run was taken
/// back, finished, or given to another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale;

/// How a checkpoint write admitted by [`Scheduler::begin_write`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored,
    /// Stored, and it was the run's last: the run is over.
    Finished,
    Failed,
}

#[derive(Debug)]
struct Slot {
    capacity: u32,
    assignments: BTreeSet<u64>,
    /// Runs given since it joined: among equally free workers the one
    /// given the fewest goes first.
    given: u64,
}

impl Slot {
    fn free(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.assignments.len())
    }
}

#[derive(Debug)]
struct Assignment {
    key: RunKey,
    worker: String,
    /// Highest checkpoint number stored.
    applied: u64,
    /// Checkpoint writes in progress.
    writing: u32,
    revoked: bool,
}

/// Where a tenant stands in the turns: (when it was last served, 0), or
/// (0, when it arrived) for one never served: it goes before every tenant
/// served, and after those that arrived before it.
type Turn = (u64, u64);

#[derive(Debug)]
struct Tenant {
    /// Run ids, in the order they are to go.
    queue: VecDeque<String>,
    /// Assignments held, revoked ones still writing included.
    in_flight: u32,
    turn: Turn,
}

/// The scheduling state of one coordinator. See the module docs.
#[derive(Debug)]
pub struct Scheduler {
    /// Assignments a tenant may hold at once; 0: no limit.
    tenant_runs_in_flight: u32,
    /// Tenants' own limits, in place of `tenant_runs_in_flight`.
    limits: HashMap<String, u32>,
    /// Every tenant seen: a tenant's turn must outlive its runs.
    tenants: HashMap<String, Tenant>,
    /// Tenants with waiting runs, in the order they are served.
    turns: BTreeSet<(Turn, String)>,
    /// Every waiting run.
    queued: HashSet<RunKey>,
    workers: BTreeMap<String, Slot>,
    assignments: HashMap<u64, Assignment>,
    by_run: HashMap<RunKey, u64>,
    /// Runs assigned so far: the clock of `Turn`'s first half.
    served: u64,
    /// Tenants seen so far: the clock of `Turn`'s second half.
    arrivals: u64,
}

impl Scheduler {
    /// `tenant_runs_in_flight`: assignments a tenant may hold at once, 0
    /// for no limit.
    pub fn new(tenant_runs_in_flight: u32) -> Scheduler {
        Scheduler {
            tenant_runs_in_flight,
            limits: HashMap::new(),
            tenants: HashMap::new(),
            turns: BTreeSet::new(),
            queued: HashSet::new(),
            workers: BTreeMap::new(),
            assignments: HashMap::new(),
            by_run: HashMap::new(),
            served: 0,
            arrivals: 0,
        }
    }

    /// Gives `tenant` its own limit of assignments at once (0: none), or
    /// back the default with `None`. Lowering it takes nothing back: the
    /// tenant waits until its runs in flight are under the new limit.
    pub fn set_tenant_limit(&mut self, tenant: &str, limit: Option<u32>) {
        match limit {
            Some(limit) => self.limits.insert(tenant.to_owned(), limit),
            None => self.limits.remove(tenant),
        };
    }

    /// The assignments `tenant` may hold at once; 0: no limit.
    fn limit_of(&self, tenant: &str) -> u32 {
        self.limits
            .get(tenant)
            .copied()
            .unwrap_or(self.tenant_runs_in_flight)
    }

    /// Each worker: its name, capacity and assignments held.
    pub fn slots(&self) -> Vec<(String, u32, usize)> {
        self.workers
            .iter()
            .map(|(name, slot)| (name.clone(), slot.capacity, slot.assignments.len()))
            .collect()
    }

    /// Runs waiting.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Queues a run at the back of its tenant's queue. False (and nothing
    /// changes) if it is queued or assigned already.
    pub fn enqueue(&mut self, key: RunKey) -> bool {
        if self.by_run.contains_key(&key) || self.queued.contains(&key) {
            return false;
        }
        self.push(key, false);
        true
    }

    /// A worker joined, or connected again: a new slot replaces any it had,
    /// and the old slot's assignments are revoked.
    pub fn add_worker(&mut self, worker: &str, capacity: u32) -> Vec<Revoked> {
        let slot = Slot {
            capacity,
            assignments: BTreeSet::new(),
            given: 0,
        };
        match self.workers.insert(worker.to_owned(), slot) {
            Some(old) => self.revoke(old.assignments),
            None => Vec::new(),
        }
    }

    /// A worker left: its slot is removed and its assignments revoked.
    /// `None` if it had no slot.
    pub fn remove_worker(&mut self, worker: &str) -> Option<Vec<Revoked>> {
        let slot = self.workers.remove(worker)?;
        Some(self.revoke(slot.assignments))
    }

    /// `worker` gave assignment `id` back unfinished.
    pub fn release(&mut self, worker: &str, id: u64) -> Option<Revoked> {
        if self.assignments.get(&id)?.worker != worker {
            return None;
        }
        self.revoke([id]).pop()
    }

    fn revoke(&mut self, ids: impl IntoIterator<Item = u64>) -> Vec<Revoked> {
        let mut revoked = Vec::new();
        for id in ids {
            let Some(assignment) = self.assignments.get_mut(&id) else {
                continue;
            };
            if assignment.revoked {
                continue;
            }
            assignment.revoked = true;
            let key = assignment.key.clone();
            let requeued = assignment.writing == 0;
            if requeued {
                self.requeue(id);
            }
            revoked.push(Revoked { id, key, requeued });
        }
        revoked
    }

    /// Gives waiting runs to workers with free slots, each under an id
    /// from `next_id`, until no worker has a free slot or no tenant below
    /// its limit has a run waiting.
    pub fn dispatch(&mut self, mut next_id: impl FnMut() -> u64) -> Vec<Assigned> {
        let mut assigned = Vec::new();
        while let Some(worker) = self.freest_worker() {
            let Some((turn, tenant_id)) = self.next_tenant() else {
                break;
            };
            let limit = self.limit_of(&tenant_id);
            self.served += 1;
            self.turns.remove(&(turn, tenant_id.clone()));
            let tenant = self
                .tenants
                .get_mut(&tenant_id)
                .expect("a tenant in turn is known");
            let run_id = tenant
                .queue
                .pop_front()
                .expect("a tenant in turn has a run waiting");
            tenant.in_flight += 1;
            debug_assert!(limit == 0 || tenant.in_flight <= limit);
            tenant.turn = (self.served, 0);
            if !tenant.queue.is_empty() {
                self.turns.insert((tenant.turn, tenant_id.clone()));
            }
            let key = (tenant_id, run_id);
            self.queued.remove(&key);
            let id = next_id();
            let slot = self
                .workers
                .get_mut(&worker)
                .expect("the freest worker is known");
            slot.assignments.insert(id);
            slot.given += 1;
            debug_assert!(slot.assignments.len() <= slot.capacity as usize);
            debug_assert!(
                !self.assignments.contains_key(&id),
                "assignment ids are unique"
            );
            self.assignments.insert(
                id,
                Assignment {
                    key: key.clone(),
                    worker: worker.clone(),
                    applied: 0,
                    writing: 0,
                    revoked: false,
                },
            );
            self.by_run.insert(key.clone(), id);
            assigned.push(Assigned { id, key, worker });
        }
        assigned
    }

    /// The worker the next run goes to: most free slots, then fewest runs
    /// given, then the first by name.
    fn freest_worker(&self) -> Option<String> {
        self.workers
            .iter()
            .filter(|(_, slot)| slot.free() > 0)
            .min_by_key(|(_, slot)| (Reverse(slot.free()), slot.given))
            .map(|(worker, _)| worker.clone())
    }

    /// The tenant whose run goes next: the first in turn below its limit.
    fn next_tenant(&self) -> Option<(Turn, String)> {
        self.turns
            .iter()
            .find(|(_, tenant)| {
                let limit = self.limit_of(tenant);
                limit == 0
                    || self
                        .tenants
                        .get(tenant)
                        .is_some_and(|t| t.in_flight < limit)
            })
            .cloned()
    }

    /// Admits checkpoint `seq` of assignment `id`, sent by `worker`. Every
    /// `Ok(Admitted::Write)` must be followed by one [`Self::end_write`].
    pub fn begin_write(&mut self, worker: &str, id: u64, seq: u64) -> Result<Admitted, Stale> {
        let assignment = self.assignments.get_mut(&id).ok_or(Stale)?;
        // Only the worker given the run writes to it.
        if assignment.revoked || assignment.worker != worker {
            return Err(Stale);
        }
        if seq <= assignment.applied {
            return Ok(Admitted::Repeat);
        }
        assignment.writing += 1;
        Ok(Admitted::Write(assignment.key.clone()))
    }

    /// A write admitted by [`Self::begin_write`] ended. A finished run's
    /// assignment ends. Returns the run if this queued it again: its
    /// assignment was revoked, and this was its last write in progress.
    pub fn end_write(&mut self, id: u64, seq: u64, written: Written) -> Option<RunKey> {
        let assignment = self.assignments.get_mut(&id)?;
        debug_assert!(assignment.writing > 0, "a write ended that never began");
        assignment.writing = assignment.writing.saturating_sub(1);
        if written != Written::Failed {
            assignment.applied = assignment.applied.max(seq);
        }
        if written == Written::Finished {
            self.finish(id);
            return None;
        }
        if assignment.revoked && assignment.writing == 0 {
            let key = assignment.key.clone();
            self.requeue(id);
            return Some(key);
        }
        None
    }

    /// Assignment `id` is over (its run ended): its slot is free. False if
    /// there is no such assignment.
    pub fn finish(&mut self, id: u64) -> bool {
        self.take(id).is_some()
    }

    /// Removes a waiting run from its queue. False if it is not waiting.
    pub fn cancel_queued(&mut self, key: &RunKey) -> bool {
        if !self.queued.remove(key) {
            return false;
        }
        let (tenant_id, run_id) = key;
        if let Some(tenant) = self.tenants.get_mut(tenant_id) {
            tenant.queue.retain(|r| r != run_id);
            if tenant.queue.is_empty() {
                self.turns.remove(&(tenant.turn, tenant_id.clone()));
            }
        }
        true
    }

    /// The run assignment `id` is for, while it is current and `worker`'s:
    /// what that worker may act for (write checkpoints, fetch credentials).
    pub fn current_run(&self, worker: &str, id: u64) -> Option<&RunKey> {
        self.assignments
            .get(&id)
            .filter(|a| !a.revoked && a.worker == worker)
            .map(|a| &a.key)
    }

    /// The run's assignment and its worker, if it has one (revoked but
    /// still writing included).
    pub fn assignment_of(&self, key: &RunKey) -> Option<(u64, &str)> {
        let id = *self.by_run.get(key)?;
        let assignment = self.assignments.get(&id)?;
        Some((id, assignment.worker.as_str()))
    }

    /// Takes a revoked assignment off its worker and queues its run at the
    /// front of its tenant's queue, to resume first.
    fn requeue(&mut self, id: u64) {
        if let Some(assignment) = self.take(id) {
            debug_assert!(
                !self.queued.contains(&assignment.key),
                "a run is queued once"
            );
            self.push(assignment.key, true);
        }
    }

    /// Removes an assignment, with its slot and its count in flight.
    fn take(&mut self, id: u64) -> Option<Assignment> {
        let assignment = self.assignments.remove(&id)?;
        self.by_run.remove(&assignment.key);
        if let Some(slot) = self.workers.get_mut(&assignment.worker) {
            slot.assignments.remove(&id);
        }
        if let Some(tenant) = self.tenants.get_mut(&assignment.key.0) {
            debug_assert!(tenant.in_flight > 0);
            tenant.in_flight = tenant.in_flight.saturating_sub(1);
        }
        Some(assignment)
    }

    fn push(&mut self, key: RunKey, front: bool) {
        let (tenant_id, run_id) = key.clone();
        let arrivals = &mut self.arrivals;
        let tenant = self.tenants.entry(tenant_id.clone()).or_insert_with(|| {
            *arrivals += 1;
            Tenant {
                queue: VecDeque::new(),
                in_flight: 0,
                turn: (0, *arrivals),
            }
        });
        if tenant.queue.is_empty() {
            self.turns.insert((tenant.turn, tenant_id));
        }
        if front {
            tenant.queue.push_front(run_id);
        } else {
            tenant.queue.push_back(run_id);
        }
        self.queued.insert(key);
    }
}

#[cfg(test)]
mod tests;
