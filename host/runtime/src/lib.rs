//! callflow's plugin runtime: runs untrusted WebAssembly components, one fresh instance per event.
//!
//! - **One engine** (wasmtime, pooling allocator, epoch interruption with a 1 ms ticker thread
//!   that ticks only while a guest runs).
//! - **Loading** ([`Runtime::load`]): size cap, component check, import allowlist, world
//!   detection, resource admission, then compilation through the on-disk cache and a type-checked
//!   `InstancePre` kept in memory by the wasm's SHA-256. Versions are immutable, so a digest names
//!   a plugin for good.
//! - **Invoking** (`call_flow`, `decide_retry`, `process_recording`, `on_event`): on a small pool
//!   of plain threads, in a fresh store with a deadline, a memory cap and inert WASI; the output is
//!   checked against [`Limits`] before anything is returned. A trap, timeout, limit or invalid
//!   output returns an [`InvokeError`] and no output at all.
//!
//! Architecture invariant: this crate knows nothing about calls, HTTP or the store. It turns bytes
//! and contexts into checked plugin outputs; the engine decides what they mean.

mod bindings;
mod cache;
mod fair;
mod pool;
mod sandbox;
mod ticker;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Trap};

pub use bindings::{events, flow, recording, retry};
pub use cache::sha256_hex;
pub use fair::FairConfig;

/// The kinds of plugin, one per world of `callflow:plugin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    CallFlow,
    RetryPolicy,
    Recording,
    CallEvents,
}

impl World {
    pub const ALL: [World; 4] = [
        World::CallFlow,
        World::RetryPolicy,
        World::Recording,
        World::CallEvents,
    ];

    /// The world's name in WIT.
    pub fn as_str(self) -> &'static str {
        match self {
            World::CallFlow => "call-flow",
            World::RetryPolicy => "retry-policy",
            World::Recording => "recording",
            World::CallEvents => "call-events",
        }
    }

    pub fn parse(s: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.as_str() == s)
    }

    /// The function the world exports.
    fn export(self) -> &'static str {
        match self {
            World::CallFlow => "handle",
            World::RetryPolicy => "decide",
            World::Recording => "process",
            World::CallEvents => "on-event",
        }
    }
}

/// Bounds on every invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time an invocation may use on its plugin thread (checked at every 1 ms epoch tick);
    /// time spent waiting for a core on a busy machine does not count.
    pub deadline: Duration,
    /// Linear memory a plugin may grow to.
    pub memory_bytes: usize,
    /// Size of the state a call flow hands back.
    pub max_state_bytes: usize,
    /// Commands (or HTTP requests) per invocation.
    pub max_commands: usize,
    /// Bytes of text and bodies in those commands, all together.
    pub max_output_bytes: usize,
    /// Bytes of log lines kept per invocation; the rest is cut, with a note.
    pub max_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_millis(10),
            memory_bytes: 16 << 20,
            max_state_bytes: 64 << 10,
            max_commands: 100,
            max_output_bytes: 256 << 10,
            max_log_bytes: 8 << 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled plugins are cached; `None` compiles in memory every time a plugin is loaded.
    pub cache_dir: Option<PathBuf>,
    /// The plugin threads and how they are shared between accounts (see [`FairConfig`]).
    pub scheduling: FairConfig,
    /// Largest plugin accepted, in bytes.
    pub max_plugin_bytes: usize,
    /// Plugins kept ready in memory.
    pub max_loaded: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        // one thread per core for plugins, plus the one reserved for built-ins
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        RuntimeConfig {
            cache_dir: None,
            scheduling: FairConfig::for_threads(cores + 1),
            max_plugin_bytes: 10 << 20,
            max_loaded: 256,
        }
    }
}

