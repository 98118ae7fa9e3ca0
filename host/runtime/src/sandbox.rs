//! What one plugin invocation runs inside: a fresh store whose only capabilities are inert WASI
//! (no files, no network, empty environment, stdin closed, stdout and stderr discarded), clocks
//! frozen at the event's time and randomness drawn from the event's seed, so an invocation is
//! reproducible. Memory growth past the limit traps with [`MemoryLimitHit`].
//!
//! Nothing a plugin can call waits. Time stands still during an event, so a timer for later
//! can never fire: `wasi:clocks/monotonic-clock` and `wasi:io/poll` are implemented here (not
//! by wasmtime-wasi, whose timers sleep in real time) and a wait for something that is not
//! ready at once traps with [`WouldWait`] instead of blocking the plugin thread. Every linked
//! import and why it cannot block is listed in ARCHITECTURE.md.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::WasiCliView;
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, random};
use wasmtime_wasi::p2::pipe::{ClosedInputStream, SinkOutputStream};
use wasmtime_wasi::random::WasiRandomView;
use wasmtime_wasi::{Deterministic, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::poll::{DynPollable, Pollable, subscribe};

use crate::bindings::TYPE_INTERFACES;

/// The data of a plugin's store.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The error a trap carries when the plugin asked for more memory than it may have.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {0} bytes reached")]
pub struct MemoryLimitHit(pub usize);

struct Limiter {
    memory_bytes: usize,
}

/// Table elements a plugin may have (Rust guests use a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(MemoryLimitHit(self.memory_bytes).into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// A wall clock stopped at the event's time.
struct FrozenWall(Duration);

impl HostWallClock for FrozenWall {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// The error a trap carries when a plugin waited for something that is not ready: on frozen
/// time and closed input it would wait for ever.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WouldWait(pub &'static str);

/// The frozen monotonic clock's reading, in nanoseconds: time does not pass during an event.
/// Not zero, so a guest that subtracts a while from it does not underflow.
const FROZEN_NOW: u64 = 1_000_000_000_000;

/// A timer on the frozen monotonic clock: one due now is ready, one due later never is.
enum Timer {
    Due,
    Later,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Timer {
    async fn ready(&mut self) {
        match self {
            Timer::Due => {}
            Timer::Later => std::future::pending().await,
        }
    }
}

/// `wasi:clocks/monotonic-clock` and `wasi:io/poll` over a store's resource table, on frozen
/// time.
pub struct Frozen<'a> {
    table: &'a mut ResourceTable,
}

struct HasFrozen;

impl HasData for HasFrozen {
    type Data<'a> = Frozen<'a>;
}

impl Frozen<'_> {
    fn timer(&mut self, due_now: bool) -> wasmtime::Result<Resource<DynPollable>> {
        let timer = self
            .table
            .push(if due_now { Timer::Due } else { Timer::Later })?;
        subscribe(self.table, timer)
    }
}

impl monotonic_clock::Host for Frozen<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(FROZEN_NOW)
    }
    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(1)
    }
    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.timer(when <= FROZEN_NOW)
    }
    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.timer(duration == 0)
    }
}

/// Polls `f` once; `None` if it would have to wait. Readiness here never depends on a waker:
/// frozen timers, a closed stdin and discarding stdout are ready or not for good.
fn at_once<F: Future>(f: F) -> Option<F::Output> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

impl poll::Host for Frozen<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        at_once(async_poll::Host::poll(self.table, pollables)).unwrap_or_else(|| {
            Err(WouldWait("it polled for a timer or input that is not ready").into())
        })
    }
}

impl poll::HostPollable for Frozen<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        at_once(async_poll::HostPollable::ready(self.table, pollable)).unwrap_or(Ok(false))
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        at_once(async_poll::HostPollable::block(self.table, pollable)).unwrap_or_else(|| {
            Err(WouldWait("it blocked on a timer or input that is not ready").into())
        })
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

