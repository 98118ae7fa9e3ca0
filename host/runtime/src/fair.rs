//! Which plugin invocation runs next, and which has run too long: the plugin threads' scheduler
//! as a pure state machine (time is an argument; `pool.rs` owns the threads and the clock).
//!
//! - **Per-account queues, deficit round robin.** Every account with waiting invocations has a
//!   place in a ring. A visit runs one invocation of an account that has credit; what an
//!   invocation cost (its wall time) is charged to its account when it ends, so an account whose
//!   plugins run long waits its turn out while others go on. When every waiting account is in
//!   debt, a new round gives each the quanta the least indebted one needs (work is never held
//!   back for fairness alone); credit never exceeds one quantum, so idle time cannot be banked.
//! - **Caps.** An account's uploaded plugins run on at most `account_running` threads, and all
//!   uploaded plugins together on at most `threads - reserved`: the reserved threads are for
//!   built-in plugins (the TwiML interpreter of live calls), which uploaded code cannot take.
//!   An account may have `account_queued` invocations waiting and everyone `queued`; past that a
//!   submission is refused at once. An invocation that waited `max_wait` is dropped, refused.
//! - **The watchdog.** A deadline is the plugin's own CPU time, which a busy machine gives it
//!   slowly; an invocation still running [`WALL_PER_DEADLINE`] times its deadline and `grace`
//!   after it started, in real time, is stuck outside Wasm (the CPU-time deadline stops running
//!   guest code on time, however busy the machine). It is abandoned: its caller
//!   hears at once, and its thread is replaced (up to `max_stuck` replacements at a time), so even
//!   an unknown blocking path cannot take capacity for good. The stuck invocation keeps its
//!   account's slot until it really returns, so one account cannot stack up stuck threads.
//!
//! Drain order for the driver: `handle_submit` from callers; an idle thread `poll_job`s and
//! reports `handle_done`; a watchdog sleeps until `poll_timeout` and then `handle_timeout`s.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The watchdog's bound in real time, in deadlines (plus `grace`): a deadline counts the
/// plugin's CPU time, so a thread sharing its core with two others still times out (rather
/// than being abandoned as stuck) before this.
pub const WALL_PER_DEADLINE: u32 = 3;

/// The scheduler's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairConfig {
    /// Threads that run plugins.
    pub threads: usize,
    /// Threads only built-in plugins may use.
    pub reserved: usize,
    /// Uploaded-plugin invocations one account may run at once.
    pub account_running: usize,
    /// Invocations one account may have waiting.
    pub account_queued: usize,
    /// Invocations that may wait in all.
    pub queued: usize,
    /// How long an invocation may wait for a thread.
    pub max_wait: Duration,
    /// How long past its deadline an invocation runs before it is abandoned.
    pub grace: Duration,
    /// Threads abandoned and replaced at once, at most; past that one is abandoned without a
    /// replacement and the pool works with one thread less until it returns.
    pub max_stuck: usize,
    /// The deficit round robin's quantum.
    pub quantum: Duration,
}

impl FairConfig {
    /// Bounds for `threads` threads: a quarter of them (at least one) reserved for built-in
    /// plugins, and an account's uploads on at most half of the rest (at least one).
    pub fn for_threads(threads: usize) -> FairConfig {
        let threads = threads.max(2);
        let reserved = (threads / 4).max(1);
        FairConfig {
            threads,
            reserved,
            account_running: ((threads - reserved) / 2).max(1),
            account_queued: 512,
            queued: 4096,
            max_wait: Duration::from_secs(5),
            // generous: guest code is stopped by its epoch deadline, so only a host call that
            // blocks (none is known) lives this long; epochs also lag real time on a busy box
            grace: Duration::from_secs(1),
            max_stuck: 64,
            quantum: Duration::from_millis(1),
        }
    }
}

