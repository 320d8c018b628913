//! The scheduler's rules, checked two ways: cases written out, and random
//! sequences of events (runs started and cancelled, workers joining and
//! leaving, checkpoint writes beginning and ending, runs finishing) played
//! against a model that knows only the rules, with every rule checked
//! after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

fn key(tenant: &str, run: &str) -> RunKey {
    (tenant.to_owned(), run.to_owned())
}

/// Assignment ids, as the coordinator gives them: unique, increasing.
#[derive(Default)]
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> impl FnMut() -> u64 + '_ {
        || {
            self.0 += 1;
            self.0
        }
    }
}

fn runs_of(assigned: &[Assigned]) -> Vec<String> {
    assigned.iter().map(|a| a.key.1.clone()).collect()
}

#[test]
fn a_flooding_tenant_delays_another_by_one_turn_at_most() {
    // The worker is there from the start (A's first run goes at once), or
    // joins once everything is queued.
    for worker_first in [true, false] {
        let mut scheduler = Scheduler::new(0);
        let mut ids = Ids::default();
        let mut order = Vec::new();
        if worker_first {
            scheduler.add_worker("w", 1);
        }
        for i in 0..500 {
            assert!(scheduler.enqueue(key("a", &format!("a{i}"))));
            order.extend(scheduler.dispatch(ids.next()));
        }
        assert!(scheduler.enqueue(key("b", "b0")));
        if !worker_first {
            scheduler.add_worker("w", 1);
        }
        order.extend(scheduler.dispatch(ids.next()));
        while order.len() < 4 {
            let last = order.last().expect("a run was assigned").id;
            assert!(scheduler.finish(last));
            order.extend(scheduler.dispatch(ids.next()));
        }
        assert_eq!(
            runs_of(&order),
            ["a0", "b0", "a1", "a2"],
            "worker first: {worker_first}"
        );
    }
}

#[test]
fn tenants_take_turns_and_each_keeps_its_order() {
    let mut scheduler = Scheduler::new(0);
    let mut ids = Ids::default();
    for i in 0..3 {
        scheduler.enqueue(key("a", &format!("a{i}")));
    }
    for i in 0..2 {
        scheduler.enqueue(key("b", &format!("b{i}")));
    }
    scheduler.enqueue(key("c", "c0"));
    scheduler.add_worker("w", 6);
    let assigned = scheduler.dispatch(ids.next());
    assert_eq!(runs_of(&assigned), ["a0", "b0", "c0", "a1", "b1", "a2"]);
}

#[test]
fn a_tenant_at_its_limit_waits_while_others_go() {
    let mut scheduler = Scheduler::new(2);
    let mut ids = Ids::default();
    scheduler.add_worker("w", 5);
    for i in 0..4 {
        scheduler.enqueue(key("a", &format!("a{i}")));
    }
    let first = scheduler.dispatch(ids.next());
    assert_eq!(runs_of(&first), ["a0", "a1"], "two slots stay free");
    scheduler.enqueue(key("b", "b0"));
    let second = scheduler.dispatch(ids.next());
    assert_eq!(runs_of(&second), ["b0"]);
    // One of a's ends: its next run takes the place.
    assert!(scheduler.finish(first[0].id));
    assert_eq!(runs_of(&scheduler.dispatch(ids.next())), ["a2"]);
    assert_eq!(scheduler.queued(), 1);
}

#[test]
fn a_tenants_own_limit_replaces_the_default_for_it_alone() {
    let mut scheduler = Scheduler::new(2);
    let mut ids = Ids::default();
    scheduler.add_worker("w", 10);
    scheduler.set_tenant_limit("a", Some(1));
    scheduler.set_tenant_limit("c", Some(0));
    for tenant in ["a", "b", "c"] {
        for i in 0..4 {
            scheduler.enqueue(key(tenant, &format!("{tenant}{i}")));
        }
    }
    let mut first = runs_of(&scheduler.dispatch(ids.next()));
    first.sort();
    assert_eq!(
        first,
        ["a0", "b0", "b1", "c0", "c1", "c2", "c3"],
        "a: 1, b: the default 2, c: no limit"
    );
    // Back to the default: a may hold two.
    scheduler.set_tenant_limit("a", None);
    assert_eq!(runs_of(&scheduler.dispatch(ids.next())), ["a1"]);
}

