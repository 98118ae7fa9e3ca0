//! The epoch ticker that bounds guest time: one tick per millisecond, but only while a guest
//! runs. An idle server does not wake a thread a thousand times a second (on the SIP benchmark
//! that idle ticking was a tenth of the CPU per call).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use wasmtime::Engine;

#[derive(Default)]
struct Busy {
    running: Mutex<usize>,
    wake: Condvar,
}

impl Busy {
    fn lock(&self) -> MutexGuard<'_, usize> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ticks `engine`'s epoch every millisecond while at least one [`Running`] guard lives.
pub(crate) struct Ticker {
    busy: Arc<Busy>,
}

/// Held for the length of one guest invocation.
pub(crate) struct Running {
    busy: Arc<Busy>,
}

impl Drop for Running {
    fn drop(&mut self) {
        *self.busy.lock() -= 1;
    }
}

impl Ticker {
    /// Starts the ticker thread; it ends once the engine is dropped.
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Ticker> {
        let busy = Arc::new(Busy::default());
        let weak = engine.weak();
        let shared = Arc::clone(&busy);
        std::thread::Builder::new()
            .name("callflow-epoch".into())
            .spawn(move || {
                loop {
                    {
                        let mut running = shared.lock();
                        while *running == 0 {
                            // Wake now and then to notice the engine is gone.
                            running = shared
                                .wake
                                .wait_timeout(running, Duration::from_secs(1))
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                            if weak.upgrade().is_none() {
                                return;
                            }
                        }
                    }
                    let Some(engine) = weak.upgrade() else { return };
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })?;
        Ok(Ticker { busy })
    }

    /// Marks a guest running until the guard drops.
    pub(crate) fn running(&self) -> Running {
        *self.busy.lock() += 1;
        self.busy.wake.notify_one();
        Running {
            busy: Arc::clone(&self.busy),
        }
    }
}