/// Why a plugin cannot be loaded: each says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("the plugin is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error(
        "the plugin imports {0}, which plugins may not use (allowed: callflow:plugin types and inert wasi:cli, wasi:io, wasi:clocks and wasi:random)"
    )]
    ForbiddenImport(String),
    #[error(
        "the plugin exports none of the callflow:plugin worlds (handle, decide, process, on-event); it exports: {0}"
    )]
    NoWorld(String),
    #[error(
        "the plugin exports several worlds ({0}); a plugin is exactly one kind: build one crate per world"
    )]
    SeveralWorlds(String),
    #[error("the plugin needs more than the sandbox gives: {0}")]
    Resources(String),
    #[error("the plugin does not match the {world} world of callflow:plugin@0.1.0: {reason}")]
    Mismatch { world: &'static str, reason: String },
    #[error("compiling the plugin failed: {0}")]
    Compile(String),
}

/// Why an invocation produced nothing. The host applies no output and runs its fallback.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InvokeError {
    #[error("the plugin ran past its {limit_ms} ms deadline")]
    Timeout { limit_ms: u64 },
    #[error("the plugin reached its memory limit of {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: usize },
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin's output is over a limit: {0}")]
    OutputLimit(String),
    #[error("the plugin's output is invalid: {0}")]
    InvalidOutput(String),
    #[error("the plugin reported an error: {code}: {message}")]
    Plugin { code: String, message: String },
    #[error("the plugin {sha256} is a {actual} plugin, not {expected}")]
    WrongWorld {
        sha256: String,
        expected: &'static str,
        actual: &'static str,
    },
    #[error(
        "the plugin waited for time to pass or input to arrive ({0}); time stands still during an event and there is no input, so a plugin cannot wait"
    )]
    Blocked(String),
    /// `code` is 0 or 1: WASI 0.2's `exit` carries only success or failure.
    #[error("the plugin called exit ({}) instead of returning", if *code == 0 { "success" } else { "failure" })]
    Exited { code: i32 },
    #[error(
        "the plugin was stuck outside its code {ran_ms} ms after it started, past its {limit_ms} ms deadline, and was abandoned"
    )]
    Abandoned { limit_ms: u64, ran_ms: u64 },
    #[error("plugin capacity is overloaded: {0}")]
    Overloaded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvokeError {
    /// Whether the failure was the moment's, not the plugin's: no thread was free in time, or
    /// the invocation was cut off by wall-clock time a busy machine took. Trying the same
    /// invocation again later may well succeed; every other error would repeat.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            InvokeError::Overloaded(_) | InvokeError::Abandoned { .. } | InvokeError::Internal(_)
        )
    }
}

/// A loaded plugin version, ready to instantiate.
pub struct Plugin {
    pub sha256: String,
    pub world: World,
    pub size: usize,
    /// One of ours ([`builtin::ALL`]): it may use the threads reserved for built-ins.
    pub builtin: bool,
    pre: Pre,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("sha256", &self.sha256)
            .field("world", &self.world)
            .finish()
    }
}

enum Pre {
    Flow(flow::CallFlowPre<sandbox::Sandbox>),
    Retry(retry::RetryPolicyPre<sandbox::Sandbox>),
    Recording(recording::RecordingPre<sandbox::Sandbox>),
    Events(events::CallEventsPre<sandbox::Sandbox>),
}

/// The plugin runtime; share one per process (`Arc`).
pub struct Runtime {
    engine: Engine,
    ticker: ticker::Ticker,
    linker: wasmtime::component::Linker<sandbox::Sandbox>,
    config: RuntimeConfig,
    pool: pool::Pool,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish()
    }
}

#[derive(Default)]
struct Loaded {
    by_sha: HashMap<String, Arc<Plugin>>,
    order: VecDeque<String>,
}