#[test]
fn a_run_taken_back_mid_write_is_queued_once_the_write_ends_and_goes_first() {
    let mut scheduler = Scheduler::new(0);
    let mut ids = Ids::default();
    scheduler.add_worker("w", 1);
    scheduler.enqueue(key("a", "a0"));
    scheduler.enqueue(key("a", "a1"));
    let [first] = scheduler.dispatch(ids.next()).try_into().expect("one run");
    assert_eq!(
        scheduler.begin_write("w", first.id, 1),
        Ok(Admitted::Write(key("a", "a0")))
    );
    let revoked = scheduler.remove_worker("w").expect("w was there");
    assert_eq!(
        revoked,
        [Revoked {
            id: first.id,
            key: key("a", "a0"),
            requeued: false
        }]
    );
    assert_eq!(
        scheduler.begin_write("w", first.id, 2),
        Err(Stale),
        "a revoked assignment writes nothing more"
    );
    scheduler.add_worker("v", 2);
    assert_eq!(
        runs_of(&scheduler.dispatch(ids.next())),
        ["a1"],
        "a0 is still being written: it stays off the queue"
    );
    assert_eq!(
        scheduler.end_write(first.id, 1, Written::Stored),
        Some(key("a", "a0"))
    );
    scheduler.enqueue(key("a", "a2"));
    assert_eq!(runs_of(&scheduler.dispatch(ids.next())), ["a0"]);
}

#[test]
fn checkpoints_are_admitted_from_the_current_worker_once_per_number() {
    let mut scheduler = Scheduler::new(0);
    let mut ids = Ids::default();
    scheduler.add_worker("w", 1);
    scheduler.enqueue(key("a", "a0"));
    let [run] = scheduler.dispatch(ids.next()).try_into().expect("one run");
    assert_eq!(scheduler.begin_write("v", run.id, 1), Err(Stale));
    assert_eq!(
        scheduler.begin_write("w", run.id, 1),
        Ok(Admitted::Write(key("a", "a0")))
    );
    assert_eq!(scheduler.end_write(run.id, 1, Written::Stored), None);
    assert_eq!(scheduler.begin_write("w", run.id, 1), Ok(Admitted::Repeat));
    // A failed write is not applied: the number may come again.
    assert!(matches!(
        scheduler.begin_write("w", run.id, 2),
        Ok(Admitted::Write(_))
    ));
    assert_eq!(scheduler.end_write(run.id, 2, Written::Failed), None);
    assert!(matches!(
        scheduler.begin_write("w", run.id, 2),
        Ok(Admitted::Write(_))
    ));
    assert_eq!(scheduler.end_write(run.id, 2, Written::Finished), None);
    assert_eq!(scheduler.begin_write("w", run.id, 3), Err(Stale), "over");
}

#[test]
fn a_queued_run_can_be_cancelled_an_assigned_one_cannot() {
    let mut scheduler = Scheduler::new(0);
    let mut ids = Ids::default();
    scheduler.add_worker("w", 1);
    scheduler.enqueue(key("a", "a0"));
    scheduler.enqueue(key("a", "a1"));
    scheduler.dispatch(ids.next());
    assert!(!scheduler.cancel_queued(&key("a", "a0")), "it is assigned");
    assert!(scheduler.cancel_queued(&key("a", "a1")));
    assert!(!scheduler.cancel_queued(&key("a", "a1")), "already gone");
    assert_eq!(scheduler.queued(), 0);
    assert_eq!(
        scheduler.assignment_of(&key("a", "a0")).map(|(_, w)| w),
        Some("w")
    );
}

// The model: what the rules say should happen, kept apart from the
// scheduler's own bookkeeping.

const TENANTS: [&str; 3] = ["a", "b", "c"];
const WORKERS: [&str; 3] = ["w0", "w1", "w2"];