/// 64 bytes from `seed` (splitmix64), the cycle WASI randomness is drawn from.
fn seed_bytes(seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(64);
    for _ in 0..8 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

/// A fresh store for one invocation at `now_ms` with `seed`, limited to `memory_bytes`, that
/// traps once the guest has used `cpu_budget` of this thread's CPU time (counted from now).
///
/// The budget is CPU time, not wall-clock time: on a busy machine a plugin thread waits for a
/// core, and that wait is not the plugin's (a built-in retry policy that needs 0.1 ms must not
/// fail because the kernel ran something else for 10). The epoch ticks every millisecond
/// while guests run; at each tick the store looks at its thread's CPU clock. A guest that
/// really loops still stops within a tick of its budget; one that blocks outside its code is
/// the pool watchdog's (wall-clock) business.
pub fn store(
    engine: &Engine,
    now_ms: i64,
    seed: u64,
    memory_bytes: usize,
    cpu_budget: Duration,
) -> Store<Sandbox> {
    let wall = Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
    // stdin, stdout and stderr are set here, not left to wasmtime-wasi's defaults, because the
    // audit in ARCHITECTURE.md relies on them: a closed stream and sinks, all ready at once
    let wasi = WasiCtxBuilder::new()
        .stdin(ClosedInputStream)
        .stdout(SinkOutputStream)
        .stderr(SinkOutputStream)
        .wall_clock(FrozenWall(wall))
        .secure_random(Deterministic::new(seed_bytes(seed)))
        .insecure_random(Deterministic::new(seed_bytes(seed.rotate_left(17))))
        .insecure_random_seed(u128::from(seed))
        .build();
    let mut store = Store::new(
        engine,
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter { memory_bytes },
        },
    );
    store.limiter(|s| &mut s.limiter);
    let budget_ns = i128::try_from(cpu_budget.as_nanos()).unwrap_or(i128::MAX);
    let started = thread_cpu_ns();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if thread_cpu_ns() - started < budget_ns {
            UpdateDeadline::Continue(1)
        } else {
            UpdateDeadline::Interrupt
        })
    });
    // what the host may allocate lifting values out of the guest, and guest-created handles
    store.set_hostcall_fuel(1 << 20);
    store.set_max_component_handles(1_000);
    store
}

/// The CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

struct HasTable;

impl HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

/// The linker every plugin is instantiated with: the inert WASI interfaces Rust's standard
/// library imports, and empty instances for the package's types-only interfaces. Nothing else:
/// no filesystem, sockets or HTTP, whatever a plugin asks for.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<Sandbox>> {
    let mut l = Linker::<Sandbox>::new(engine);
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<Sandbox, HasTable>(&mut l, |t| {
        &mut t.table
    })?;
    poll::add_to_linker::<Sandbox, HasFrozen>(&mut l, |t| Frozen {
        table: &mut t.table,
    })?;
    streams::add_to_linker::<Sandbox, HasTable>(&mut l, |t| &mut t.table)?;
    clocks::wall_clock::add_to_linker::<Sandbox, wasmtime_wasi::clocks::WasiClocks>(
        &mut l,
        <Sandbox as WasiClocksView>::clocks,
    )?;
    monotonic_clock::add_to_linker::<Sandbox, HasFrozen>(&mut l, |t| Frozen {
        table: &mut t.table,
    })?;
    random::random::add_to_linker::<Sandbox, wasmtime_wasi::random::WasiRandom>(
        &mut l,
        <Sandbox as WasiRandomView>::random,
    )?;
    random::insecure::add_to_linker::<Sandbox, wasmtime_wasi::random::WasiRandom>(
        &mut l,
        <Sandbox as WasiRandomView>::random,
    )?;
    random::insecure_seed::add_to_linker::<Sandbox, wasmtime_wasi::random::WasiRandom>(
        &mut l,
        <Sandbox as WasiRandomView>::random,
    )?;
    type Cli = wasmtime_wasi::cli::WasiCli;
    cli::exit::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::environment::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::stdin::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::stdout::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::stderr::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::terminal_input::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::terminal_output::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::terminal_stdin::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::terminal_stdout::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    cli::terminal_stderr::add_to_linker::<Sandbox, Cli>(&mut l, <Sandbox as WasiCliView>::cli)?;
    for name in TYPE_INTERFACES {
        l.instance(name)?;
    }
    Ok(l)
}

/// WASI interfaces (without version) a plugin may import: exactly what `linker` provides.
pub const ALLOWED_WASI: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/wall-clock",
    "wasi:clocks/monotonic-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:cli/exit",
    "wasi:cli/environment",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_bytes_are_deterministic_and_differ_by_seed() {
        assert_eq!(seed_bytes(1), seed_bytes(1));
        assert_ne!(seed_bytes(1), seed_bytes(2));
        assert_eq!(seed_bytes(7).len(), 64);
    }
}
