//! Media load benchmark: N concurrent calls, each playing one shared prompt in a loop
//! and recording, driven by an RTP load generator of ours, next to a raw UDP loop with the same
//! sockets and packet pattern (the ceiling), measured in the same run. `IDLE=silent|hold` makes
//! the calls idle instead, and `CHURN=K` measures opening and closing a call's media.
//!
//! One binary, four roles, each its own process so that `/proc/PID` gives each one's CPU and
//! memory:
//! - the runner (`cargo bench -p callflow-media --bench load`, or `bench/media.sh`): for each N
//!   in `NS`, starts `sut raw` then `sut media`, each with a `gen`, measures them from `/proc`
//!   and prints a Markdown table. Without `--bench` (as `cargo test` would run it) it makes one
//!   short step with 20 calls, to show the roles still fit together.
//! - `sut raw|media N WORKERS PORT_MIN`: the system under test. `media` is `Media::start` with
//!   N calls (PCMU, 20 ms, symmetric RTP: it sends to where the generator's packets come from),
//!   each playing the shared prompt forever and recording. `raw` is the ceiling: the same number
//!   of sockets and threads, paced by the same 10 ms tick, each socket drained with `recv_from`
//!   and sent one 172-byte packet every 20 ms with `send_to`, and nothing else. It prints its
//!   ports, then answers `snap` lines on stdin with its counters; end of stdin ends it.
//! - `gen N WARMUP_MS DURATION_MS`: the generator. It reads the ports on stdin, and for each
//!   call sends 172-byte PCMU packets at 50/s from its own connected socket and receives the
//!   call's packets. It counts, in the measurement window, each received packet more than 40 ms
//!   late against its stream's ideal 20 ms schedule (the earliest offset seen), frames the
//!   sender skipped (the timestamp jumped further than the sequence number) and sequence gaps
//!   (loss); it prints the totals as one JSON line.
//! - `sut churn K WORKERS PORT_MIN` (with `CHURN=K`, in place of the steps): `Media::start`,
//!   then K calls' media reserved, opened and dropped, 100 at a time, each batch waiting for its
//!   `Closed` events; it prints the process's CPU and the wall time per call as one JSON line.
//!
//! Idle calls (`IDLE`, read by every role): `silent` calls play and record nothing, and the
//! generator sends one packet per call at its start (so that symmetric RTP knows where to send)
//! and nothing after: each call sends silence, 50 packets/s, and hears nothing. `hold` calls
//! are opened with `send: false` and the generator sends nothing: no packet either way. The raw
//! loop does the same (it sends once it has heard the peer). Either way the report adds the
//! worker threads' CPU per call per second.
//!
//! Settings (environment, read by the runner): `NS` (default "250 500 1000 2000 3000"),
//! `DURATION` and `WARMUP` (s, default 10 and 2), `WORKERS` (media worker threads, and raw
//! threads, default 1), `PORT_MIN` (default 20000), `OUT` (folder for the per-step JSON and the
//! children's logs), `CLK_TCK` (default 100), `RECORD=0` (calls only play: to see what
//! recording costs), `IDLE` (above), `CHURN` (calls opened and closed; at most 1,000,000).
//! Bounds: N ≤ 6000, DURATION ≤ 600 s, WARMUP ≤ 60 s, WORKERS ≤ 16; every
//! wait for a child has a timeout, and children are killed (by their own pid) if the runner
//! gives up.

use std::collections::HashMap;
use std::error::Error;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callflow_media::Audio;
use callflow_media::g711::{self, Law};
use callflow_media::record::RecordOptions;
use callflow_media::rtp::{Outgoing, StreamParams};
use callflow_media::worker::{LATE_MS, Media, MediaConfig, MediaEvent, PlayItem, TICK_MS};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use rtp_rs::RtpReader;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const TICK: Duration = Duration::from_millis(TICK_MS);
/// G.711 at 20 ms: 160 samples (bytes) per packet, 50 packets per second each way.
const PAYLOAD: usize = 160;
const PACKET: usize = 12 + PAYLOAD;
/// One sample of 8 kHz audio, in µs (the RTP timestamp's unit).
const SAMPLE_US: i64 = 125;
const LATE_US: i64 = LATE_MS as i64 * 1000;
/// Datagrams read from one socket per tick at most (as the media worker does).
const READS_PER_TICK: usize = 32;
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// What a recording holds per second: 8,000 samples of 16 bits.
const RECORDED_BYTES_PER_S: f64 = 16_000.0;

const MAX_CALLS: usize = 6000;
const MAX_DURATION_S: u64 = 600;
const MAX_WARMUP_S: u64 = 60;
const MAX_WORKERS: usize = 16;
/// File descriptors a process needs besides one socket per call.
const SPARE_FDS: u64 = 64;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const LINE_TIMEOUT: Duration = Duration::from_secs(5);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("sut") => sut(&args[1..]),
        Some("gen") => generator(&args[1..]),
        _ => run(args.iter().any(|a| a == "--bench")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// The runner

struct Settings {
    ns: Vec<usize>,
    warmup: Duration,
    duration: Duration,
    workers: usize,
    port_min: u16,
    out: PathBuf,
    clk_tck: f64,
    /// Calls record as well as play (RECORD=0: they only play).
    record: bool,
    idle: Idle,
}

/// What the calls do: play and record while the generator talks, or sit idle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idle {
    Active,
    /// Nothing plays; the peer sends one packet, then nothing; the call sends silence.
    Silent,
    /// On hold (`send: false`) and the peer sends nothing: no packet either way.
    Hold,
}

impl Idle {
    /// `IDLE` from the environment (the children inherit the runner's).
    fn from_env() -> Res<Idle> {
        match std::env::var("IDLE").as_deref() {
            Err(_) | Ok("") | Ok("0") => Ok(Idle::Active),
            Ok("silent") => Ok(Idle::Silent),
            Ok("hold") => Ok(Idle::Hold),
            Ok(v) => Err(format!("IDLE: {v:?} is not silent or hold").into()),
        }
    }