#[derive(Debug, Clone)]
enum Op {
    Start {
        tenant: usize,
    },
    /// Starts a run that is queued or assigned again (a duplicate request).
    StartAgain {
        run: Index,
    },
    AddWorker {
        worker: usize,
        capacity: u32,
    },
    RemoveWorker {
        worker: usize,
    },
    Dispatch,
    /// A checkpoint of an assignment that is live, or (`any`) of any ever
    /// given; from its worker or another; numbered `ahead` past the last
    /// stored.
    BeginWrite {
        assignment: Index,
        any: bool,
        own_worker: bool,
        ahead: u64,
    },
    EndWrite {
        write: Index,
        written: Written,
    },
    /// A run that could not start ends.
    Finish {
        assignment: Index,
    },
    Release {
        assignment: Index,
        own_worker: bool,
    },
    Cancel {
        run: Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TENANTS.len()).prop_map(|tenant| Op::Start { tenant }),
        1 => any::<Index>().prop_map(|run| Op::StartAgain { run }),
        2 => (0..WORKERS.len(), 1..=4u32)
            .prop_map(|(worker, capacity)| Op::AddWorker { worker, capacity }),
        1 => (0..WORKERS.len()).prop_map(|worker| Op::RemoveWorker { worker }),
        4 => Just(Op::Dispatch),
        4 => (any::<Index>(), prop::bool::weighted(0.2), prop::bool::weighted(0.9), 0..3u64)
            .prop_map(|(assignment, any, own_worker, ahead)| Op::BeginWrite {
                assignment,
                any,
                own_worker,
                ahead
            }),
        4 => (
            any::<Index>(),
            prop_oneof![
                Just(Written::Stored),
                Just(Written::Finished),
                Just(Written::Failed)
            ]
        )
            .prop_map(|(write, written)| Op::EndWrite { write, written }),
        1 => any::<Index>().prop_map(|assignment| Op::Finish { assignment }),
        1 => (any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(assignment, own_worker)| Op::Release { assignment, own_worker }),
        1 => any::<Index>().prop_map(|run| Op::Cancel { run }),
    ]
}

/// Where a run that is not done is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Queued,
    /// Under a current assignment.
    Assigned(u64),
    /// Its assignment was revoked while a write was in progress.
    Revoked(u64),
}

/// An assignment that is not over (its run neither finished nor queued
/// again).
#[derive(Debug)]
struct ModelAssignment {
    key: RunKey,
    worker: String,
    /// The worker's connection it was given to.
    generation: u64,
    applied: u64,
    writing: u32,
    revoked: bool,
}

#[derive(Debug)]
struct ModelWorker {
    generation: u64,
    capacity: u32,
    given: u64,
}

#[derive(Debug)]
struct Model {
    limit: u32,
    /// Every run started, in order.
    started: Vec<RunKey>,
    /// Runs not finished or cancelled.
    runs: BTreeMap<RunKey, RunState>,
    /// Each tenant's waiting runs, in the order they must go.
    queues: BTreeMap<String, VecDeque<RunKey>>,
    assignments: BTreeMap<u64, ModelAssignment>,
    /// Assignments that are over, with their worker.
    over: BTreeMap<u64, String>,
    workers: BTreeMap<String, ModelWorker>,
    generations: u64,
    /// Writes admitted and not yet ended: (assignment, number).
    writes: Vec<(u64, u64)>,
    /// (y, x): x was served while y was waiting and below its limit, so y
    /// must be served before x is again.
    owed: BTreeSet<(String, String)>,
}

impl Model {
    fn new(limit: u32) -> Model {
        Model {
            limit,
            started: Vec::new(),
            runs: BTreeMap::new(),
            queues: BTreeMap::new(),
            assignments: BTreeMap::new(),
            over: BTreeMap::new(),
            workers: BTreeMap::new(),
            generations: 0,
            writes: Vec::new(),
            owed: BTreeSet::new(),
        }
    }

    /// Whether `a` holds a slot of its worker's present connection.
    fn holds_slot(&self, a: &ModelAssignment) -> bool {
        self.workers
            .get(&a.worker)
            .is_some_and(|w| w.generation == a.generation)
    }

    fn free(&self, worker: &str) -> usize {
        let Some(w) = self.workers.get(worker) else {
            return 0;
        };
        let held = self
            .assignments
            .values()
            .filter(|a| a.worker == worker && self.holds_slot(a))
            .count();
        assert!(held <= w.capacity as usize, "{worker} holds {held} runs");
        w.capacity as usize - held
    }

    fn in_flight(&self, tenant: &str) -> usize {
        self.assignments
            .values()
            .filter(|a| a.key.0 == tenant)
            .count()
    }

    fn eligible(&self, tenant: &str) -> bool {
        self.queues.get(tenant).is_some_and(|q| !q.is_empty())
            && (self.limit == 0 || self.in_flight(tenant) < self.limit as usize)
    }

    /// Ends assignment `id`.
    fn end(&mut self, id: u64) -> RunKey {
        let a = self.assignments.remove(&id).expect("a live assignment");
        self.over.insert(id, a.worker);
        a.key
    }

    fn requeue(&mut self, key: RunKey) {
        self.runs.insert(key.clone(), RunState::Queued);
        self.queues
            .entry(key.0.clone())
            .or_default()
            .push_front(key);
    }

