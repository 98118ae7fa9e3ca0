//! A small pool of plain threads that run plugin invocations, so guest code never runs on (and
//! never blocks) the async runtime's workers. The queue is bounded; a full queue is refused.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug)]
pub struct Pool {
    tx: SyncSender<Job>,
}

/// The queue is full: the host is overloaded.
#[derive(Debug)]
pub struct Full;

impl Pool {
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Pool> {
        let (tx, rx) = sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("callflow-plugin-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(Pool { tx })
    }

    pub fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Full> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Full),
        }
    }
}

/// Runs jobs until the pool (its sender) is dropped.
fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv()
        };
        match job {
            // a panicking job drops its result sender (its caller sees an internal error); the
            // thread stays, so the pool never shrinks
            Ok(job) => {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a plugin job panicked");
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_does_not_take_its_thread_with_it() {
        let pool = Pool::new(1, 4).unwrap();
        pool.submit(|| panic!("on purpose")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        pool.submit(move || tx.send(7).unwrap()).unwrap();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap(),
            7
        );
    }

    #[test]
    fn runs_jobs_and_refuses_when_full() {
        let pool = Pool::new(1, 1).unwrap();
        let (block_tx, block_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<u32>();
        // the worker takes the first job and blocks; the second fills the queue; the third is refused
        pool.submit(move || block_rx.recv().unwrap()).unwrap();
        let d = done_tx.clone();
        let mut queued = false;
        for _ in 0..100 {
            let d = d.clone();
            if pool.submit(move || d.send(2).unwrap()).is_ok() {
                queued = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(queued);
        assert!(pool.submit(move || done_tx.send(3).unwrap()).is_err());
        block_tx.send(()).unwrap();
        assert_eq!(
            done_rx
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap(),
            2
        );
    }
}