    fn describe(self, record: bool) -> &'static str {
        match (self, record) {
            (Idle::Active, true) => "playing and recording",
            (Idle::Active, false) => "playing only (RECORD=0)",
            (Idle::Silent, _) => {
                "idle (IDLE=silent: nothing plays, the peer sends one packet then nothing, the \
                 call sends silence)"
            }
            (Idle::Hold, _) => "idle on hold (IDLE=hold: no packet either way)",
        }
    }
}

/// Calls opened and closed per batch in the churn measurement.
const CHURN_BATCH: usize = 100;
const MAX_CHURN: u64 = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Media,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Media => "media",
        }
    }
}

/// What one step (one mode at one N) measured over the window.
struct Row {
    mode: Mode,
    idle: Idle,
    n: usize,
    secs: f64,
    load1: f64,
    sut_cpu: f64,
    sut_worker_cpu: f64,
    /// The SUT's minor page faults per second.
    sut_faults_per_s: f64,
    gen_cpu: f64,
    rss_before_kib: f64,
    rss_open_kib: f64,
    rss_end_kib: f64,
    hwm_kib: f64,
    /// Seconds from the calls' opening to the end of the window: how much audio each call's
    /// recorder holds by then (media only).
    recorded_s: f64,
    from_gen: HashMap<String, f64>,
    from_sut: HashMap<String, f64>,
    rcvbuf_errors: f64,
}

impl Row {
    fn g(&self, k: &str) -> f64 {
        self.from_gen.get(k).copied().unwrap_or(0.0)
    }

    fn s(&self, k: &str) -> f64 {
        self.from_sut.get(k).copied().unwrap_or(0.0)
    }

    /// Packets the system under test handled in the window: what the generator sent it and
    /// what the generator received from it.
    fn packets(&self) -> f64 {
        self.g("sent") + self.g("received")
    }

    fn us_per_packet(&self) -> f64 {
        let p = self.packets();
        if p > 0.0 {
            self.sut_cpu * self.secs * 1e6 / p
        } else {
            f64::NAN
        }
    }

    /// Frames that reached the generator more than 40 ms late, plus frames the sender skipped
    /// (a frame more than 60 ms late is never sent), over frames due.
    fn late(&self) -> f64 {
        self.g("late") + self.g("skipped")
    }

    fn late_pct(&self) -> f64 {
        let due = self.g("received") + self.g("skipped") + self.g("lost");
        if due > 0.0 {
            100.0 * self.late() / due
        } else if self.idle == Idle::Hold {
            0.0
        } else {
            100.0
        }
    }

    /// Sequence gaps at both ends and packets the SUT dropped (late or malformed). A packet
    /// the kernel dropped for a full socket buffer shows as a gap; the machine's UDP
    /// `RcvbufErrors` are only reported beside, as other programs' sockets count there too.
    fn lost(&self) -> f64 {
        self.g("lost") + self.s("lost") + self.s("dropped")
    }

    fn rss_per_call_kib(&self) -> f64 {
        (self.rss_end_kib - self.rss_before_kib) / self.n as f64
    }

    /// RSS per call less the audio its recorder holds (`Recorder` keeps 16-bit PCM in memory:
    /// 16,000 bytes per second recorded), an estimate of what a call costs besides that.
    fn rss_per_call_less_recording_kib(&self) -> f64 {
        self.rss_per_call_kib() - self.recorded_s * RECORDED_BYTES_PER_S / 1024.0
    }

    /// The quality bar: < 0.1% of packets late by more than 40 ms, no loss; and a
    /// stream for every call.
    fn holds(&self) -> bool {
        if self.idle == Idle::Hold {
            // Nothing is due either way: the bar is that nothing came.
            return self.lost() == 0.0 && self.g("received") == 0.0;
        }
        let expected = self.n as f64 * 50.0 * self.secs;
        self.late_pct() < 0.1 && self.lost() == 0.0 && self.g("received") > 0.9 * expected
    }

    /// The worker threads' (or raw threads') CPU per call, in µs per second.
    fn worker_us_per_call_s(&self) -> f64 {
        self.sut_worker_cpu * 1e6 / self.n as f64
    }