    /// Applies revocations the scheduler reported, after checking they are
    /// exactly the live, unrevoked assignments `expected`.
    fn revoked(&mut self, expected: BTreeSet<u64>, revoked: &[Revoked]) {
        let got: BTreeSet<u64> = revoked.iter().map(|r| r.id).collect();
        assert_eq!(got, expected, "revoked assignments");
        assert_eq!(got.len(), revoked.len(), "each revoked once");
        for r in revoked {
            let a = self.assignments.get_mut(&r.id).expect("a live assignment");
            assert_eq!(r.key, a.key);
            assert_eq!(r.requeued, a.writing == 0, "requeued unless writing");
            a.revoked = true;
            if r.requeued {
                let key = self.end(r.id);
                self.requeue(key);
            } else {
                self.runs.insert(r.key.clone(), RunState::Revoked(r.id));
            }
        }
    }

    /// The unrevoked assignments of `worker`'s present connection.
    fn held_by(&self, worker: &str) -> BTreeSet<u64> {
        self.assignments
            .iter()
            .filter(|(_, a)| a.worker == worker && !a.revoked && self.holds_slot(a))
            .map(|(id, _)| *id)
            .collect()
    }

    fn step(&mut self, scheduler: &mut Scheduler, ids: &mut Ids, op: &Op) {
        match op {
            Op::Start { tenant } => {
                let key = key(TENANTS[*tenant], &format!("r{}", self.started.len()));
                assert!(scheduler.enqueue(key.clone()), "a new run is queued");
                self.started.push(key.clone());
                self.runs.insert(key.clone(), RunState::Queued);
                self.queues.entry(key.0.clone()).or_default().push_back(key);
            }
            Op::StartAgain { run } => {
                if !self.runs.is_empty() {
                    let key = self.runs.keys().nth(run.index(self.runs.len()));
                    let key = key.expect("in range").clone();
                    assert!(!scheduler.enqueue(key), "queued or assigned already");
                }
            }
            Op::AddWorker { worker, capacity } => {
                let worker = WORKERS[*worker];
                let expected = self.held_by(worker);
                let revoked = scheduler.add_worker(worker, *capacity);
                self.generations += 1;
                self.workers.insert(
                    worker.to_owned(),
                    ModelWorker {
                        generation: self.generations,
                        capacity: *capacity,
                        given: 0,
                    },
                );
                self.revoked(expected, &revoked);
            }
            Op::RemoveWorker { worker } => {
                let worker = WORKERS[*worker];
                let expected = self.held_by(worker);
                let revoked = scheduler.remove_worker(worker);
                match self.workers.remove(worker) {
                    Some(_) => self.revoked(expected, &revoked.expect("it was there")),
                    None => assert_eq!(revoked, None, "{worker} was not there"),
                }
            }
            Op::Dispatch => {
                for assigned in scheduler.dispatch(ids.next()) {
                    self.assigned(assigned);
                }
                let free = self.workers.keys().any(|w| self.free(w) > 0);
                let waiting = TENANTS.iter().any(|t| self.eligible(t));
                assert!(
                    !(free && waiting),
                    "dispatch stopped with a free slot and a run that may go"
                );
            }
            Op::BeginWrite {
                assignment,
                any,
                own_worker,
                ahead,
            } => {
                let mut pool: Vec<u64> = self.assignments.keys().copied().collect();
                if *any {
                    pool.extend(self.over.keys());
                }
                if pool.is_empty() {
                    return;
                }
                let id = pool[assignment.index(pool.len())];
                if let Some(worker) = self.over.get(&id) {
                    let worker = if *own_worker {
                        worker.clone()
                    } else {
                        format!("not-{worker}")
                    };
                    assert_eq!(scheduler.begin_write(&worker, id, 1 + ahead), Err(Stale));
                    return;
                }
                let a = self.assignments.get_mut(&id).expect("live");
                let worker = if *own_worker {
                    a.worker.clone()
                } else {
                    format!("not-{}", a.worker)
                };
                let seq = a.applied + ahead;
                let got = scheduler.begin_write(&worker, id, seq);
                if a.revoked || !own_worker {
                    assert_eq!(got, Err(Stale), "assignment {id}: {a:?}");
                } else if seq <= a.applied {
                    assert_eq!(got, Ok(Admitted::Repeat), "number {seq} again");
                } else {
                    assert_eq!(got, Ok(Admitted::Write(a.key.clone())));
                    a.writing += 1;
                    self.writes.push((id, seq));
                }
            }
            Op::EndWrite { write, written } => {
                if self.writes.is_empty() {
                    return;
                }
                let (id, seq) = self.writes.remove(write.index(self.writes.len()));
                let got = scheduler.end_write(id, seq, *written);
                let Some(a) = self.assignments.get_mut(&id) else {
                    assert_eq!(got, None, "its run already finished");
                    return;
                };
                a.writing -= 1;
                if *written != Written::Failed {
                    a.applied = a.applied.max(seq);
                }
                if *written == Written::Finished {
                    assert_eq!(got, None);
                    let key = self.end(id);
                    self.runs.remove(&key);
                } else if a.revoked && a.writing == 0 {
                    assert_eq!(got, Some(a.key.clone()), "queued after its last write");
                    let key = self.end(id);
                    self.requeue(key);
                } else {
                    assert_eq!(got, None);
                }
            }
            Op::Finish { assignment } => {
                // Only a run that has written nothing fails to start.
                let idle: Vec<u64> = self
                    .assignments
                    .iter()
                    .filter(|(_, a)| a.writing == 0)
                    .map(|(id, _)| *id)
                    .collect();
                if idle.is_empty() {
                    return;
                }
                let id = idle[assignment.index(idle.len())];
                assert!(scheduler.finish(id));
                let key = self.end(id);
                self.runs.remove(&key);
                assert!(!scheduler.finish(id), "finished once");
            }
            Op::Release {
                assignment,
                own_worker,
            } => {
                if self.assignments.is_empty() {
                    return;
                }
                let index = assignment.index(self.assignments.len());
                let (id, a) = self.assignments.iter().nth(index).expect("in range");
                let id = *id;
                let worker = if *own_worker {
                    a.worker.clone()
                } else {
                    format!("not-{}", a.worker)
                };
                let expected = if *own_worker && !a.revoked {
                    BTreeSet::from([id])
                } else {
                    BTreeSet::new()
                };
                let got = scheduler.release(&worker, id);
                self.revoked(expected, got.as_slice());
            }
            Op::Cancel { run } => {
                if self.started.is_empty() {
                    return;
                }
                let key = self.started[run.index(self.started.len())].clone();
                let queued = self.runs.get(&key) == Some(&RunState::Queued);
                assert_eq!(scheduler.cancel_queued(&key), queued, "{key:?}");
                if queued {
                    self.runs.remove(&key);
                    if let Some(queue) = self.queues.get_mut(&key.0) {
                        queue.retain(|k| *k != key);
                    }
                }
            }
        }
    }