/// Who an invocation's time is charged to, and whether its code is ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub account: Arc<str>,
    /// A built-in plugin (ours, embedded in the binary) rather than an account's upload.
    pub builtin: bool,
}

/// Why an invocation did not run, or did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its account has `account_queued` invocations waiting.
    AccountQueueFull,
    /// `queued` invocations wait in all.
    QueueFull,
    /// It waited `max_wait` for a thread.
    Waited(Duration),
    /// It ran `grace` past its deadline and was abandoned.
    Abandoned(Duration),
}

/// One invocation: what runs on a thread, and what tells its caller when it cannot finish.
pub struct Job {
    pub tenant: Tenant,
    /// The invocation's own deadline (the watchdog adds `grace`).
    pub deadline: Duration,
    pub run: Box<dyn FnOnce() + Send>,
    pub cut: Box<dyn FnOnce(Cut) + Send>,
}

/// An invocation handed to a thread.
pub struct Start {
    pub id: u64,
    pub tenant: Tenant,
    /// How long it waited in its queue.
    pub waited: Duration,
    pub run: Box<dyn FnOnce() + Send>,
}

/// What a thread does once its invocation returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Take the next invocation.
    Continue,
    /// The thread was abandoned and replaced: end it.
    Exit,
}

/// An invocation given up on by [`Fair::handle_timeout`]. `replace` says whether the driver
/// starts a thread in place of the stuck one (only for a running one).
pub struct Cutoff {
    pub tenant: Tenant,
    pub cut: Cut,
    pub replace: bool,
    pub notify: Box<dyn FnOnce(Cut) + Send>,
}

struct Waiting {
    job: Job,
    since: Instant,
}

#[derive(Default)]
struct Account {
    builtin: VecDeque<Waiting>,
    uploaded: VecDeque<Waiting>,
    /// Uploaded invocations running, abandoned ones included until they return.
    uploaded_running: usize,
    /// Credit (positive) or debt, in nanoseconds of plugin time.
    deficit: i64,
}

impl Account {
    fn waiting(&self) -> usize {
        self.builtin.len() + self.uploaded.len()
    }
}

enum RunState {
    Live {
        give_up_at: Instant,
        cut: Box<dyn FnOnce(Cut) + Send>,
    },
    Abandoned {
        replaced: bool,
    },
}

struct Run {
    tenant: Tenant,
    started: Instant,
    state: RunState,
}

/// The scheduler. See the module's documentation.
pub struct Fair {
    config: FairConfig,
    accounts: HashMap<Arc<str>, Account>,
    /// Accounts with waiting invocations, in turn order.
    ring: VecDeque<Arc<str>>,
    waiting: usize,
    runs: HashMap<u64, Run>,
    next_id: u64,
    /// Live (not abandoned) runs, all and uploaded.
    live: usize,
    live_uploaded: usize,
    /// Abandoned runs whose thread was replaced, and those whose thread was not.
    stuck_replaced: usize,
    stuck_lost: usize,
}

impl Fair {
    pub fn new(config: FairConfig) -> Fair {
        Fair {
            config,
            accounts: HashMap::new(),
            ring: VecDeque::new(),
            waiting: 0,
            runs: HashMap::new(),
            next_id: 0,
            live: 0,
            live_uploaded: 0,
            stuck_replaced: 0,
            stuck_lost: 0,
        }
    }

    pub fn config(&self) -> &FairConfig {
        &self.config
    }

    /// Queues `job`, or refuses it at once (its `cut` is not called: the caller has the error).
    pub fn handle_submit(&mut self, now: Instant, job: Job) -> Result<(), Cut> {
        if self.waiting >= self.config.queued {
            return Err(Cut::QueueFull);
        }
        let account = self
            .accounts
            .entry(Arc::clone(&job.tenant.account))
            .or_insert_with(|| Account {
                deficit: nanos(self.config.quantum),
                ..Account::default()
            });
        if account.waiting() >= self.config.account_queued {
            return Err(Cut::AccountQueueFull);
        }
        if account.waiting() == 0 {
            self.ring.push_back(Arc::clone(&job.tenant.account));
        }
        let builtin = job.tenant.builtin;
        let waiting = Waiting { job, since: now };
        if builtin {
            account.builtin.push_back(waiting);
        } else {
            account.uploaded.push_back(waiting);
        }
        self.waiting += 1;
        Ok(())
    }