    fn json(&self) -> String {
        let mut fields: Vec<(String, f64)> = [
            ("n", self.n as f64),
            ("secs", self.secs),
            ("load1", self.load1),
            ("sut_cpu_pct", 100.0 * self.sut_cpu),
            ("sut_worker_cpu_pct", 100.0 * self.sut_worker_cpu),
            ("sut_minor_faults_per_s", self.sut_faults_per_s),
            ("gen_cpu_pct", 100.0 * self.gen_cpu),
            ("us_per_packet", self.us_per_packet()),
            ("worker_us_per_call_s", self.worker_us_per_call_s()),
            ("rss_before_kib", self.rss_before_kib),
            ("rss_open_kib", self.rss_open_kib),
            ("rss_end_kib", self.rss_end_kib),
            ("hwm_kib", self.hwm_kib),
            ("rss_per_call_kib", self.rss_per_call_kib()),
            ("recorded_s", self.recorded_s),
            (
                "rss_per_call_less_recording_kib",
                self.rss_per_call_less_recording_kib(),
            ),
            ("late_pct", self.late_pct()),
            ("lost_total", self.lost()),
            ("udp_rcvbuf_errors", self.rcvbuf_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (prefix, map) in [("gen", &self.from_gen), ("sut", &self.from_sut)] {
            let mut m: Vec<_> = map.iter().collect();
            m.sort_by(|a, b| a.0.cmp(b.0));
            fields.extend(m.into_iter().map(|(k, v)| (format!("{prefix}_{k}"), *v)));
        }
        let mut s = format!("{{\"mode\":\"{}\"", self.mode.name());
        for (k, v) in fields {
            s.push_str(&format!(",\"{k}\":{}", num(v)));
        }
        s.push('}');
        s
    }
}

fn run(full: bool) -> Res<()> {
    let (ns_default, dur_default, warm_default) = if full {
        ("250 500 1000 2000 3000", 10, 2)
    } else {
        ("20", 1, 1)
    };
    let ns = env_or("NS", ns_default)
        .split_whitespace()
        .map(|s| match s.parse::<usize>() {
            Ok(n) if (1..=MAX_CALLS).contains(&n) => Ok(n),
            _ => Err(format!(
                "NS: {s:?} is not a number of calls in 1..={MAX_CALLS}"
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let duration = env_num("DURATION", dur_default, 1, MAX_DURATION_S)?;
    let warmup = env_num("WARMUP", warm_default, 1, MAX_WARMUP_S)?;
    let workers = env_num("WORKERS", 1, 1, MAX_WORKERS as u64)? as usize;
    let port_min = env_num("PORT_MIN", 20000, 1024, 60000)? as u16;
    let clk_tck = env_num("CLK_TCK", 100, 1, 10_000)? as f64;
    let out = match std::env::var_os("OUT") {
        Some(o) => PathBuf::from(o),
        None => std::env::temp_dir().join(format!("callflow-media-load-{}", std::process::id())),
    };
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let churn = match std::env::var("CHURN") {
        Ok(v) => Some(parse_bounded(&v, "CHURN", 1, MAX_CHURN)?),
        Err(_) => None,
    };
    let s = Settings {
        record: recording_on(),
        idle: Idle::from_env()?,
        ns,
        warmup: Duration::from_secs(warmup),
        duration: Duration::from_secs(duration),
        workers,
        port_min,
        out,
        clk_tck,
    };
    let max_n = s.ns.iter().max().copied().unwrap_or(0);
    let need = max_n as u64 + SPARE_FDS;
    let limit = open_files_limit()?;
    if limit < need {
        return Err(format!(
            "the open-files limit is {limit}; N = {max_n} needs {need} (one socket per call in \
             each process): raise it with `ulimit -n` (bench/media.sh does)"
        )
        .into());
    }
    if s.port_min as usize + 2 * (max_n + SUT_SPARE_PORTS) > 65535 {
        return Err(format!(
            "PORT_MIN {} leaves too few ports for N = {max_n}",
            s.port_min
        )
        .into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    if let Some(k) = churn {
        return churn_step(&s, &exe, k);
    }
    let steps = s.out.join("steps.jsonl");
    let mut steps_file = File::create(&steps).map_err(|e| format!("{}: {e}", steps.display()))?;
    log(&format!(
        "N in {:?}, {} s warm-up + {} s measured per step, {} worker thread(s); output in {}",
        s.ns,
        warmup,
        duration,
        s.workers,
        s.out.display()
    ));
    let mut rows = Vec::new();
    for &n in &s.ns {
        for mode in [Mode::Raw, Mode::Media] {
            log(&format!("{} with {n} calls", mode.name()));
            let row = step(&s, &exe, mode, n)?;
            writeln!(steps_file, "{}", row.json())?;
            log(&format!(
                "{} N={n}: SUT {:.0}% ({:.1} µs/packet), generator {:.0}%, late {:.3}%, lost {}",
                mode.name(),
                100.0 * row.sut_cpu,
                row.us_per_packet(),
                100.0 * row.gen_cpu,
                row.late_pct(),
                row.lost()
            ));
            rows.push(row);
            thread::sleep(Duration::from_secs(1));
        }
    }
    print!("{}", report(&s, &rows));
    Ok(())
}

/// Ports a SUT may skip (held by other programs) beyond two per call.
const SUT_SPARE_PORTS: usize = 500;

/// One step: a SUT and a generator, measured from the generator's start plus the warm-up to
/// the end of the window.
fn step(s: &Settings, exe: &Path, mode: Mode, n: usize) -> Res<Row> {
    let tag = format!("{}-{n}", mode.name());
    let mut sut = Proc::spawn(
        Command::new(exe).args([
            "sut",
            mode.name(),
            &n.to_string(),
            &s.workers.to_string(),
            &s.port_min.to_string(),
        ]),
        "the system under test",
        &s.out.join(format!("{tag}-sut.log")),
    )?;
    let ports = sut.line(READY_TIMEOUT, "its ports")?;
    let ready = parse_flat_json(&sut.line(READY_TIMEOUT, "its ready line")?)?;
    let opened = Instant::now();
    let mut load_gen = Proc::spawn(
        Command::new(exe).args([
            "gen",
            &n.to_string(),
            &s.warmup.as_millis().to_string(),
            &s.duration.as_millis().to_string(),
        ]),
        "the generator",
        &s.out.join(format!("{tag}-gen.log")),
    )?;
    load_gen.send(&ports)?;
    load_gen.close_stdin();
    load_gen.line(READY_TIMEOUT, "its start")?;
    let t0 = Instant::now();
    let load1 = load_average();

    sleep_until(t0 + s.warmup);
    let a = Snapshot::take(&mut sut, load_gen.pid())?;
    sleep_until(t0 + s.warmup + s.duration);
    let b = Snapshot::take(&mut sut, load_gen.pid())?;
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let rss_end_kib = status_kib(sut.pid(), "VmRSS:")?;
    let hwm_kib = status_kib(sut.pid(), "VmHWM:")?;

    let gen_result = parse_flat_json(&load_gen.line(s.duration + READY_TIMEOUT, "its result")?)?;
    load_gen.wait(EXIT_TIMEOUT)?;
    sut.close_stdin();
    sut.wait(EXIT_TIMEOUT)?;

    let cpu = |t0: u64, t1: u64| (t1.saturating_sub(t0)) as f64 / s.clk_tck / secs;
    let worker = |m: &HashMap<String, u64>| -> u64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("media-") || k.starts_with("raw-"))
            .map(|(_, v)| v)
            .sum()
    };
    let delta = |k: &str| {
        b.from_sut.get(k).copied().unwrap_or(0.0) - a.from_sut.get(k).copied().unwrap_or(0.0)
    };
    let sut_counts: HashMap<String, f64> = ["sent", "received", "lost", "dropped", "late_frames"]
        .iter()
        .map(|k| (k.to_string(), delta(k)))
        .collect();
    Ok(Row {
        mode,
        idle: s.idle,
        n,
        secs,
        load1,
        sut_cpu: cpu(a.sut_ticks, b.sut_ticks),
        sut_worker_cpu: worker(&b.sut_threads).saturating_sub(worker(&a.sut_threads)) as f64
            / 1e9
            / secs,
        sut_faults_per_s: b.sut_minor_faults.saturating_sub(a.sut_minor_faults) as f64 / secs,
        gen_cpu: cpu(a.gen_ticks, b.gen_ticks),
        rss_before_kib: ready.get("rss_before_kib").copied().unwrap_or(0.0),
        rss_open_kib: ready.get("rss_open_kib").copied().unwrap_or(0.0),
        rss_end_kib,
        hwm_kib,
        recorded_s: match mode {
            Mode::Media if s.record && s.idle == Idle::Active => {
                b.at.duration_since(opened).as_secs_f64()
            }
            _ => 0.0,
        },
        from_gen: gen_result,
        from_sut: sut_counts,
        rcvbuf_errors: b.rcvbuf_errors.saturating_sub(a.rcvbuf_errors) as f64,
    })
}

/// The churn measurement: one `sut churn` process, its result printed as a sentence.
fn churn_step(s: &Settings, exe: &Path, k: u64) -> Res<()> {
    log(&format!("churn: {k} calls, {} worker thread(s)", s.workers));
    let mut sut = Proc::spawn(
        Command::new(exe).args([
            "sut",
            "churn",
            &k.to_string(),
            &s.workers.to_string(),
            &s.port_min.to_string(),
        ]),
        "the churning SUT",
        &s.out.join("churn-sut.log"),
    )?;
    // about 100 µs per call at worst, and a 10 ms tick per batch
    let limit = READY_TIMEOUT + Duration::from_micros(k * 100 + k / CHURN_BATCH as u64 * 20_000);
    let r = parse_flat_json(&sut.line(limit, "its result")?)?;
    sut.wait(EXIT_TIMEOUT)?;
    let get = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
    let calls = get("calls");
    let cpu_us = get("cpu_ns") / 1e3 / calls;
    let worker_us = get("worker_cpu_ns") / 1e3 / calls;
    let wall_us = get("wall_us") / calls;
    println!(
        "callflow media churn: {} CPUs ({}), {} worker thread(s): {calls} calls' media reserved, \
         opened and dropped, {CHURN_BATCH} at a time, each batch waiting for its Closed events: \
         {cpu_us:.1} µs of process CPU per call ({worker_us:.1} µs of it on the workers), \
         {wall_us:.1} µs of wall time per call",
        thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        s.workers,
    );
    Ok(())
}

struct Snapshot {
    at: Instant,
    sut_ticks: u64,
    sut_minor_faults: u64,
    /// CPU time per thread name, in ns.
    sut_threads: HashMap<String, u64>,
    gen_ticks: u64,
    from_sut: HashMap<String, f64>,
    rcvbuf_errors: u64,
}

impl Snapshot {
    fn take(sut: &mut Proc, gen_pid: u32) -> Res<Snapshot> {
        let at = Instant::now();
        let sut_ticks = proc_ticks(sut.pid())?;
        let sut_minor_faults = proc_minor_faults(sut.pid())?;
        let gen_ticks = proc_ticks(gen_pid)?;
        let sut_threads = thread_cpu_ns(sut.pid());
        let rcvbuf_errors = udp_rcvbuf_errors()?;
        sut.send("snap")?;
        let counters = parse_flat_json(&sut.line(LINE_TIMEOUT, "its counters")?)?;
        Ok(Snapshot {
            at,
            sut_ticks,
            sut_minor_faults,
            sut_threads,
            gen_ticks,
            from_sut: counters,
            rcvbuf_errors,
        })
    }
}

fn report(s: &Settings, rows: &[Row]) -> String {
    let mut o = String::new();
    let line = |o: &mut String, l: String| {
        o.push_str(&l);
        o.push('\n');
    };
    line(
        &mut o,
        format!(
            "callflow media load: {} CPUs ({}), {} worker thread(s), calls {}, {} s measured \
             after {} s of warm-up per step, generator on the same machine; raw output in {}",
            thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model(),
            s.workers,
            s.idle.describe(s.record),
            s.duration.as_secs(),
            s.warmup.as_secs(),
            s.out.display()
        ),
    );
    line(&mut o, String::new());
    line(
        &mut o,
        "| N | loop | packets/s | SUT CPU | µs/packet | generator CPU | SUT RSS | RSS/call | \
         RSS/call less recording | late > 40 ms | lost | load | bar |"
            .into(),
    );
    line(
        &mut o,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".into(),
    );
    for r in rows {
        let bar = match (r.holds(), r.g("late_ticks") > 0.0) {
            (true, _) => "holds",
            (false, false) => "**fails**",
            // The generator itself fell more than 40 ms behind: the step says little.
            (false, true) => "**fails** (generator behind)",
        };
        line(
            &mut o,
            format!(
                "| {} | {} | {:.0} | {:.0}% | {:.2} | {:.0}% | {:.1} MiB | {:.1} KiB | {:.1} KiB | \
                 {} ({:.3}%) | {} | {:.1} | {} |",
                r.n,
                if r.mode == Mode::Raw {
                    "raw UDP"
                } else {
                    "callflow"
                },
                r.packets() / r.secs,
                100.0 * r.sut_cpu,
                r.us_per_packet(),
                100.0 * r.gen_cpu,
                r.rss_end_kib / 1024.0,
                r.rss_per_call_kib(),
                r.rss_per_call_less_recording_kib(),
                num(r.late()),
                r.late_pct(),
                num(r.lost()),
                r.load1,
                bar
            ),
        );
    }
    line(&mut o, String::new());
    line(
        &mut o,
        "(packets/s: sent to the SUT plus received from it, counted by the generator; CPU in % \
         of one core (utime+stime; the worker threads' from the scheduler's run time, in ns); µs/packet: SUT CPU / packets; RSS: VmRSS at the end of the \
         window; RSS/call: (that - VmRSS before the first socket) / N, the shared prompt \
         excluded; less recording: minus 16,000 bytes per second since the calls opened, the \
         PCM each call's recorder holds in memory; late: frames received > 40 ms after their \
         stream's schedule plus frames the SUT skipped; lost: sequence gaps at both ends and \
         SUT drops; load: 1-minute load average at the step's start)"
            .into(),
    );
    line(&mut o, String::new());
    for r in rows.iter().filter(|r| r.mode == Mode::Media) {
        let Some(raw) = rows.iter().find(|x| x.mode == Mode::Raw && x.n == r.n) else {
            continue;
        };
        line(
            &mut o,
            format!(
                "N={}: callflow's packets per CPU-second = {:.0}% of the raw loop's ({:.2} vs \
                 {:.2} µs/packet); worker thread(s) {:.0}% of a core of the SUT's {:.0}%, \
                 {:.1} µs per call per second (raw threads: {:.0}%, {:.1} µs); {:.0} page \
                 faults/s",
                r.n,
                100.0 * raw.us_per_packet() / r.us_per_packet(),
                r.us_per_packet(),
                raw.us_per_packet(),
                100.0 * r.sut_worker_cpu,
                100.0 * r.sut_cpu,
                r.worker_us_per_call_s(),
                100.0 * raw.sut_worker_cpu,
                raw.worker_us_per_call_s(),
                r.sut_faults_per_s,
            ),
        );
    }
    for mode in [Mode::Raw, Mode::Media] {
        let best = rows
            .iter()
            .filter(|r| r.mode == mode && r.holds())
            .map(|r| r.n)
            .max();
        line(
            &mut o,
            format!(
                "largest N holding the bar ({}): {}",
                mode.name(),
                best.map_or("none".to_string(), |n| n.to_string())
            ),
        );
    }
    o
}

/// A child process of the runner: its stdout read line by line on a thread, its stderr to a
/// file. Dropped while still running, it is killed (by its pid) and reaped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    what: &'static str,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, what: &'static str, log: &Path) -> Res<Proc> {
        let err = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {what}: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            stdin,
            lines,
            what,
            log: log.to_owned(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn line(&mut self, timeout: Duration, expecting: &str) -> Res<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(e) => {
                let how = match (e, self.child.try_wait()) {
                    (_, Ok(Some(status))) => format!("exited ({status})"),
                    (mpsc::RecvTimeoutError::Timeout, _) => format!("gave nothing for {timeout:?}"),
                    (mpsc::RecvTimeoutError::Disconnected, _) => "closed its output".into(),
                };
                Err(format!(
                    "{} {how} while we waited for {expecting}; its log: {}",
                    self.what,
                    self.log.display()
                )
                .into())
            }
        }
    }

    fn send(&mut self, line: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("writing to {}: {e}", self.what).into())
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn wait(&mut self, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "{} failed ({status}); its log: {}",
                        self.what,
                        self.log.display()
                    )
                    .into());
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    return Err(format!("{} did not exit within {timeout:?}", self.what).into());
                }
                Err(e) => return Err(format!("waiting for {}: {e}", self.what).into()),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The system under test

fn sut(args: &[String]) -> Res<()> {
    let [mode, n, workers, port_min] = args else {
        return Err("usage: load sut raw|media|churn N WORKERS PORT_MIN".into());
    };
    if mode == "churn" {
        let k: usize = parse_bounded(n, "K", 1, MAX_CHURN as usize)?;
        let workers: usize = parse_bounded(workers, "WORKERS", 1, MAX_WORKERS)?;
        let port_min: u16 = parse_bounded(port_min, "PORT_MIN", 1024, 60000)?;
        return sut_churn(k, workers, port_min);
    }
    let n: usize = parse_bounded(n, "N", 1, MAX_CALLS)?;
    let workers: usize = parse_bounded(workers, "WORKERS", 1, MAX_WORKERS)?;
    let port_min: u16 = parse_bounded(port_min, "PORT_MIN", 1024, 60000)?;
    let port_max = port_min as usize + 2 * (n + SUT_SPARE_PORTS);
    let port_max = u16::try_from(port_max).map_err(|_| "port range beyond 65535")?;
    let snap: Box<dyn Fn() -> String> = match mode.as_str() {
        "raw" => sut_raw(n, workers, port_min, port_max)?,
        "media" => sut_media(n, workers, port_min, port_max)?,
        m => return Err(format!("unknown SUT mode {m:?}").into()),
    };
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        if line.trim() == "snap" {
            let mut out = io::stdout().lock();
            writeln!(out, "{}", snap()).and_then(|()| out.flush())?;
        }
    }
    // End of stdin: the runner is done. Exit without closing the calls one by one: finishing
    // thousands of recordings is not what is measured.
    std::process::exit(0)
}

/// Prints the ports and the ready line.
fn announce(ports: &[u16], rss_before_kib: f64) -> Res<()> {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let rss_open_kib = status_kib(std::process::id(), "VmRSS:")?;
    let mut out = io::stdout().lock();
    writeln!(out, "{}", list.join(","))?;
    writeln!(
        out,
        "{{\"rss_before_kib\":{rss_before_kib},\"rss_open_kib\":{rss_open_kib}}}"
    )?;
    out.flush()?;
    Ok(())
}

/// The media counters the workers publish through `metrics`, kept by the recorder below.
#[derive(Default)]
struct MediaCounters {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    late_frames: Arc<AtomicU64>,
}

struct BenchRecorder(Arc<MediaCounters>);

impl Recorder for BenchRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = &self.0;
        let atomic = match key.name() {
            "callflow_media_packets_sent_total" => &c.sent,
            "callflow_media_packets_received_total" => &c.received,
            "callflow_media_packets_dropped_total" => &c.dropped,
            "callflow_media_packets_lost_total" => &c.lost,
            "callflow_media_frames_late_total" => &c.late_frames,
            _ => return Counter::noop(),
        };
        Counter::from_arc(atomic.clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn sut_media(
    n: usize,
    workers: usize,
    port_min: u16,
    port_max: u16,
) -> Res<Box<dyn Fn() -> String>> {
    let counters = Arc::new(MediaCounters::default());
    metrics::set_global_recorder(BenchRecorder(counters.clone()))
        .map_err(|_| "a metrics recorder was already set")?;
    // The shared prompt: 3 s of a 440 Hz tone, encoded once for every call.
    let pcm: Vec<i16> = (0..3 * 8000)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 8000.0).sin()) as i16)
        .collect();
    let prompt = Arc::new(Audio::from_pcm(&pcm));
    let rss_before_kib = status_kib(std::process::id(), "VmRSS:")?;
    let media = Media::start(&MediaConfig {
        ip: LOOPBACK.into(),
        port_min,
        port_max,
        workers,
        spool_dir: std::env::temp_dir().join("callflow-bench-spool"),
    })?;
    let idle = Idle::from_env()?;
    // Symmetric RTP: each call sends to where the generator's packets come from.
    let params = StreamParams {
        send: idle != Idle::Hold,
        ..StreamParams::pcmu(None)
    };
    let record = recording_on() && idle == Idle::Active;
    let mut calls = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let reservation = media.reserve()?;
        ports.push(reservation.port());
        let (call, events) = media.open(reservation, params);
        if idle == Idle::Active {
            call.play(vec![PlayItem::Audio(prompt.clone())], 0, false);
        }
        if record {
            call.record(
                RecordOptions {
                    max_length_ms: 3_600_000,
                    silence_timeout_ms: 0,
                    trim: false,
                    ..Default::default()
                },
                None,
            );
        }
        calls.push((call, events));
    }
    announce(&ports, rss_before_kib)?;
    Ok(Box::new(move || {
        // The calls live as long as this closure (the process).
        let _ = (&media, &calls);
        let c = &counters;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{{\"sent\":{},\"received\":{},\"dropped\":{},\"lost\":{},\"late_frames\":{}}}",
            v(&c.sent),
            v(&c.received),
            v(&c.dropped),
            v(&c.lost),
            v(&c.late_frames)
        )
    }))
}