    /// Checks one run given by dispatch against the rules, then records it.
    fn assigned(&mut self, assigned: Assigned) {
        let Assigned { id, key, worker } = assigned;
        let tenant = key.0.clone();
        assert!(
            self.eligible(&tenant),
            "{tenant} had nothing waiting or was at its limit"
        );
        // Round robin: nobody who was passed over for this tenant, and may
        // go now, is passed over again.
        for (y, x) in &self.owed {
            assert!(
                !(*x == tenant && self.eligible(y)),
                "{tenant} served again before {y}"
            );
        }
        self.owed.retain(|(y, _)| *y != tenant);
        for y in TENANTS {
            if y != tenant && self.eligible(y) {
                self.owed.insert((y.to_owned(), tenant.clone()));
            }
        }
        // FIFO within the tenant, requeued runs first.
        let queue = self.queues.get_mut(&tenant).expect("a queue");
        assert_eq!(queue.pop_front().as_ref(), Some(&key), "out of order");
        assert_eq!(self.runs.get(&key), Some(&RunState::Queued));
        // The worker with most free slots, then the one given the fewest.
        let rank = |model: &Model, w: &str| (model.free(w), Reverse(model.workers[w].given));
        assert!(self.free(&worker) > 0, "{worker} is full");
        let best = self
            .workers
            .keys()
            .map(|w| rank(self, w))
            .max()
            .expect("a worker");
        assert_eq!(rank(self, &worker), best, "{worker} was not the freest");
        assert!(
            !self.assignments.contains_key(&id) && !self.over.contains_key(&id),
            "id {id} given twice"
        );
        let w = self.workers.get_mut(&worker).expect("a worker");
        w.given += 1;
        let generation = w.generation;
        self.assignments.insert(
            id,
            ModelAssignment {
                key: key.clone(),
                worker,
                generation,
                applied: 0,
                writing: 0,
                revoked: false,
            },
        );
        self.runs.insert(key, RunState::Assigned(id));
        let limit = self.limit as usize;
        assert!(limit == 0 || self.in_flight(&tenant) <= limit);
    }

