//! The plugin threads: plain threads (guest code never runs on, and never blocks, the async
//! runtime's workers) fed by the fair scheduler (`fair.rs`), and a watchdog thread that gives up
//! on invocations stuck past their deadline and replaces their threads. This module owns the
//! threads and reads the clock; every decision is the scheduler's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::fair::{Cut, Done, Fair, FairConfig, Job, Start};

/// Runs plugin invocations on the scheduler's threads.
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", self.shared.lock().config())
            .finish()
    }
}

struct Shared {
    fair: Mutex<Fair>,
    /// Idle threads wait here for work.
    work: Condvar,
    /// The watchdog waits here for the next deadline.
    watch: Condvar,
    /// Set when the pool is dropped: threads end once idle.
    closed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Fair> {
        self.fair.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Pool {
    pub fn new(config: FairConfig) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            fair: Mutex::new(Fair::new(config)),
            work: Condvar::new(),
            watch: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        for _ in 0..config.threads {
            spawn_worker(&shared)?;
        }
        let watchdog = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("callflow-plugin-watchdog".into())
            .spawn(move || watch(&watchdog))?;
        Ok(Pool { shared })
    }

    /// Queues `job`, or refuses it at once when its account's queue or the pool's is full.
    pub fn submit(&self, job: Job) -> Result<(), Cut> {
        let account = Arc::clone(&job.tenant.account);
        let refused = self.shared.lock().handle_submit(Instant::now(), job);
        match refused {
            Ok(()) => {
                self.shared.work.notify_one();
                Ok(())
            }
            Err(cut) => {
                metrics::counter!("callflow_plugin_refused_total", "account" => account.to_string(), "reason" => reason(cut))
                    .increment(1);
                Err(cut)
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.work.notify_all();
        self.shared.watch.notify_all();
    }
}

fn reason(cut: Cut) -> &'static str {
    match cut {
        Cut::AccountQueueFull => "account-queue-full",
        Cut::QueueFull => "queue-full",
        Cut::Waited(_) => "waited-too-long",
        Cut::Abandoned(_) => "abandoned",
    }
}

fn spawn_worker(shared: &Arc<Shared>) -> std::io::Result<()> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("callflow-plugin".into())
        .spawn(move || work(&shared))
        .map(|_| ())
}

/// One plugin thread: takes invocations until the pool is closed or the thread is replaced.
fn work(shared: &Shared) {
    loop {
        let Some(start) = next(shared) else { return };
        let Start {
            id,
            tenant,
            waited,
            run,
        } = start;
        metrics::histogram!("callflow_plugin_queue_seconds", "account" => tenant.account.to_string())
            .record(waited.as_secs_f64());
        // a panicking job drops its result sender (its caller sees an internal error); the
        // thread goes on
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
            tracing::error!("a plugin job panicked");
        }
        let done = shared.lock().handle_done(Instant::now(), id);
        // what this run held (an account's upload slot, a lost thread) may let another start
        // besides the one this thread takes next
        shared.work.notify_one();
        if done == Done::Exit {
            tracing::info!(account = %tenant.account, "a plugin thread abandoned by the watchdog returned and ends");
            return;
        }
    }
}