    /// The next invocation for an idle thread, if any may run now.
    pub fn poll_job(&mut self, now: Instant) -> Option<Start> {
        let capacity = self.config.threads.saturating_sub(self.stuck_lost);
        if self.live >= capacity {
            return None;
        }
        let at = self.pick(capacity)?;
        let name = self.ring.remove(at)?;
        let account = self.accounts.get_mut(&name)?;
        let waiting = match account.builtin.pop_front() {
            Some(w) => w,
            None => account.uploaded.pop_front()?,
        };
        if account.waiting() > 0 {
            self.ring.push_back(name);
        } else {
            account.deficit = account.deficit.min(0);
        }
        self.waiting -= 1;
        let Waiting { job, since } = waiting;
        if !job.tenant.builtin {
            account.uploaded_running += 1;
            self.live_uploaded += 1;
        }
        self.live += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.runs.insert(
            id,
            Run {
                tenant: job.tenant.clone(),
                started: now,
                state: RunState::Live {
                    give_up_at: now + job.deadline * WALL_PER_DEADLINE + self.config.grace,
                    cut: job.cut,
                },
            },
        );
        Some(Start {
            id,
            tenant: job.tenant,
            waited: now.saturating_duration_since(since),
            run: job.run,
        })
    }

    /// The ring position of the account to serve: the first eligible one with credit, after as
    /// many new rounds as that takes.
    fn pick(&mut self, capacity: usize) -> Option<usize> {
        let uploads_open = self.live_uploaded < capacity.saturating_sub(self.config.reserved);
        let eligible = |a: &Account| {
            !a.builtin.is_empty()
                || (!a.uploaded.is_empty()
                    && uploads_open
                    && a.uploaded_running < self.config.account_running)
        };
        let mut richest: Option<i64> = None;
        for (i, name) in self.ring.iter().enumerate() {
            let a = &self.accounts[name];
            if !eligible(a) {
                continue;
            }
            if a.deficit > 0 {
                return Some(i);
            }
            richest = Some(richest.map_or(a.deficit, |r| r.max(a.deficit)));
        }
        // Everyone who could run is in debt: new rounds, enough for the least indebted.
        let quantum = nanos(self.config.quantum).max(1);
        let rounds = (-richest?) / quantum + 1;
        for name in &self.ring {
            if let Some(a) = self.accounts.get_mut(name) {
                a.deficit = a.deficit.saturating_add(rounds * quantum).min(quantum);
            }
        }
        self.ring
            .iter()
            .position(|name| eligible(&self.accounts[name]) && self.accounts[name].deficit > 0)
    }

    /// The invocation `id` returned: its time is charged to its account.
    pub fn handle_done(&mut self, now: Instant, id: u64) -> Done {
        let Some(run) = self.runs.remove(&id) else {
            return Done::Continue;
        };
        let cost = nanos(now.saturating_duration_since(run.started));
        let account = self.accounts.get_mut(&run.tenant.account);
        if let Some(a) = account {
            a.deficit = a.deficit.saturating_sub(cost);
            if !run.tenant.builtin {
                a.uploaded_running = a.uploaded_running.saturating_sub(1);
            }
        }
        let done = match run.state {
            RunState::Live { .. } => {
                self.live -= 1;
                if !run.tenant.builtin {
                    self.live_uploaded -= 1;
                }
                Done::Continue
            }
            RunState::Abandoned { replaced: true } => {
                self.stuck_replaced -= 1;
                Done::Exit
            }
            RunState::Abandoned { replaced: false } => {
                self.stuck_lost -= 1;
                Done::Continue
            }
        };
        self.forget_if_idle(&run.tenant.account);
        done
    }