    /// Every rule, checked against the scheduler as it is now.
    fn check(&self, scheduler: &Scheduler) {
        // No worker holds more than its capacity.
        assert_eq!(
            scheduler.workers.keys().collect::<Vec<_>>(),
            self.workers.keys().collect::<Vec<_>>()
        );
        for (name, slot) in &scheduler.workers {
            assert!(slot.assignments.len() <= slot.capacity as usize, "{name}");
            assert_eq!(slot.capacity, self.workers[name].capacity);
            let expected: BTreeSet<u64> = self
                .assignments
                .iter()
                .filter(|(_, a)| a.worker == *name && self.holds_slot(a))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(slot.assignments, expected, "{name}'s slot");
        }
        // At most one current assignment per run; the scheduler's
        // assignments are the model's live ones.
        let mut current = BTreeSet::new();
        for (id, a) in &scheduler.assignments {
            let model = self.assignments.get(id);
            let model = model.unwrap_or_else(|| panic!("assignment {id} should be over"));
            assert_eq!((&a.key, &a.worker), (&model.key, &model.worker));
            assert_eq!(
                (a.revoked, a.writing, a.applied),
                (model.revoked, model.writing, model.applied),
                "assignment {id}"
            );
            if !a.revoked {
                assert!(current.insert(a.key.clone()), "two writers of {:?}", a.key);
            }
        }
        assert_eq!(scheduler.assignments.len(), self.assignments.len());
        // No tenant above its limit.
        if self.limit > 0 {
            for tenant in TENANTS {
                let held = scheduler
                    .assignments
                    .values()
                    .filter(|a| a.key.0 == tenant)
                    .count();
                assert!(held <= self.limit as usize, "{tenant} holds {held}");
            }
        }
        // Each run is in exactly one place: queued (once, where the rules
        // put it), assigned, revoked and being written, or done (in none).
        for (tenant, queue) in &self.queues {
            let actual: Vec<RunKey> = scheduler
                .tenants
                .get(tenant)
                .map(|t| t.queue.iter().map(|r| key(tenant, r)).collect())
                .unwrap_or_default();
            assert_eq!(actual, Vec::from_iter(queue.iter().cloned()), "{tenant}");
        }
        let queued: usize = scheduler.tenants.values().map(|t| t.queue.len()).sum();
        assert_eq!(queued, scheduler.queued.len());
        for (key, state) in &self.runs {
            let in_queue = scheduler.queued.contains(key);
            let assignment = scheduler.by_run.get(key).map(|id| {
                let a = &scheduler.assignments[id];
                (*id, a.revoked)
            });
            match state {
                RunState::Queued => assert!(in_queue && assignment.is_none(), "{key:?}"),
                RunState::Assigned(id) => {
                    assert!(!in_queue && assignment == Some((*id, false)), "{key:?}")
                }
                RunState::Revoked(id) => {
                    assert!(!in_queue && assignment == Some((*id, true)), "{key:?}");
                    assert!(scheduler.assignments[id].writing > 0);
                }
            }
        }
        // So a run done is neither queued nor assigned.
        let waiting = self.runs.values().filter(|s| **s == RunState::Queued);
        assert_eq!(scheduler.queued.len(), waiting.count());
        assert_eq!(
            scheduler.by_run.len(),
            self.runs.len() - scheduler.queued.len()
        );
        // Turns list exactly the tenants with runs waiting, at their turn.
        for (name, tenant) in &scheduler.tenants {
            let in_turn = scheduler.turns.contains(&(tenant.turn, name.clone()));
            assert_eq!(in_turn, !tenant.queue.is_empty(), "{name}");
            assert_eq!(tenant.in_flight as usize, self.in_flight(name), "{name}");
        }
        let waiting = scheduler.tenants.values().filter(|t| !t.queue.is_empty());
        assert_eq!(waiting.count(), scheduler.turns.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn scheduling_rules_hold_after_every_step(
        limit in 0..=3u32,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut scheduler = Scheduler::new(limit);
        let mut model = Model::new(limit);
        let mut ids = Ids::default();
        for op in &ops {
            model.step(&mut scheduler, &mut ids, op);
            model.check(&scheduler);
        }
    }
}