/// How many plugin instances can exist at once: one per thread is in use, the rest are headroom.
const POOL_INSTANCES: u32 = 64;

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let limits = Limits::default();
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 8)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .max_memory_size(limits.memory_bytes)
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(8)
            // keeping the first pages of a slot resident makes the next instantiation cheap
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // reset only the pages an instance dirtied (Linux 6.7+), not the whole resident part:
            // a Rust guest's 1 MiB stack would otherwise be cleared after every event
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut c = Config::new();
        c.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling))
            // a compile (an upload, a plugin's first use) takes one core, never all of them:
            // live calls' plugins have deadlines of a few milliseconds and must not starve
            .parallel_compilation(false);
        let engine = Engine::new(&c)?;
        let ticker = ticker::Ticker::start(&engine)?;
        let linker = sandbox::linker(&engine)?;
        let pool = pool::Pool::new(config.scheduling)?;
        Ok(Runtime {
            engine,
            ticker,
            linker,
            config,
            pool,
            loaded: Mutex::default(),
        })
    }

    /// Checks and prepares a plugin: the upload pipeline. The same bytes give the same plugin.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn load(&self, wasm: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        if wasm.len() > self.config.max_plugin_bytes {
            return Err(LoadError::TooLarge {
                size: wasm.len(),
                max: self.config.max_plugin_bytes,
            });
        }
        let sha = sha256_hex(wasm);
        if let Some(p) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_sha
            .get(&sha)
        {
            return Ok(Arc::clone(p));
        }
        check_header(wasm)?;
        let component = cache::compile(&self.engine, self.config.cache_dir.as_deref(), &sha, wasm)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let shaped = self
            .check_shape(&component)
            .and_then(|world| Ok((world, self.prepare(&component, world)?)));
        let (world, pre) = shaped.inspect_err(|_| {
            cache::discard(&self.engine, self.config.cache_dir.as_deref(), &sha)
        })?;
        let plugin = Arc::new(Plugin {
            builtin: builtin::ALL
                .iter()
                .any(|(name, _)| builtin::sha256(name) == Some(sha.as_str())),
            sha256: sha.clone(),
            world,
            size: wasm.len(),
            pre,
        });
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded
            .by_sha
            .insert(sha.clone(), Arc::clone(&plugin))
            .is_none()
        {
            loaded.order.push_back(sha);
        }
        while loaded.order.len() > self.config.max_loaded {
            if let Some(old) = loaded.order.pop_front() {
                loaded.by_sha.remove(&old);
            }
        }
        Ok(plugin)
    }

    /// The import allowlist, the exported world, and admission against the pool's limits.
    fn check_shape(&self, component: &Component) -> Result<World, LoadError> {
        let ty = component.component_type();
        let forbidden: Vec<&str> = ty
            .imports(&self.engine)
            .map(|(n, _)| n)
            .filter(|n| !import_allowed(n))
            .collect();
        if !forbidden.is_empty() {
            return Err(LoadError::ForbiddenImport(forbidden.join(", ")));
        }
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let worlds: Vec<World> = World::ALL
            .into_iter()
            .filter(|w| exports.iter().any(|e| e == w.export()))
            .collect();
        let world = match worlds[..] {
            [one] => one,
            [] => return Err(LoadError::NoWorld(exports.join(", "))),
            _ => {
                let names: Vec<&str> = worlds.iter().map(|w| w.as_str()).collect();
                return Err(LoadError::SeveralWorlds(names.join(", ")));
            }
        };
        if let Some(r) = component.resources_required() {
            let limits = Limits::default();
            let pages = r.max_initial_memory_size.unwrap_or(0);
            if pages.saturating_mul(65_536) > limits.memory_bytes as u64 {
                return Err(LoadError::Resources(format!(
                    "an initial memory of {pages} pages exceeds {} bytes",
                    limits.memory_bytes
                )));
            }
            if r.num_memories > 2 {
                return Err(LoadError::Resources(format!(
                    "{} memories (at most 2)",
                    r.num_memories
                )));
            }
            if r.num_tables > 8 {
                return Err(LoadError::Resources(format!(
                    "{} tables (at most 8)",
                    r.num_tables
                )));
            }
        }
        Ok(world)
    }

    fn prepare(&self, component: &Component, world: World) -> Result<Pre, LoadError> {
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch {
            world: world.as_str(),
            reason: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(component).map_err(mismatch)?;
        Ok(match world {
            World::CallFlow => Pre::Flow(flow::CallFlowPre::new(pre).map_err(mismatch)?),
            World::RetryPolicy => Pre::Retry(retry::RetryPolicyPre::new(pre).map_err(mismatch)?),
            World::Recording => {
                Pre::Recording(recording::RecordingPre::new(pre).map_err(mismatch)?)
            }
            World::CallEvents => Pre::Events(events::CallEventsPre::new(pre).map_err(mismatch)?),
        })
    }

    /// Runs `job` (an invocation of `plugin` charged to `account`) on the plugin threads, in
    /// the account's turn, and waits for it without blocking the async runtime. It answers by
    /// [`fair::WALL_PER_DEADLINE`] deadlines plus the watchdog's grace whatever the job does.
    async fn run<R: Send + 'static>(
        self: &Arc<Self>,
        account: &str,
        plugin: &Plugin,
        deadline: Duration,
        job: impl FnOnce(&Runtime) -> Result<R, InvokeError> + Send + 'static,
    ) -> Result<R, InvokeError> {
        type Reply<R> = Arc<Mutex<Option<tokio::sync::oneshot::Sender<Result<R, InvokeError>>>>>;
        fn answer<R>(reply: &Reply<R>, r: Result<R, InvokeError>) {
            if let Some(tx) = reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(r);
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: Reply<R> = Arc::new(Mutex::new(Some(tx)));
        let cut_reply = Arc::clone(&reply);
        let me = Arc::clone(self);
        let limit_ms = millis(deadline);
        let job = fair::Job {
            tenant: fair::Tenant {
                account: account.into(),
                builtin: plugin.builtin,
            },
            deadline,
            run: Box::new(move || answer(&reply, job(&me))),
            cut: Box::new(move |cut| answer(&cut_reply, Err(cut_error(cut, limit_ms)))),
        };
        self.pool
            .submit(job)
            .map_err(|cut| cut_error(cut, limit_ms))?;
        rx.await
            .map_err(|_| InvokeError::Internal("the plugin thread went away".into()))?
    }

    /// Delivers one event to a call-flow plugin.
    pub async fn call_flow(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        ctx: flow::CallContext,
        state: Vec<u8>,
        event: flow::FlowEvent,
        limits: Limits,
    ) -> Result<flow::FlowStep, InvokeError> {
        let account = ctx.account_sid.clone();
        self.run(&account, &Arc::clone(&plugin), limits.deadline, move |rt| {
            rt.call_flow_blocking(&plugin, &ctx, &state, &event, limits)
        })
        .await
    }

    /// `call_flow` on the calling thread (benchmarks and tools).
    pub fn call_flow_blocking(
        &self,
        plugin: &Plugin,
        ctx: &flow::CallContext,
        state: &[u8],
        event: &flow::FlowEvent,
        limits: Limits,
    ) -> Result<flow::FlowStep, InvokeError> {
        let Pre::Flow(pre) = &plugin.pre else {
            return Err(wrong_world(plugin, World::CallFlow));
        };
        let step = self.invoke(
            World::CallFlow,
            &ctx.account_sid,
            ctx.now_ms,
            ctx.seed,
            limits,
            |store| {
                let instance = pre.instantiate(&mut *store)?;
                instance.call_handle(&mut *store, ctx, state, event)
            },
        )?;
        let mut step = step.map_err(plugin_error)?;
        check_flow_output(&mut step, &limits)?;
        Ok(step)
    }

    /// Asks a retry-policy plugin what to do after an attempt.
    pub async fn decide_retry(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        ctx: retry::RetryContext,
        limits: Limits,
    ) -> Result<retry::RetryDecision, InvokeError> {
        let account = ctx.account_sid.clone();
        self.run(&account, &Arc::clone(&plugin), limits.deadline, move |rt| {
            let Pre::Retry(pre) = &plugin.pre else {
                return Err(wrong_world(&plugin, World::RetryPolicy));
            };
            let mut decision = rt.invoke(
                World::RetryPolicy,
                &ctx.account_sid,
                ctx.now_ms,
                ctx.seed,
                limits,
                |store| {
                    let instance = pre.instantiate(&mut *store)?;
                    instance.call_decide(&mut *store, &ctx)
                },
            )?;
            cap_logs(&mut decision.logs, limits.max_log_bytes);
            Ok(decision)
        })
        .await
    }

    /// Hands a finished recording to a recording plugin.
    pub async fn process_recording(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        ctx: recording::RecordingContext,
        audio: Vec<i16>,
        limits: Limits,
    ) -> Result<recording::RecordingPlan, InvokeError> {
        let samples = audio.len();
        let account = ctx.account_sid.clone();
        self.run(&account, &Arc::clone(&plugin), limits.deadline, move |rt| {
            let Pre::Recording(pre) = &plugin.pre else {
                return Err(wrong_world(&plugin, World::Recording));
            };
            let plan = rt.invoke(
                World::Recording,
                &ctx.account_sid,
                ctx.now_ms,
                ctx.seed,
                limits,
                |store| {
                    let instance = pre.instantiate(&mut *store)?;
                    instance.call_process(&mut *store, &ctx, &audio)
                },
            )?;
            let mut plan = plan.map_err(plugin_error)?;
            if let recording::Action::Keep(k) = &plan.action
                && (k.start > k.end || k.end as usize > samples)
            {
                return Err(InvokeError::InvalidOutput(format!(
                    "keep [{}, {}) is outside the recording of {samples} samples",
                    k.start, k.end
                )));
            }
            check_requests(
                plan.notify
                    .iter()
                    .map(|r| (r.url.len() + r.body.len(), r.headers.len())),
                &limits,
            )?;
            cap_logs(&mut plan.logs, limits.max_log_bytes);
            Ok(plan)
        })
        .await
    }

    /// Tells a call-events plugin about a lifecycle event.
    pub async fn on_event(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        ctx: events::EventContext,
        limits: Limits,
    ) -> Result<events::EventOutcome, InvokeError> {
        let account = ctx.account_sid.clone();
        self.run(&account, &Arc::clone(&plugin), limits.deadline, move |rt| {
            let Pre::Events(pre) = &plugin.pre else {
                return Err(wrong_world(&plugin, World::CallEvents));
            };
            let mut outcome = rt.invoke(
                World::CallEvents,
                &ctx.account_sid,
                ctx.now_ms,
                ctx.seed,
                limits,
                |store| {
                    let instance = pre.instantiate(&mut *store)?;
                    instance.call_on_event(&mut *store, &ctx)
                },
            )?;
            check_requests(
                outcome
                    .requests
                    .iter()
                    .map(|r| (r.url.len() + r.body.len(), r.headers.len())),
                &limits,
            )?;
            cap_logs(&mut outcome.logs, limits.max_log_bytes);
            Ok(outcome)
        })
        .await
    }

    /// One invocation in a fresh store, with the limits applied and errors classified.
    fn invoke<R>(
        &self,
        world: World,
        account: &str,
        now_ms: i64,
        seed: u64,
        limits: Limits,
        call: impl FnOnce(&mut wasmtime::Store<sandbox::Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, InvokeError> {
        let started = Instant::now();
        let running = self.ticker.running();
        let mut store = sandbox::store(
            &self.engine,
            now_ms,
            seed,
            limits.memory_bytes,
            limits.deadline,
        );
        let result = call(&mut store);
        drop(store);
        drop(running);
        let result = result.map_err(|e| classify(&e, &limits));
        let outcome = match &result {
            Ok(_) => "ok",
            Err(_) => "error",
        };
        metrics::counter!("callflow_plugin_invocations_total", "account" => account.to_owned(), "world" => world.as_str(), "outcome" => outcome)
            .increment(1);
        if let Err(InvokeError::Timeout { .. }) = &result {
            metrics::counter!("callflow_plugin_deadline_hits_total", "account" => account.to_owned())
                .increment(1);
        }
        metrics::histogram!("callflow_plugin_invocation_seconds", "world" => world.as_str())
            .record(started.elapsed().as_secs_f64());
        result
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a caller hears when the scheduler refused or gave up on its invocation.
fn cut_error(cut: fair::Cut, limit_ms: u64) -> InvokeError {
    match cut {
        fair::Cut::AccountQueueFull => {
            InvokeError::Overloaded("this account has too many plugin invocations waiting".into())
        }
        fair::Cut::QueueFull => {
            InvokeError::Overloaded("too many plugin invocations are waiting".into())
        }
        fair::Cut::Waited(d) => InvokeError::Overloaded(format!(
            "the invocation waited {} ms for a plugin thread",
            millis(d)
        )),
        fair::Cut::Abandoned(d) => InvokeError::Abandoned {
            limit_ms,
            ran_ms: millis(d),
        },
    }
}

fn wrong_world(plugin: &Plugin, expected: World) -> InvokeError {
    InvokeError::WrongWorld {
        sha256: plugin.sha256.clone(),
        expected: expected.as_str(),
        actual: plugin.world.as_str(),
    }
}

fn plugin_error(e: flow::PluginError) -> InvokeError {
    InvokeError::Plugin {
        code: truncate(&e.code, 100),
        message: truncate(&e.message, 1_000),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Turns a wasmtime error into why the invocation failed: the limit or trap kind, never a Wasm
/// backtrace (it names the plugin's internals, and API callers see this text).
fn classify(e: &wasmtime::Error, limits: &Limits) -> InvokeError {
    if let Some(hit) = e.downcast_ref::<sandbox::MemoryLimitHit>() {
        return InvokeError::MemoryLimit { limit_bytes: hit.0 };
    }
    if let Some(wait) = e.downcast_ref::<sandbox::WouldWait>() {
        return InvokeError::Blocked(wait.0.to_owned());
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return InvokeError::Exited { code: exit.0 };
    }
    // a backtrace is attached as a context whose text begins with this (`WasmBacktrace`'s
    // Display); it is not an error type the chain could be filtered by
    let text = e
        .chain()
        .map(|c| c.to_string())
        .filter(|c| !c.contains("wasm backtrace"))
        .collect::<Vec<_>>()
        .join(": ");
    if text.contains("hostcalls") {
        return InvokeError::OutputLimit(format!(
            "the plugin returned too much data ({})",
            truncate(&text, 200)
        ));
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            return InvokeError::Timeout {
                limit_ms: millis(limits.deadline),
            };
        }
        return InvokeError::Trap(trap.to_string());
    }
    InvokeError::Trap(truncate(&text, 300))
}

fn import_allowed(name: &str) -> bool {
    if name.starts_with("callflow:plugin/") {
        return bindings::TYPE_INTERFACES.contains(&name);
    }
    let Some((interface, version)) = name.split_once('@') else {
        return false;
    };
    version.starts_with("0.2.") && sandbox::ALLOWED_WASI.contains(&interface)
}

fn check_header(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err(LoadError::NotAComponent(
            "the file is not WebAssembly".into(),
        ));
    }
    if wasm[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::NotAComponent(
            "this is a core WebAssembly module; build the plugin for the wasm32-wasip2 target to get a component".into(),
        ));
    }
    Ok(())
}

fn check_flow_output(step: &mut flow::FlowStep, limits: &Limits) -> Result<(), InvokeError> {
    if step.state.len() > limits.max_state_bytes {
        return Err(InvokeError::OutputLimit(format!(
            "state of {} bytes (at most {})",
            step.state.len(),
            limits.max_state_bytes
        )));
    }
    if step.commands.len() > limits.max_commands {
        return Err(InvokeError::OutputLimit(format!(
            "{} commands (at most {})",
            step.commands.len(),
            limits.max_commands
        )));
    }
    let bytes: usize = step.commands.iter().map(command_bytes).sum();
    if bytes > limits.max_output_bytes {
        return Err(InvokeError::OutputLimit(format!(
            "{bytes} bytes of commands (at most {})",
            limits.max_output_bytes
        )));
    }
    cap_logs(&mut step.logs, limits.max_log_bytes);
    Ok(())
}

/// The text a command carries, for the output bound.
fn command_bytes(c: &flow::Command) -> usize {
    use flow::{Command, Prompt};
    let say = |s: &flow::Say| {
        s.text.len()
            + s.voice.as_ref().map_or(0, String::len)
            + s.language.as_ref().map_or(0, String::len)
    };
    match c {
        Command::Fetch(f) => {
            f.url.len()
                + f.params
                    .iter()
                    .map(|p| p.name.len() + p.value.len())
                    .sum::<usize>()
        }
        Command::Say(s) => say(s),
        Command::Play(p) => p.url.len(),
        Command::SendDigits(d) => d.len(),
        Command::Gather(g) => {
            g.prompts
                .iter()
                .map(|p| match p {
                    Prompt::Say(s) => say(s),
                    Prompt::Play(p) => p.url.len(),
                    Prompt::Pause(_) => 0,
                })
                .sum::<usize>()
                + g.finish_on_key.len()
        }
        Command::Record(r) => r.finish_on_key.len(),
        Command::Dial(d) => d
            .targets
            .iter()
            .map(|t| match t {
                flow::DialTarget::Number(n) | flow::DialTarget::Sip(n) => n.len(),
            })
            .sum::<usize>(),
        Command::Pause(_) | Command::Hangup | Command::Reject(_) => 0,
    }
}

/// Requests (recording notifications, call-event requests) as (bytes, header count) pairs.
fn check_requests(
    requests: impl Iterator<Item = (usize, usize)>,
    limits: &Limits,
) -> Result<(), InvokeError> {
    let (mut count, mut bytes) = (0usize, 0usize);
    for (b, headers) in requests {
        count += 1;
        bytes += b + headers * 64;
    }
    if count > limits.max_commands {
        return Err(InvokeError::OutputLimit(format!(
            "{count} requests (at most {})",
            limits.max_commands
        )));
    }
    if bytes > limits.max_output_bytes {
        return Err(InvokeError::OutputLimit(format!(
            "{bytes} bytes of requests (at most {})",
            limits.max_output_bytes
        )));
    }
    Ok(())
}

/// Keeps log lines up to `max` bytes in all and notes what was cut. (Every world shares the one
/// `LogLine` type of the `types` interface.)
fn cap_logs(logs: &mut Vec<flow::LogLine>, max: usize) {
    let mut total = 0usize;
    let mut keep = logs.len();
    for (i, l) in logs.iter().enumerate() {
        if total + l.message.len() > max {
            keep = i;
            break;
        }
        total += l.message.len();
    }
    if keep < logs.len() {
        let cut = logs.len() - keep;
        logs.truncate(keep);
        logs.push(flow::LogLine {
            level: flow::LogLevel::Warn,
            message: format!("{cut} log lines cut: a plugin may log {max} bytes per event"),
        });
    }
}

/// The built-in plugins, compiled from `plugins/` by this crate's build script and embedded, so
/// the binary needs nothing else. Bindings name them `builtin:<name>`.
pub mod builtin {
    /// The first built-in call flow: a greeting, then hang up.
    pub const HELLO: &[u8] = include_bytes!(env!("CALLFLOW_PLUGIN_HELLO"));

    /// The TwiML interpreter (`plugins/twiml`): the call flow of calls whose account bound none.
    pub const TWIML: &[u8] = include_bytes!(env!("CALLFLOW_PLUGIN_TWIML"));

    /// The default retry policy for callouts (`plugins/retry`): SCFM's statuses, attempts and
    /// delay, terminal SIP codes, calling hours in the participant's time zone.
    pub const RETRY: &[u8] = include_bytes!(env!("CALLFLOW_PLUGIN_RETRY"));

    /// The RapidPro adapter (`plugins/rapidpro`, a call-events plugin): starts a RapidPro flow for
    /// a callout participant once an attempt at them ends.
    pub const RAPIDPRO: &[u8] = include_bytes!(env!("CALLFLOW_PLUGIN_RAPIDPRO"));

    /// Every built-in plugin by name.
    pub const ALL: &[(&str, &[u8])] = &[
        ("hello", HELLO),
        ("twiml", TWIML),
        ("retry", RETRY),
        ("rapidpro", RAPIDPRO),
    ];

    /// The built-in plugin called `name`.
    pub fn get(name: &str) -> Option<&'static [u8]> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    /// The SHA-256 of the built-in plugin called `name`, computed once per process (calls pin
    /// it when they are created).
    pub fn sha256(name: &str) -> Option<&'static str> {
        static DIGESTS: std::sync::OnceLock<Vec<(&'static str, String)>> =
            std::sync::OnceLock::new();
        let digests = DIGESTS.get_or_init(|| {
            ALL.iter()
                .map(|(n, b)| (*n, crate::sha256_hex(b)))
                .collect()
        });
        digests
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.as_str())
    }
}

/// Paths of the misbehaving guest components the build script builds for tests (here and in the
/// crates that test uploads).
#[doc(hidden)]
pub mod test_guests {
    /// A call flow that misbehaves as its config asks.
    pub const ABUSE: &str = env!("CALLFLOW_TEST_GUEST_ABUSE");
    /// A call flow that imports `wasi:filesystem`.
    pub const FS_IMPORT: &str = env!("CALLFLOW_TEST_GUEST_FS_IMPORT");
    /// A call flow that imports `wasi:sockets`.
    pub const NET_IMPORT: &str = env!("CALLFLOW_TEST_GUEST_NET_IMPORT");
    /// A recording plugin that keeps samples that do not exist.
    pub const BAD_KEEP: &str = env!("CALLFLOW_TEST_GUEST_BAD_KEEP");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_allowlist() {
        assert!(import_allowed("wasi:cli/stderr@0.2.6"));
        assert!(import_allowed("wasi:io/streams@0.2.0"));
        assert!(import_allowed("callflow:plugin/flow-types@0.1.0"));
        assert!(!import_allowed("callflow:plugin/secret@0.1.0"));
        assert!(!import_allowed("wasi:filesystem/types@0.2.6"));
        assert!(!import_allowed("wasi:sockets/tcp@0.2.6"));
        assert!(!import_allowed("wasi:http/outgoing-handler@0.2.6"));
        assert!(!import_allowed("wasi:cli/stderr@0.3.0"));
        assert!(!import_allowed("wasi:cli/stderr"));
    }

    #[test]
    fn headers_tell_components_from_modules_and_garbage() {
        assert!(
            matches!(check_header(b"hello world"), Err(LoadError::NotAComponent(m)) if m.contains("not WebAssembly"))
        );
        assert!(
            matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::NotAComponent(m)) if m.contains("core"))
        );
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn logs_are_cut_with_a_note() {
        let mut logs: Vec<flow::LogLine> = (0..10)
            .map(|_| flow::LogLine {
                level: flow::LogLevel::Info,
                message: "x".repeat(100),
            })
            .collect();
        cap_logs(&mut logs, 350);
        assert_eq!(logs.len(), 4);
        assert!(logs[3].message.starts_with("7 log lines cut"));
    }
}