    /// Drops an account that has nothing waiting or running (and no debt worth keeping: debt
    /// only matters while it competes).
    fn forget_if_idle(&mut self, name: &Arc<str>) {
        if let Some(a) = self.accounts.get(name)
            && a.waiting() == 0
            && a.uploaded_running == 0
            && !self.runs.values().any(|r| r.tenant.account == *name)
        {
            self.accounts.remove(name);
        }
    }

    /// When the watchdog must look next: the earliest time a run overstays or a waiting
    /// invocation has waited too long.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let runs = self.runs.values().filter_map(|r| match &r.state {
            RunState::Live { give_up_at, .. } => Some(*give_up_at),
            RunState::Abandoned { .. } => None,
        });
        let waits = self.accounts.values().flat_map(|a| {
            [a.builtin.front(), a.uploaded.front()]
                .into_iter()
                .flatten()
                .map(|w| w.since + self.config.max_wait)
        });
        runs.chain(waits).min()
    }

    /// Abandons runs past their deadline and grace, and drops invocations that waited too long.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Cutoff> {
        let mut cut = Vec::new();
        let overdue: Vec<u64> = self
            .runs
            .iter()
            .filter(
                |(_, r)| matches!(r.state, RunState::Live { give_up_at, .. } if give_up_at <= now),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            let Some(run) = self.runs.get_mut(&id) else {
                continue;
            };
            let replace = self.stuck_replaced < self.config.max_stuck;
            let state =
                std::mem::replace(&mut run.state, RunState::Abandoned { replaced: replace });
            let RunState::Live { cut: notify, .. } = state else {
                continue;
            };
            self.live -= 1;
            if !run.tenant.builtin {
                self.live_uploaded -= 1;
            }
            if replace {
                self.stuck_replaced += 1;
            } else {
                self.stuck_lost += 1;
            }
            cut.push(Cutoff {
                tenant: run.tenant.clone(),
                cut: Cut::Abandoned(now.saturating_duration_since(run.started)),
                replace,
                notify,
            });
        }
        let max_wait = self.config.max_wait;
        let mut emptied = Vec::new();
        for (name, a) in &mut self.accounts {
            for q in [&mut a.builtin, &mut a.uploaded] {
                while q.front().is_some_and(|w| w.since + max_wait <= now) {
                    let Some(w) = q.pop_front() else { break };
                    self.waiting -= 1;
                    cut.push(Cutoff {
                        tenant: w.job.tenant,
                        cut: Cut::Waited(now.saturating_duration_since(w.since)),
                        replace: false,
                        notify: w.job.cut,
                    });
                }
            }
            if a.waiting() == 0 {
                emptied.push(Arc::clone(name));
            }
        }
        if !emptied.is_empty() {
            self.ring.retain(|n| !emptied.contains(n));
            for name in &emptied {
                self.forget_if_idle(name);
            }
        }
        cut
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn config() -> FairConfig {
        FairConfig {
            threads: 3,
            reserved: 1,
            account_running: 1,
            account_queued: 4,
            queued: 10,
            max_wait: Duration::from_secs(5),
            grace: Duration::from_millis(100),
            max_stuck: 1,
            quantum: Duration::from_millis(1),
        }
    }

    type Log = Arc<Mutex<Vec<String>>>;

    /// A job whose run and cut append `name` (and the cut) to `log`.
    fn job(account: &str, builtin: bool, name: &str, log: &Log) -> Job {
        let (a, b, n, m) = (log.clone(), log.clone(), name.to_owned(), name.to_owned());
        Job {
            tenant: Tenant {
                account: account.into(),
                builtin,
            },
            deadline: Duration::from_millis(10),
            run: Box::new(move || a.lock().unwrap().push(format!("ran {n}"))),
            cut: Box::new(move |c| b.lock().unwrap().push(format!("cut {m}: {c:?}"))),
        }
    }

    fn names(starts: &[Start]) -> Vec<String> {
        starts
            .iter()
            .map(|s| format!("{}{}", s.tenant.account, s.id))
            .collect()
    }

    #[test]
    fn accounts_take_turns_whatever_their_backlog() {
        let log = Log::default();
        let mut f = Fair::new(FairConfig {
            threads: 1,
            account_queued: 10,
            ..config()
        });
        let t0 = Instant::now();
        for i in 0..3 {
            f.handle_submit(t0, job("a", true, &format!("a{i}"), &log))
                .unwrap();
        }
        f.handle_submit(t0, job("b", true, "b0", &log)).unwrap();
        let mut order = Vec::new();
        let mut now = t0;
        while let Some(s) = f.poll_job(now) {
            order.push(s.tenant.account.to_string());
            now += Duration::from_micros(100);
            assert_eq!(f.handle_done(now, s.id), Done::Continue);
        }
        assert_eq!(order, ["a", "b", "a", "a"]);
    }

    #[test]
    fn an_account_whose_plugins_run_long_waits_its_debt_out() {
        let log = Log::default();
        let mut f = Fair::new(FairConfig {
            threads: 1,
            account_queued: 10,
            ..config()
        });
        let t0 = Instant::now();
        for i in 0..4 {
            f.handle_submit(t0, job("slow", true, &format!("s{i}"), &log))
                .unwrap();
            f.handle_submit(t0, job("fast", true, &format!("f{i}"), &log))
                .unwrap();
        }
        let mut order = String::new();
        let mut now = t0;
        while let Some(s) = f.poll_job(now) {
            let slow = &*s.tenant.account == "slow";
            order.push(if slow { 's' } else { 'f' });
            now += if slow {
                Duration::from_millis(10)
            } else {
                Duration::from_micros(100)
            };
            f.handle_done(now, s.id);
        }
        // the slow account's first 10 ms lets the fast one run everything it has first
        assert_eq!(order, "sffffsss");
    }

    #[test]
    fn uploads_are_capped_per_account_and_leave_the_reserved_thread_to_builtins() {
        let log = Log::default();
        let mut f = Fair::new(config());
        let t0 = Instant::now();
        f.handle_submit(t0, job("evil", false, "e0", &log)).unwrap();
        f.handle_submit(t0, job("evil", false, "e1", &log)).unwrap();
        f.handle_submit(t0, job("good", false, "g0", &log)).unwrap();
        f.handle_submit(t0, job("good", false, "g1", &log)).unwrap();
        f.handle_submit(t0, job("calls", true, "c0", &log)).unwrap();
        let mut started = Vec::new();
        while let Some(s) = f.poll_job(t0) {
            started.push(s);
        }
        // three threads: one upload per account (two accounts fill the upload share), and the
        // reserved thread runs the built-in
        assert_eq!(names(&started), ["evil0", "good1", "calls2"]);
        // evil's second upload waits for its first even when a thread is free
        f.handle_done(t0, started[1].id);
        let next = f.poll_job(t0).unwrap();
        assert_eq!(&*next.tenant.account, "good");
        assert!(f.poll_job(t0).is_none());
    }

    #[test]
    fn queues_are_bounded_per_account_and_in_all() {
        let log = Log::default();
        let mut f = Fair::new(config());
        let t0 = Instant::now();
        for i in 0..4 {
            f.handle_submit(t0, job("a", false, &i.to_string(), &log))
                .unwrap();
        }
        assert_eq!(
            f.handle_submit(t0, job("a", true, "x", &log)),
            Err(Cut::AccountQueueFull)
        );
        for i in 0..4 {
            f.handle_submit(t0, job("b", false, &i.to_string(), &log))
                .unwrap();
        }
        f.handle_submit(t0, job("c", false, "0", &log)).unwrap();
        f.handle_submit(t0, job("c", false, "1", &log)).unwrap();
        assert_eq!(
            f.handle_submit(t0, job("d", true, "x", &log)),
            Err(Cut::QueueFull)
        );
    }

    #[test]
    fn a_run_past_its_deadline_and_grace_is_abandoned_and_its_thread_replaced_once() {
        let log = Log::default();
        let mut f = Fair::new(config());
        let t0 = Instant::now();
        f.handle_submit(t0, job("evil", false, "e0", &log)).unwrap();
        f.handle_submit(t0, job("evil2", false, "e1", &log))
            .unwrap();
        let first = f.poll_job(t0).unwrap();
        let second = f.poll_job(t0).unwrap();
        // 3 x 10 ms deadline + 100 ms grace
        assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_millis(130)));
        assert!(f.handle_timeout(t0 + Duration::from_millis(129)).is_empty());
        let cut = f.handle_timeout(t0 + Duration::from_millis(130));
        assert_eq!(cut.len(), 2);
        // max_stuck is 1: one thread is replaced, the other is lost until it returns
        let mut replaced: Vec<bool> = cut.iter().map(|c| c.replace).collect();
        replaced.sort();
        assert_eq!(replaced, [false, true]);
        for c in cut {
            assert!(matches!(c.cut, Cut::Abandoned(d) if d == Duration::from_millis(130)));
            (c.notify)(c.cut);
        }
        assert_eq!(log.lock().unwrap().len(), 2);
        // with one thread lost, two remain: builtins still run; the abandoned accounts keep
        // their upload slots until their runs return
        f.handle_submit(t0, job("evil", false, "e2", &log)).unwrap();
        f.handle_submit(t0, job("calls", true, "c", &log)).unwrap();
        let next = f.poll_job(t0).unwrap();
        assert_eq!(&*next.tenant.account, "calls");
        assert!(f.poll_job(t0).is_none());
        // the stuck runs return: the replaced thread exits, the lost one goes on
        let later = t0 + Duration::from_secs(1);
        let dones: Vec<Done> = [first.id, second.id]
            .iter()
            .map(|id| f.handle_done(later, *id))
            .collect();
        assert!(dones.contains(&Done::Exit) && dones.contains(&Done::Continue));
        assert_eq!(&*f.poll_job(later).unwrap().tenant.account, "evil");
    }

    #[test]
    fn an_invocation_that_waits_too_long_is_dropped() {
        let log = Log::default();
        let mut f = Fair::new(FairConfig {
            threads: 2,
            reserved: 1,
            ..config()
        });
        let t0 = Instant::now();
        f.handle_submit(t0, job("a", false, "a0", &log)).unwrap();
        f.handle_submit(t0, job("b", false, "b0", &log)).unwrap();
        let running = f.poll_job(t0).unwrap();
        assert!(f.poll_job(t0).is_none(), "one upload thread");
        // the run's watchdog comes first; past it (the run ends in time) the wait limit
        f.handle_done(t0 + Duration::from_millis(5), running.id);
        assert_eq!(f.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        let cut = f.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(cut.len(), 1);
        assert!(matches!(cut[0].cut, Cut::Waited(_)));
        assert_eq!(&*cut[0].tenant.account, "b");
        assert!(f.poll_job(t0 + Duration::from_secs(5)).is_none());
        assert_eq!(f.poll_timeout(), None);
        assert!(f.accounts.is_empty() && f.ring.is_empty());
    }

    #[test]
    fn default_bounds_keep_a_thread_for_builtins_and_share_the_rest() {
        let c = FairConfig::for_threads(3);
        assert_eq!((c.threads, c.reserved, c.account_running), (3, 1, 1));
        let c = FairConfig::for_threads(9);
        assert_eq!((c.threads, c.reserved, c.account_running), (9, 2, 3));
        assert_eq!(FairConfig::for_threads(1).threads, 2);
    }
}