/// The next invocation to run, waiting for one; `None` once the pool is closed.
fn next(shared: &Shared) -> Option<Start> {
    let mut fair = shared.lock();
    loop {
        if shared.closed() {
            return None;
        }
        if let Some(start) = fair.poll_job(Instant::now()) {
            return Some(start);
        }
        fair = shared
            .work
            .wait_timeout(fair, Duration::from_secs(1))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// The watchdog: sleeps until the scheduler's next timeout, then tells the callers of abandoned
/// or expired invocations and replaces stuck threads. Nobody wakes it when work comes or
/// starts (that would cost a wake-up per invocation): it never sleeps longer than the shortest
/// time a new invocation may wait or run past its deadline, so it cannot oversleep one.
fn watch(shared: &Arc<Shared>) {
    let mut fair = shared.lock();
    let config = *fair.config();
    let longest_sleep = config
        .grace
        .min(config.max_wait)
        .min(Duration::from_secs(1));
    loop {
        if shared.closed() {
            return;
        }
        let now = Instant::now();
        let cut = fair.handle_timeout(now);
        if !cut.is_empty() {
            drop(fair);
            for c in cut {
                let account = c.tenant.account.to_string();
                match c.cut {
                    Cut::Abandoned(ran) => {
                        tracing::warn!(account = %account, builtin = c.tenant.builtin, ran_ms = ran.as_millis() as u64,
                            replaced = c.replace, "a plugin invocation was stuck past its deadline and was abandoned");
                        metrics::counter!("callflow_plugin_abandoned_total", "account" => account.clone())
                            .increment(1);
                    }
                    cut => {
                        metrics::counter!("callflow_plugin_refused_total", "account" => account.clone(), "reason" => reason(cut))
                            .increment(1);
                    }
                }
                if c.replace
                    && let Err(e) = spawn_worker(shared)
                {
                    tracing::error!(error = %e, "no thread could replace a stuck plugin thread");
                }
                (c.notify)(c.cut);
            }
            shared.work.notify_all();
            fair = shared.lock();
            continue;
        }
        let wait = fair
            .poll_timeout()
            .map_or(longest_sleep, |t| t.saturating_duration_since(now))
            .min(longest_sleep);
        fair = shared
            .watch
            .wait_timeout(fair, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::fair::Tenant;

    fn config() -> FairConfig {
        FairConfig {
            grace: Duration::from_millis(50),
            ..FairConfig::for_threads(3)
        }
    }

    /// A job of `account` that sends `Ok(value)` when it runs, or `Err(cut)` when it is cut.
    fn job(
        account: &str,
        builtin: bool,
        body: impl FnOnce() -> u32 + Send + 'static,
    ) -> (Job, mpsc::Receiver<Result<u32, Cut>>) {
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        let job = Job {
            tenant: Tenant {
                account: account.into(),
                builtin,
            },
            deadline: Duration::from_millis(10),
            run: Box::new(move || {
                let _ = tx.send(Ok(body()));
            }),
            cut: Box::new(move |c| {
                let _ = tx2.send(Err(c));
            }),
        };
        (job, rx)
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn a_panicking_job_does_not_take_its_thread_with_it() {
        let pool = Pool::new(config()).unwrap();
        let (j, _rx) = job("a", true, || panic!("on purpose"));
        pool.submit(j).unwrap();
        let (j, rx) = job("a", true, || 7);
        pool.submit(j).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Ok(7));
    }

    #[test]
    fn a_stuck_job_is_abandoned_and_its_thread_replaced() {
        let pool = Pool::new(config()).unwrap();
        // three threads; built-ins stuck on all of them (blocking in host code, as no plugin
        // can any more)
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut stuck = Vec::new();
        for _ in 0..3 {
            let r = Arc::clone(&release_rx);
            let (j, rx) = job("a", true, move || {
                let _ = r.lock().unwrap().recv();
                1
            });
            pool.submit(j).unwrap();
            stuck.push(rx);
        }
        let started = Instant::now();
        for rx in &stuck {
            assert!(matches!(
                rx.recv_timeout(WAIT).unwrap(),
                Err(Cut::Abandoned(_))
            ));
        }
        // each was given up on past its 10 ms deadline and 50 ms grace
        assert!(started.elapsed() >= Duration::from_millis(60));
        // replacements run other work while the stuck threads still block
        let (j, rx) = job("b", true, || 2);
        pool.submit(j).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Ok(2));
        for _ in 0..3 {
            release_tx.send(()).unwrap();
        }
    }

    #[test]
    fn a_job_that_cannot_get_a_thread_in_time_is_cut() {
        let pool = Pool::new(FairConfig {
            threads: 2,
            reserved: 1,
            max_wait: Duration::from_millis(50),
            grace: Duration::from_secs(60),
            ..config()
        })
        .unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (j, first) = job("a", false, move || {
            let _ = release_rx.recv();
            1
        });
        pool.submit(j).unwrap();
        // the one upload thread is taken: this one waits, then is refused
        let (j, second) = job("b", false, || 2);
        pool.submit(j).unwrap();
        assert!(matches!(
            second.recv_timeout(WAIT).unwrap(),
            Err(Cut::Waited(_))
        ));
        release_tx.send(()).unwrap();
        assert_eq!(first.recv_timeout(WAIT).unwrap(), Ok(1));
    }
}