/// Opens and closes `k` calls' media, [`CHURN_BATCH`] at a time, and prints the CPU time
/// (nanoseconds, from the scheduler's per-thread counts) and wall time it took.
fn sut_churn(k: usize, workers: usize, port_min: u16) -> Res<()> {
    let port_max = port_min as usize + 2 * (CHURN_BATCH + SUT_SPARE_PORTS);
    let port_max = u16::try_from(port_max).map_err(|_| "port range beyond 65535")?;
    let media = Media::start(&MediaConfig {
        ip: LOOPBACK.into(),
        port_min,
        port_max,
        workers,
        spool_dir: std::env::temp_dir().join("callflow-bench-spool"),
    })?;
    let params = StreamParams::pcmu(None);
    let pid = std::process::id();
    let cpu_ns = |workers_only: bool| -> u64 {
        thread_cpu_ns(pid)
            .iter()
            .filter(|(k, _)| !workers_only || k.starts_with("media-"))
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    let (t0, ns0, worker0) = (Instant::now(), cpu_ns(false), cpu_ns(true));
    let mut closing = Vec::with_capacity(CHURN_BATCH);
    let mut done = 0;
    while done < k {
        let batch = CHURN_BATCH.min(k - done);
        for _ in 0..batch {
            let (call, events) = media.open(media.reserve()?, params);
            drop(call);
            closing.push(events);
        }
        for mut events in closing.drain(..) {
            // `Closed` is the last event; the worker's tick bounds the wait.
            while let Some(e) = events.blocking_recv() {
                if let MediaEvent::Closed { .. } = e {
                    break;
                }
            }
        }
        done += batch;
    }
    let wall_us = t0.elapsed().as_micros();
    let ns = cpu_ns(false) - ns0;
    let worker_ns = cpu_ns(true) - worker0;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{{\"calls\":{k},\"cpu_ns\":{ns},\"worker_cpu_ns\":{worker_ns},\"wall_us\":{wall_us}}}"
    )?;
    out.flush()?;
    Ok(())
}

#[derive(Default)]
struct RawCounters {
    sent: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
}

fn sut_raw(n: usize, threads: usize, port_min: u16, port_max: u16) -> Res<Box<dyn Fn() -> String>> {
    let rss_before_kib = status_kib(std::process::id(), "VmRSS:")?;
    // Even ports from the range, as the media layer takes them; one held elsewhere is skipped.
    let mut sockets = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    let first = port_min + port_min % 2;
    for port in (first..=port_max).step_by(2) {
        if sockets.len() == n {
            break;
        }
        let Ok(socket) = UdpSocket::bind(SocketAddr::from((LOOPBACK, port))) else {
            continue;
        };
        socket.set_nonblocking(true)?;
        sockets.push(socket);
        ports.push(port);
    }
    if sockets.len() < n {
        return Err(format!(
            "only {} free even ports in {port_min}-{port_max}",
            sockets.len()
        )
        .into());
    }
    let counters = Arc::new(RawCounters::default());
    let mut groups: Vec<Vec<RawStream>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, socket) in sockets.into_iter().enumerate() {
        groups[i % threads].push(RawStream {
            socket,
            phase: (i / threads) as u64 % 2,
            peer: None,
            seq: rand::random(),
            ts: rand::random(),
            last_in: None,
        });
    }
    for (i, streams) in groups.into_iter().enumerate() {
        let counters = counters.clone();
        thread::Builder::new()
            .name(format!("raw-{i}"))
            .spawn(move || raw_loop(streams, &counters))?;
    }
    announce(&ports, rss_before_kib)?;
    Ok(Box::new(move || {
        let c = &counters;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{{\"sent\":{},\"received\":{},\"lost\":{}}}",
            v(&c.sent),
            v(&c.received),
            v(&c.lost)
        )
    }))
}

struct RawStream {
    socket: UdpSocket,
    phase: u64,
    peer: Option<SocketAddr>,
    seq: u16,
    ts: u32,
    last_in: Option<u16>,
}

/// The ceiling: per tick, each socket drained and, every other tick, sent one packet whose
/// sequence number and timestamp are patched into a prebuilt header; nothing else.
fn raw_loop(mut streams: Vec<RawStream>, counters: &RawCounters) {
    let mut packet = [0u8; PACKET];
    packet[0] = 0x80; // RTP version 2, payload type 0 (PCMU)
    packet[8..12].copy_from_slice(&rand::random::<u32>().to_be_bytes());
    packet[12..].copy_from_slice(&tone_frame());
    let mut buf = [0u8; 2048];
    let mut next = Instant::now();
    let mut tick: u64 = 0;
    loop {
        let (mut sent, mut received, mut lost) = (0, 0, 0);
        for s in &mut streams {
            for _ in 0..READS_PER_TICK {
                match s.socket.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        received += 1;
                        s.peer = Some(from);
                        if len >= 4 {
                            let seq = u16::from_be_bytes([buf[2], buf[3]]);
                            if let Some(last) = s.last_in {
                                let gap = seq.wrapping_sub(last) as i16;
                                if gap > 1 {
                                    lost += gap as u64 - 1;
                                }
                            }
                            s.last_in = Some(seq);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => continue,
                }
            }
            if (tick + s.phase).is_multiple_of(2)
                && let Some(peer) = s.peer
            {
                packet[2..4].copy_from_slice(&s.seq.to_be_bytes());
                packet[4..8].copy_from_slice(&s.ts.to_be_bytes());
                if s.socket.send_to(&packet, peer).is_ok() {
                    sent += 1;
                }
                s.seq = s.seq.wrapping_add(1);
                s.ts = s.ts.wrapping_add(PAYLOAD as u32);
            }
        }
        counters.sent.fetch_add(sent, Ordering::Relaxed);
        counters.received.fetch_add(received, Ordering::Relaxed);
        counters.lost.fetch_add(lost, Ordering::Relaxed);
        tick += 1;
        next += TICK;
        let t = Instant::now();
        if next > t {
            thread::sleep(next - t);
        } else if t - next > Duration::from_millis(LATE_MS) {
            next = t;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The generator

/// One call as the generator sees it.
struct GenStream {
    socket: UdpSocket,
    out: Outgoing,
    phase: u64,
    rx: RxState,
}

/// The received stream's position: the last sequence number and timestamp, the timestamp
/// unwrapped since the first packet, and the earliest arrival offset seen (arrival time minus
/// the packet's place in the stream), against which lateness is measured.
#[derive(Default)]
struct RxState {
    started: bool,
    last_seq: u16,
    last_ts: u32,
    ts: i64,
    base_us: i64,
}

#[derive(Default)]
struct GenCounts {
    sent: u64,
    received: u64,
    late: u64,
    late_20ms: u64,
    lost: u64,
    skipped: u64,
    reordered: u64,
    max_late_us: i64,
    /// When (µs from the generator's start) the first and the last late packet arrived.
    first_late_us: i64,
    last_late_us: i64,
    send_errors: u64,
    recv_errors: u64,
    late_ticks: u64,
    max_overrun_us: u64,
}

impl RxState {
    fn on_packet(&mut self, now_us: i64, seq: u16, ts: u32, window: bool, c: &mut GenCounts) {
        if !self.started {
            *self = RxState {
                started: true,
                last_seq: seq,
                last_ts: ts,
                ts: 0,
                base_us: now_us,
            };
            c.received += u64::from(window);
            return;
        }
        let dseq = seq.wrapping_sub(self.last_seq) as i16;
        if dseq <= 0 {
            c.reordered += u64::from(window);
            return;
        }
        let dts = ts.wrapping_sub(self.last_ts) as i32 as i64;
        self.ts += dts;
        self.last_seq = seq;
        self.last_ts = ts;
        let offset = now_us - self.ts * SAMPLE_US;
        self.base_us = self.base_us.min(offset);
        let late = offset - self.base_us;
        if !window {
            return;
        }
        c.received += 1;
        c.lost += dseq as u64 - 1;
        let frames = dts / PAYLOAD as i64;
        if frames > dseq as i64 {
            c.skipped += (frames - dseq as i64) as u64;
        }
        if late > LATE_US {
            if c.late == 0 {
                c.first_late_us = now_us;
            }
            c.late += 1;
            c.last_late_us = now_us;
        }
        if late > LATE_US / 2 {
            c.late_20ms += 1;
        }
        c.max_late_us = c.max_late_us.max(late);
    }
}

fn generator(args: &[String]) -> Res<()> {
    let [n, warmup_ms, duration_ms] = args else {
        return Err("usage: load gen N WARMUP_MS DURATION_MS (ports on stdin)".into());
    };
    let n: usize = parse_bounded(n, "N", 1, MAX_CALLS)?;
    let warmup = Duration::from_millis(parse_bounded(warmup_ms, "WARMUP_MS", 0, 60_000)?);
    let duration = Duration::from_millis(parse_bounded(duration_ms, "DURATION_MS", 1, 600_000)?);
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the ports: {e}"))?;
    let ports = line
        .trim()
        .split(',')
        .map(|p| p.parse::<u16>().map_err(|_| format!("bad port {p:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    if ports.len() != n {
        return Err(format!("{} ports given for {n} calls", ports.len()).into());
    }
    let idle = Idle::from_env()?;
    let mut streams = Vec::with_capacity(n);
    for (i, &port) in ports.iter().enumerate() {
        let socket = UdpSocket::bind(SocketAddr::from((LOOPBACK, 0)))
            .and_then(|s| s.connect(SocketAddr::from((LOOPBACK, port))).map(|()| s))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| format!("socket for port {port}: {e}"))?;
        streams.push(GenStream {
            socket,
            out: Outgoing::new(rand::random(), rand::random(), rand::random()),
            phase: i as u64 % 2,
            rx: RxState::default(),
        });
    }
    let frame = tone_frame();
    let mut packet = [0u8; PACKET];
    let mut buf = [0u8; 2048];
    let mut c = GenCounts::default();
    {
        let mut out = io::stdout().lock();
        writeln!(out, "{{\"bound\":{n}}}").and_then(|()| out.flush())?;
    }
    let start = Instant::now();
    let (window_start, end) = (start + warmup, start + warmup + duration);
    let mut next = start;
    let mut tick: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let window = now >= window_start;
        for s in &mut streams {
            for _ in 0..READS_PER_TICK {
                match s.socket.recv(&mut buf) {
                    Ok(len) => {
                        let at = start.elapsed().as_micros() as i64;
                        match RtpReader::new(&buf[..len]) {
                            Ok(r) => s.rx.on_packet(
                                at,
                                u16::from(r.sequence_number()),
                                r.timestamp(),
                                window,
                                &mut c,
                            ),
                            Err(_) => c.recv_errors += u64::from(window),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP port unreachable before the SUT's socket exists or after it closed.
                    Err(_) => {
                        c.recv_errors += u64::from(window);
                        break;
                    }
                }
            }
            let talks = match idle {
                Idle::Active => true,
                // one packet, for symmetric RTP to know where to send
                Idle::Silent => tick < 2,
                Idle::Hold => false,
            };
            if talks && (tick + s.phase).is_multiple_of(2) {
                let len = s.out.audio(0, &frame, &mut packet);
                match s.socket.send(&packet[..len]) {
                    Ok(_) => c.sent += u64::from(window),
                    Err(_) => c.send_errors += u64::from(window),
                }
            }
        }
        tick += 1;
        next += TICK;
        let t = Instant::now();
        if next > t {
            thread::sleep(next - t);
        } else {
            let over = t - next;
            if window {
                c.max_overrun_us = c.max_overrun_us.max(over.as_micros() as u64);
                if over > Duration::from_millis(LATE_MS) {
                    c.late_ticks += 1;
                }
            }
            if over > Duration::from_millis(LATE_MS) {
                next = t;
            }
        }
    }
    let fields = [
        ("sent", c.sent as f64),
        ("received", c.received as f64),
        ("late", c.late as f64),
        ("late_20ms", c.late_20ms as f64),
        ("lost", c.lost as f64),
        ("skipped", c.skipped as f64),
        ("reordered", c.reordered as f64),
        ("max_late_ms", c.max_late_us as f64 / 1000.0),
        ("first_late_ms", c.first_late_us as f64 / 1000.0),
        ("last_late_ms", c.last_late_us as f64 / 1000.0),
        ("send_errors", c.send_errors as f64),
        ("recv_errors", c.recv_errors as f64),
        ("late_ticks", c.late_ticks as f64),
        ("max_overrun_ms", c.max_overrun_us as f64 / 1000.0),
    ];
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\":{}", num(*v)))
        .collect();
    let mut out = io::stdout().lock();
    writeln!(out, "{{{}}}", body.join(",")).and_then(|()| out.flush())?;
    Ok(())
}

/// 20 ms of a 400 Hz tone in µ-law (exactly 8 periods, so that frames join without a click).
fn tone_frame() -> [u8; PAYLOAD] {
    let mut f = [0u8; PAYLOAD];
    for (i, b) in f.iter_mut().enumerate() {
        let s = 4000.0 * (2.0 * std::f64::consts::PI * 400.0 * i as f64 / 8000.0).sin();
        *b = g711::encode_sample(Law::Mu, s as i16);
    }
    f
}

// ---------------------------------------------------------------------------------------
// Small helpers: /proc, settings, flat JSON

fn proc_ticks(pid: u32) -> Res<u64> {
    proc_stat(pid, stat_ticks)
}

/// Minor page faults (field 10): first touches of memory, which cost much more than a copy
/// on this virtual machine.
fn proc_minor_faults(pid: u32) -> Res<u64> {
    proc_stat(pid, |stat| stat_field(stat, 10))
}

fn proc_stat(pid: u32, read: impl Fn(&str) -> Option<u64>) -> Res<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    read(&stat).ok_or_else(|| format!("{path}: unexpected format").into())
}

/// utime + stime from a `/proc/…/stat` line (fields 14 and 15).
fn stat_ticks(stat: &str) -> Option<u64> {
    Some(stat_field(stat, 14)? + stat_field(stat, 15)?)
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/…/stat` line, counted after the name in
/// parentheses, which may hold spaces.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// CPU time per thread name in nanoseconds (`/proc/…/task/…/schedstat`, its first field: far
/// finer than clock ticks). Threads that exit are missing; ours do not during a step.
fn thread_cpu_ns(pid: u32) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    for entry in dir.flatten() {
        let (Ok(comm), Ok(sched)) = (
            fs::read_to_string(entry.path().join("comm")),
            fs::read_to_string(entry.path().join("schedstat")),
        ) else {
            continue;
        };
        if let Some(ns) = sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            *m.entry(comm.trim().to_string()).or_insert(0) += ns;
        }
    }
    m
}

fn status_kib(pid: u32, field: &str) -> Res<f64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("{path}: no {field}").into())
}

/// The machine's UDP receive-buffer drops (`RcvbufErrors` in /proc/net/snmp).
fn udp_rcvbuf_errors() -> Res<u64> {
    let snmp = fs::read_to_string("/proc/net/snmp").map_err(|e| format!("/proc/net/snmp: {e}"))?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return Err("/proc/net/snmp: no Udp lines".into());
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| "/proc/net/snmp: no Udp RcvbufErrors".into())
}

fn open_files_limit() -> Res<u64> {
    let limits =
        fs::read_to_string("/proc/self/limits").map_err(|e| format!("/proc/self/limits: {e}"))?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("/proc/self/limits: no open files limit")?;
    Ok(soft.parse().unwrap_or(u64::MAX))
}

fn load_average() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// RECORD=0 leaves recording out, to see what it costs (the SUT inherits the runner's
/// environment).
fn recording_on() -> bool {
    std::env::var("RECORD").map_or(true, |v| v != "0")
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_num(name: &str, default: u64, min: u64, max: u64) -> Res<u64> {
    match std::env::var(name) {
        Ok(v) => parse_bounded(&v, name, min, max),
        Err(_) => Ok(default),
    }
}

fn parse_bounded<T>(v: &str, name: &str, min: T, max: T) -> Res<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match v.trim().parse::<T>() {
        Ok(x) if x >= min && x <= max => Ok(x),
        _ => Err(format!("{name}: {v:?} is not a whole number in {min}..={max}").into()),
    }
}

/// A flat JSON object of numbers, as the children print them.
fn parse_flat_json(line: &str) -> Res<HashMap<String, f64>> {
    let body = line
        .trim()
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .ok_or_else(|| format!("not a JSON object: {line:?}"))?;
    let mut m = HashMap::new();
    for field in body.split(',').filter(|f| !f.trim().is_empty()) {
        let (k, v) = field
            .split_once(':')
            .ok_or_else(|| format!("bad field {field:?} in {line:?}"))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("bad number in {field:?}"))?;
        m.insert(k.trim().trim_matches('"').to_string(), v);
    }
    Ok(m)
}

/// A number for JSON: whole numbers without a fraction, others with three decimals, and
/// `null` for what is not a number.
fn num(v: f64) -> String {
    if !v.is_finite() {
        "null".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

fn log(msg: &str) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!("load [{secs}]: {msg}");
}
