//! ticktest: dahdi_test for kevent.
//!
//! Runs the 1 kHz tick source for `--seconds N` one-second passes and prints
//! one accuracy figure per pass computed as dahdi_test computes it: each
//! tick counts 8 samples (8 kHz audio), a pass ends once 8000 samples are
//! counted, and its accuracy is
//! `100 × (count − min(count, |count − measured|)) / count` where
//! `measured` is the pass's elapsed time in 125 µs sample intervals. Then
//! Best / Worst / Average and the cumulative figure (all samples over all
//! time), as dahdi_test's summary.
//!
//! One difference, on purpose: dahdi_test adds up only the time spent
//! inside `read()` (it reads 20 ms chunks, so the gaps between reads are
//! negligible). At one wake per millisecond those gaps would be a visible
//! share of the pass, so `measured` here is the continuous time from the
//! end of the previous pass to the end of this one.
//!
//! The formula sees only the average rate, so ticktest also prints missed
//! ticks (more than one expiration per wake), lateness percentiles and the
//! longest gap — and what the source cost: its thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`) as a share of the wall time, the share spent
//! spinning (the Ticker), and its run-queue wait (`/proc/thread-self/
//! schedstat`: runnable in the guest but not running; a gap much longer
//! than that came from outside the guest's scheduler — the host, or a late
//! wake-up interrupt). Every source gets one uncounted warm-up wake whose
//! time starts its first pass, so set-up is outside every pass.
//!
//! The kevent source is the [`Ticker`] with its defaults (clock_nanosleep
//! with the adaptive spin: see `kevent_timer::ticker`'s docs), changed only
//! by the options given: `--method`, `--spin off|adaptive[:Q[:PCT]]|µs`,
//! `--rt` (`SCHED_FIFO` 50), `--cpu N` (pin the tick thread). When the
//! other cores are busy: `--rt --cpu N` with the busy work kept off CPU N.
//!
//! ```text
//! cargo run --release --example ticktest -- --seconds 10
//! cargo run --release --example ticktest -- --compare --json
//! cargo run --release --example ticktest -- --rt --plot ticktest.svg
//! taskset -c 0 busy-thing & cargo run --release --example ticktest -- --compare --rt --cpu 1
//! ```
//!
//! Each pass's figure is printed as the pass ends (as dahdi_test does), and
//! Ctrl-C (SIGINT) ends the run early with the summary of the passes done.
//!
//! `--compare` runs the same test, pass by pass interleaved (A B C A B C …,
//! each pass a fresh start), beside a plain timerfd loop (relative periodic
//! timerfd, default slack, SCHED_OTHER) and a naive loop of 1 ms
//! `epoll_wait` timeouts; the header says what each column is. `--rt`,
//! `--cpu`, `--method` and `--spin` apply only to kevent's tick threads
//! (the Ticker, and for `--rt`/`--cpu` the EVFILT_TIMER source); the peers
//! are the plain loops a user would write. `--compare-wakeups` runs the EVFILT_TIMER source with each
//! of the timer storage's wake-up mechanisms on each backend, interleaved
//! the same way (the figures in `kevent_timer::storage`'s docs).
//!
//! `--json` prints one object: `passes` is the array of per-pass accuracy
//! figures (%, in order), `pass_count` their number, then `best`, `worst`,
//! `average`, `cumulative` (%), `ticks`, `wakes`, `missed`,
//! `longest_gap_us`, `lateness_us: {p50, p99, p999, max}`, `cpu_percent`,
//! `spin_percent` (null but for the Ticker), `run_queue_wait_us` and
//! `clock` (the Ticker's health: clock, method, spin, thread); with
//! `--compare`/`--compare-wakeups` the other sources' objects sit under
//! `compare`, keyed by name, and `config` says what the kevent column is.
//! Per-pass figures go to stderr as they come.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kevent_core::Backend;
use kevent_timer::storage::Wakeup;
use kevent_timer::{AdaptiveSpin, Health, Spin, TickStats, Ticker, TickerError, WaitMethod};
use serde_json::{json, Value};

/// Set by SIGINT: end the run after the current wake, print what is done.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT sets [`STOP`]; `SA_RESTART` so blocking reads and sleeps go on
/// until the next tick, where the flag is looked at.
fn install_sigint() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value of this C struct.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa` is a valid sigaction whose handler only stores to an
    // atomic (async-signal-safe); the old action is not wanted.
    cvt(unsafe { libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) })?;
    Ok(())
}

/// dahdi_test counts 8 samples per 1 ms tick and ends a pass at 8000.
const SAMPLES_PER_MS: f64 = 8.0;
const PASS_SAMPLES: f64 = 8000.0;
const NS_PER_SAMPLE: f64 = 125_000.0;

#[derive(Parser, Debug, Clone)]
#[command(about = "dahdi_test for kevent: accuracy of the 1 kHz tick source")]
struct Args {
    /// Number of 1-second passes.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Tick rate in Hz.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How kevent's ticker waits (default: the Ticker's, nanosleep).
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// How kevent's ticker spins before each deadline: `off`,
    /// `adaptive[:QUANTILE[:MAX_PERCENT]]` (e.g. `adaptive:0.9:20`), or a
    /// fixed number of µs (default: the Ticker's, adaptive p99 ≤ 20 % with
    /// nanosleep).
    #[arg(long, value_parser = parse_spin, conflicts_with = "spin_us")]
    spin: Option<Spin>,
    /// Same as `--spin N` (0: off).
    #[arg(long)]
    spin_us: Option<u64>,
    /// Run the tick thread under SCHED_FIFO (the kevent sources only).
    #[arg(long)]
    rt: bool,
    /// Pin the tick thread to this CPU (the kevent sources only): what to
    /// do when the other cores are busy (with --rt, and the busy work
    /// pinned elsewhere).
    #[arg(long)]
    cpu: Option<usize>,
    /// What the single run measures: the Ticker, or an EVFILT_TIMER knote
    /// read through a kevent queue.
    #[arg(long, value_enum, default_value_t = Via::Ticker)]
    via: Via,
    /// The kevent queue's backend (`--via kqueue`).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// How the timer storage wakes the waiting thread (`--via kqueue`).
    #[arg(long, value_enum, default_value_t = WakeupArg::Timerfd)]
    wakeup: WakeupArg,
    /// Also run a plain timerfd loop and a naive 1 ms epoll_wait loop (and
    /// both kevent sources).
    #[arg(long)]
    compare: bool,
    /// Run the EVFILT_TIMER source with every wake-up mechanism on every
    /// backend, interleaved.
    #[arg(long, conflicts_with = "compare")]
    compare_wakeups: bool,
    /// Print one JSON object instead of the text report: `passes` is the
    /// array of per-pass accuracy figures (%), `pass_count` their number.
    #[arg(long)]
    json: bool,
    /// Draw the lateness histogram and per-pass accuracy to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    Ticker,
    Kqueue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Auto,
    Epoll,
    Uring,
}

impl From<BackendArg> for Backend {
    fn from(b: BackendArg) -> Backend {
        match b {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Epoll => Backend::Epoll,
            BackendArg::Uring => Backend::IoUring,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WakeupArg {
    /// A timerfd armed with TFD_TIMER_ABSTIME (the default).
    Timerfd,
    /// The queue's wait timeout (epoll_pwait2 / io_uring EXT_ARG).
    Timeout,
    /// An io_uring TIMEOUT op with IORING_TIMEOUT_ABS (io_uring only).
    UringTimeout,
}

impl From<WakeupArg> for Wakeup {
    fn from(w: WakeupArg) -> Wakeup {
        match w {
            WakeupArg::Timerfd => Wakeup::Timerfd,
            WakeupArg::Timeout => Wakeup::QueueTimeout,
            WakeupArg::UringTimeout => Wakeup::UringTimeout,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    Nanosleep,
    Timerfd,
}

/// `off`, `adaptive[:QUANTILE[:MAX_PERCENT]]`, or a whole number of µs
/// (0 is off). Ranges are checked by the Ticker's builder.
fn parse_spin(s: &str) -> Result<Spin, String> {
    let bad =
        || format!("`{s}`: expected off, adaptive[:QUANTILE[:MAX_PERCENT]], or a number of µs");
    let mut parts = s.split(':');
    match parts.next() {
        Some("off") if parts.next().is_none() => Ok(Spin::Off),
        Some("adaptive") => {
            let mut a = AdaptiveSpin::new();
            if let Some(q) = parts.next() {
                a = a.quantile(q.parse().map_err(|_| bad())?);
            }
            if let Some(p) = parts.next() {
                a = a.max_percent(p.parse().map_err(|_| bad())?);
            }
            if parts.next().is_some() {
                return Err(bad());
            }
            Ok(Spin::Adaptive(a))
        }
        _ => s
            .parse::<u64>()
            .map(|us| Spin::from(Duration::from_micros(us)))
            .map_err(|_| bad()),
    }
}

/// One wake of a source.
struct Wake {
    /// Ticks this wake delivers.
    count: u64,
    /// Deadline of the oldest tick delivered.
    deadline_ns: u64,
    now_ns: u64,
}

trait Source {
    fn next(&mut self) -> io::Result<Wake>;
    /// The source's own health report, if it keeps one (the Ticker).
    fn health(&self) -> Option<Health> {
        None
    }
}

/// The calling thread's run-queue wait so far (ns): the second field of
/// `/proc/thread-self/schedstat` (`CONFIG_SCHED_INFO`), the time it was
/// runnable in the guest but not running. `None` if unavailable.
struct RunDelay(Option<std::fs::File>);

impl RunDelay {
    /// Opens the calling thread's schedstat (read it on that thread only).
    fn open() -> Self {
        RunDelay(std::fs::File::open("/proc/thread-self/schedstat").ok())
    }

    fn read_ns(&mut self) -> Option<u64> {
        use std::io::{Read, Seek};
        let f = self.0.as_mut()?;
        let mut buf = [0u8; 96];
        f.rewind().ok()?;
        let n = f.read(&mut buf).ok()?;
        std::str::from_utf8(&buf[..n])
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in ns.
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `clock_gettime(id)` in ns (both clocks used here always exist).
fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; `id` is a clock that always exists.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// kevent's [`Ticker`].
struct KeventSource(Ticker);

impl Source for KeventSource {
    fn next(&mut self) -> io::Result<Wake> {
        let t = self.0.tick().map_err(io::Error::other)?;
        Ok(Wake {
            count: t.count,
            deadline_ns: t.deadline_ns,
            now_ns: t.now_ns,
        })
    }
    fn health(&self) -> Option<Health> {
        Some(self.0.health())
    }
}

/// An `EVFILT_TIMER` knote in a kevent queue (the timer storage), read with
/// `kevent()`. Its grid starts when the change is applied; `start_ns` is
/// read just before, so lateness is, if anything, overstated.
struct KqueueSource {
    kq: kevent_core::Kqueue,
    start_ns: u64,
    period_ns: u64,
    seen: u64,
}

impl KqueueSource {
    /// The source on the calling thread; with `rt` that thread goes under
    /// `SCHED_FIFO` 50, with `cpu` it is pinned there, with the Ticker's
    /// typed errors if refused.
    fn new(
        period_ns: u64,
        rt: bool,
        cpu: Option<usize>,
        backend: Backend,
        wakeup: Wakeup,
    ) -> io::Result<Self> {
        if let Some(cpu) = cpu {
            kevent_timer::pin_current_thread(cpu).map_err(io::Error::other)?;
        }
        if rt {
            kevent_timer::set_realtime(50).map_err(io::Error::other)?;
        }
        let kq = kevent_core::Kqueue::builder(backend)?
            .storage(Box::new(kevent_timer::TimerStorage::with_wakeup(wakeup)))
            .build()?;
        let start_ns = mono_ns();
        let ch = kevent_timer::storage::timer(
            1,
            Duration::from_nanos(period_ns),
            kevent_timer::MissedTickPolicy::Merge,
            0,
        );
        kq.kevent(&[ch], &mut [], None)?;
        Ok(KqueueSource {
            kq,
            start_ns,
            period_ns,
            seen: 0,
        })
    }
}

impl Source for KqueueSource {
    fn next(&mut self) -> io::Result<Wake> {
        let mut out = [kevent_core::Kevent::default(); 1];
        loop {
            match self.kq.kevent(&[], &mut out, None) {
                Ok(1) => break,
                Ok(_) => {}
                // SIGINT: the caller looks at STOP after the next tick.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let now_ns = mono_ns();
        let count = out[0].data.max(0) as u64;
        let deadline_ns = self.start_ns + (self.seen + 1) * self.period_ns;
        self.seen += count;
        Ok(Wake {
            count,
            deadline_ns,
            now_ns,
        })
    }
}

/// The loop most code writes: a relative periodic timerfd, read per tick.
struct TimerfdLoop {
    fd: libc::c_int,
    start_ns: u64,
    period_ns: u64,
    seen: u64,
}

impl TimerfdLoop {
    fn new(period_ns: u64) -> io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) })?;
        let ts = libc::timespec {
            tv_sec: (period_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (period_ns % 1_000_000_000) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: valid fd and itimerspec.
        cvt(unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) })?;
        // Read after arming: the kernel's grid starts no later than this,
        // so lateness is, if anything, understated for this peer.
        Ok(TimerfdLoop {
            fd,
            start_ns: mono_ns(),
            period_ns,
            seen: 0,
        })
    }
}

impl Source for TimerfdLoop {
    fn next(&mut self) -> io::Result<Wake> {
        let mut n = 0u64;
        loop {
            // SAFETY: 8 writable bytes.
            let r = unsafe { libc::read(self.fd, (&mut n as *mut u64).cast(), 8) };
            if r == 8 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let now_ns = mono_ns();
        let deadline_ns = self.start_ns + (self.seen + 1) * self.period_ns;
        self.seen += n;
        Ok(Wake {
            count: n,
            deadline_ns,
            now_ns,
        })
    }
}

impl Drop for TimerfdLoop {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// The naive loop: `epoll_wait` with a 1 ms timeout, one tick per return.
/// Its deadline is its own idea of one: the previous wake plus 1 ms.
struct EpollLoop {
    ep: libc::c_int,
    prev_ns: u64,
    timeout_ms: i32,
}

impl EpollLoop {
    fn new(period_ns: u64) -> io::Result<Self> {
        // SAFETY: plain syscall.
        let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(EpollLoop {
            ep,
            prev_ns: mono_ns(),
            timeout_ms: (period_ns / 1_000_000).max(1) as i32,
        })
    }
}

impl Source for EpollLoop {
    fn next(&mut self) -> io::Result<Wake> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid epoll fd and one-element buffer.
        let r = unsafe { libc::epoll_wait(self.ep, &mut ev, 1, self.timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // epoll_wait never restarts; a signal is one (short) wait.
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let now_ns = mono_ns();
        let deadline_ns = self.prev_ns + self.timeout_ms as u64 * 1_000_000;
        self.prev_ns = now_ns;
        Ok(Wake {
            count: 1,
            deadline_ns,
            now_ns,
        })
    }
}

impl Drop for EpollLoop {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.ep) };
    }
}

/// Results of one source over all its passes.
struct Report {
    name: &'static str,
    passes: Vec<f64>,
    total_count: f64,
    total_time: f64,
    stats: TickStats,
    stats_period: Duration,
    health: Option<String>,
    health_json: Value,
    /// The tick thread's CPU time and the wall time over the passes done.
    cpu_ns: u64,
    wall_ns: u64,
    /// Time the source spent spinning over the passes done (the Ticker).
    spin_ns: u64,
    /// The tick thread's run-queue wait over the passes done, if known.
    run_delay_ns: Option<u64>,
    /// The source's health after its last pass (the Ticker).
    last_health: Option<Health>,
}

/// dahdi_test's `calculate_accuracy`.
fn accuracy(count: f64, ms: f64) -> f64 {
    ((count - count.min((count - ms).abs())) / count) * 100.0
}

impl Report {
    fn new(name: &'static str, period: Duration) -> Self {
        Report {
            name,
            passes: Vec::new(),
            total_count: 0.0,
            total_time: 0.0,
            stats: TickStats::new(period),
            stats_period: period,
            health: None,
            health_json: Value::Null,
            cpu_ns: 0,
            wall_ns: 0,
            spin_ns: 0,
            run_delay_ns: None,
            last_health: None,
        }
    }

    /// Keeps the Ticker's health: its clock, thread and spin lines (the
    /// statistics are printed from the report's own) and its JSON.
    fn set_ticker_health(&mut self, h: &Health) {
        self.health = Some(h.to_string().lines().take(3).collect::<Vec<_>>().join("\n"));
        self.health_json = health_json(h);
    }

    /// The tick thread's CPU time as a share of the wall time (% of a core).
    fn cpu_percent(&self) -> Option<f64> {
        (self.wall_ns > 0).then(|| self.cpu_ns as f64 * 100.0 / self.wall_ns as f64)
    }

    /// Time spent spinning as a share of the wall time (% of a core).
    fn spin_percent(&self) -> Option<f64> {
        (self.wall_ns > 0 && self.last_health.is_some())
            .then(|| self.spin_ns as f64 * 100.0 / self.wall_ns as f64)
    }

    /// Runs passes on `src`, continuing its schedule, calling `each` with
    /// every pass's figure as it ends; stops early (dropping the pass in
    /// progress) once [`STOP`] is set.
    ///
    /// Every source gets the same start: one warm-up wake, not counted,
    /// whose time starts the first pass (so set-up — a fresh Ticker's
    /// first tick, the statistics' allocation — is outside every pass).
    fn run(
        &mut self,
        src: &mut dyn Source,
        passes: u32,
        rate: u32,
        each: &mut dyn FnMut(f64),
    ) -> io::Result<()> {
        let samples_per_tick = SAMPLES_PER_MS * 1000.0 / f64::from(rate);
        // Statistics of one pass at a time, merged into the report's: a
        // gap between two passes (other sources' passes) is not a gap of
        // this source.
        let mut pass = TickStats::new(self.stats_period);
        let spin0 = src.health().map(|h| h.spin_time);
        let mut pass_start = src.next()?.now_ns;
        let mut cpu_start = thread_cpu_ns();
        let mut sched = RunDelay::open();
        let mut delay_start = sched.read_ns();
        'passes: for _ in 0..passes {
            let mut count = 0.0;
            pass.clear();
            let now = loop {
                let w = src.next()?;
                if STOP.load(Ordering::Relaxed) {
                    break 'passes;
                }
                pass.record(w.now_ns, w.deadline_ns, w.count, w.count, true);
                count += samples_per_tick * w.count as f64;
                if count >= PASS_SAMPLES {
                    break w.now_ns;
                }
            };
            let cpu_now = thread_cpu_ns();
            let delay_now = sched.read_ns();
            if let (Some(a), Some(b)) = (delay_start, delay_now) {
                *self.run_delay_ns.get_or_insert(0) += b.saturating_sub(a);
            }
            delay_start = delay_now;
            let ms = (now - pass_start) as f64 / NS_PER_SAMPLE;
            let figure = accuracy(count, ms);
            self.passes.push(figure);
            self.total_count += count;
            self.total_time += ms;
            self.cpu_ns += cpu_now.saturating_sub(cpu_start);
            self.wall_ns += now - pass_start;
            self.stats.merge(&pass);
            pass_start = now;
            cpu_start = cpu_now;
            each(figure);
        }
        if let Some(h) = src.health() {
            // Spin over the whole run (warm-up included: one wake in ~1000).
            self.spin_ns += (h.spin_time - spin0.unwrap_or_default()).as_nanos() as u64;
            self.last_health = Some(h);
        }
        Ok(())
    }

    // `None` before the first pass completed.
    fn best(&self) -> Option<f64> {
        self.passes.iter().copied().reduce(f64::max)
    }
    fn worst(&self) -> Option<f64> {
        self.passes.iter().copied().reduce(f64::min)
    }
    fn average(&self) -> Option<f64> {
        (!self.passes.is_empty())
            .then(|| self.passes.iter().sum::<f64>() / self.passes.len() as f64)
    }
    fn cumulative(&self) -> Option<f64> {
        (!self.passes.is_empty()).then(|| accuracy(self.total_count, self.total_time))
    }

    fn json(&self) -> Value {
        let l = self.stats.lateness_us();
        json!({
            "source": self.name,
            "passes": self.passes,
            "pass_count": self.passes.len(),
            "best": self.best(),
            "worst": self.worst(),
            "average": self.average(),
            "cumulative": self.cumulative(),
            "ticks": self.stats.ticks(),
            "wakes": self.stats.wakes(),
            "missed": self.stats.missed(),
            "longest_gap_us": self.stats.longest_gap().as_secs_f64() * 1e6,
            "lateness_us": { "p50": l.p50, "p99": l.p99, "p999": l.p999, "max": l.max },
            "cpu_percent": self.cpu_percent(),
            "spin_percent": self.spin_percent(),
            "run_queue_wait_us": self.run_delay_ns.map(|n| n as f64 / 1000.0),
            "clock": self.health_json,
        })
    }

    /// The summary after the passes (printed one by one as they ended).
    fn print(&self) {
        println!("--- Results after {} passes ---", self.passes.len());
        if let (Some(b), Some(w), Some(a), Some(c)) =
            (self.best(), self.worst(), self.average(), self.cumulative())
        {
            println!("Best: {b:.3}% -- Worst: {w:.3}% -- Average: {a:.6}%");
            println!("Cumulative Accuracy (not per pass): {c:.3}");
        } else {
            println!("(no pass completed)");
        }
        println!("{}", self.stats);
        if let Some(c) = self.cpu_percent() {
            print!("tick thread CPU {c:.2} % of a core");
            if let Some(sp) = self.spin_percent() {
                print!(" (spinning {sp:.2} %)");
            }
            if let Some(d) = self.run_delay_ns {
                print!("; run-queue wait {:.1} µs in all", d as f64 / 1000.0);
            }
            println!();
        }
        if let Some(h) = &self.health {
            println!("{h}");
        }
    }
}

/// The Ticker with its defaults, and only the options given on the
/// command line.
fn build_ticker(args: &Args) -> Result<Ticker, TickerError> {
    let mut b = Ticker::builder()
        .rate_hz(args.rate)
        .realtime(args.rt.then_some(50))
        .cpu(args.cpu);
    if let Some(m) = args.method {
        b = b.method(match m {
            Method::Nanosleep => WaitMethod::Nanosleep,
            Method::Timerfd => WaitMethod::Timerfd,
        });
    }
    if let Some(spin) = spin_arg(args) {
        b = b.spin(spin);
    }
    b.build()
}

fn spin_arg(args: &Args) -> Option<Spin> {
    args.spin
        .or(args.spin_us.map(|us| Spin::from(Duration::from_micros(us))))
}

/// What the "kevent" column is: the Ticker's defaults, or the options
/// given, as built.
fn kevent_config(args: &Args, h: &Health) -> String {
    let mut given = Vec::new();
    if args.method.is_some() {
        given.push("--method");
    }
    if spin_arg(args).is_some() {
        given.push("--spin");
    }
    format!(
        "{} ({:?}, spin {}){}",
        if given.is_empty() {
            "Ticker::builder() defaults".to_string()
        } else {
            format!("Ticker with {}", given.join(" "))
        },
        h.method,
        h.spin,
        thread_opts(args.rt, args.cpu),
    )
}

/// ", SCHED_FIFO 50" and ", pinned to CPU n" as asked for.
fn thread_opts(rt: bool, cpu: Option<usize>) -> String {
    format!(
        "{}{}",
        if rt { ", SCHED_FIFO 50" } else { "" },
        cpu.map_or(String::new(), |c| format!(", pinned to CPU {c}"))
    )
}

type Factory = Box<dyn Fn() -> io::Result<Box<dyn Source>> + Send>;

/// A source on its own thread (so `--rt` stays on kevent's thread), run
/// one pass at a time on request; each pass's figure comes back (`None`
/// if SIGINT ended it).
struct Runner {
    name: &'static str,
    go: mpsc::Sender<()>,
    done: mpsc::Receiver<io::Result<Option<f64>>>,
    handle: thread::JoinHandle<Report>,
}

fn spawn_runner(name: &'static str, period: Duration, rate: u32, make: Factory) -> Runner {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut report = Report::new(name, period);
        for () in go_rx {
            // A fresh start for every pass: passes of different sources
            // interleave, so a schedule cannot run on across them.
            let mut figure = None;
            let r = make()
                .and_then(|mut src| report.run(&mut *src, 1, rate, &mut |f| figure = Some(f)))
                .map(|()| figure);
            if done_tx.send(r).is_err() {
                break;
            }
        }
        report
    });
    Runner {
        name,
        go: go_tx,
        done: done_rx,
        handle,
    }
}

/// Runs the runners' passes interleaved (A B C A B C …), printing each
/// round's figures as it ends (to stderr with `--json`), until the passes
/// are done or SIGINT; returns their reports.
fn run_interleaved(
    runners: Vec<Runner>,
    passes: u32,
    json: bool,
) -> Result<Vec<Report>, Box<dyn std::error::Error>> {
    let mut out: Box<dyn Write> = if json {
        Box::new(io::stderr())
    } else {
        Box::new(io::stdout())
    };
    write!(out, "{:<6}", "pass")?;
    for r in &runners {
        write!(out, "{:>14}", r.name)?;
    }
    writeln!(out)?;
    'rounds: for pass in 1..=passes {
        write!(out, "{pass:<6}")?;
        out.flush()?;
        for r in &runners {
            r.go.send(())?;
            match r.done.recv()?? {
                Some(f) => write!(out, "{:>13.3}%", f)?,
                None => break 'rounds,
            }
            out.flush()?;
        }
        writeln!(out)?;
    }
    if STOP.load(Ordering::Relaxed) {
        writeln!(
            out,
            "\n(interrupted: summary of the passes each source completed)"
        )?;
    }
    let mut reports = Vec::new();
    for r in runners {
        drop(r.go);
        reports.push(r.handle.join().map_err(|_| "runner panicked")?);
    }
    Ok(reports)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = install_sigint()
        .map_err(Into::into)
        .and_then(|()| run(&args))
    {
        eprintln!("ticktest: {e}");
        std::process::exit(1);
    }
}

/// Prints pass figures 8 to a line as they come, dahdi_test style.
fn pass_printer(json: bool) -> impl FnMut(f64) {
    let mut n = 0;
    move |p| {
        if json {
            eprint!("{p:.3}% ");
        } else {
            print!("{p:.3}% ");
        }
        n += 1;
        if n % 8 == 0 {
            if json {
                eprintln!();
            } else {
                println!();
            }
        }
        let _ = io::stdout().flush();
    }
}

fn kqueue_name(backend: Backend, wakeup: Wakeup) -> &'static str {
    match (backend, wakeup) {
        (Backend::Epoll, Wakeup::QueueTimeout) => "ep/pwait2",
        (Backend::Epoll, _) => "ep/timerfd",
        (_, Wakeup::QueueTimeout) => "ur/ext_arg",
        (_, Wakeup::UringTimeout) => "ur/abs_op",
        _ => "ur/timerfd",
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Typed configuration errors (zero rate, below resolution) come out here.
    let probe = build_ticker(&Args {
        rt: false,
        ..args.clone()
    })?;
    let period = probe.period();
    let config = kevent_config(args, &probe.health());
    drop(probe);
    let period_ns = period.as_nanos() as u64;
    let rate = args.rate;
    let cpu = args.cpu;
    if args.rt || cpu.is_some() {
        // Refused real-time priority or pinning is the same typed error for
        // every source: ask once, on a throw-away thread, before anything
        // runs.
        let rt = args.rt;
        thread::spawn(move || {
            if let Some(c) = cpu {
                kevent_timer::pin_current_thread(c)?;
            }
            if rt {
                kevent_timer::set_realtime(50)?;
            }
            Ok::<(), TickerError>(())
        })
        .join()
        .map_err(|_| "probe thread panicked")??;
    }
    let mut printer = pass_printer(args.json);
    if !args.json && !args.compare && !args.compare_wakeups {
        println!("Opened kevent 1 kHz tick source, measuring accuracy...");
    }
    if args.compare && !args.json {
        println!("kevent:     {config}");
        println!(
            "kqueue:     EVFILT_TIMER read with kevent() ({:?} backend, {:?} wake-up){}",
            Backend::from(args.backend),
            Wakeup::from(args.wakeup),
            thread_opts(args.rt, cpu)
        );
        println!(
            "timerfd:    plain periodic timerfd read loop (SCHED_OTHER, unpinned, default slack)"
        );
        println!(
            "epoll_wait: plain 1 ms epoll_wait timeout loop (SCHED_OTHER, unpinned, default slack)"
        );
    }

    let reports: Vec<Report> = if args.compare_wakeups {
        let mut runners = Vec::new();
        for (b, w) in [
            (Backend::Epoll, Wakeup::Timerfd),
            (Backend::Epoll, Wakeup::QueueTimeout),
            (Backend::IoUring, Wakeup::Timerfd),
            (Backend::IoUring, Wakeup::QueueTimeout),
            (Backend::IoUring, Wakeup::UringTimeout),
        ] {
            let rt = args.rt;
            let make: Factory = Box::new(move || {
                let src = KqueueSource::new(period_ns, rt, cpu, b, w)?;
                Ok(Box::new(src) as Box<dyn Source>)
            });
            runners.push(spawn_runner(kqueue_name(b, w), period, rate, make));
        }
        run_interleaved(runners, args.seconds, args.json)?
    } else if !args.compare && args.via == Via::Kqueue {
        let mut src = KqueueSource::new(
            period_ns,
            args.rt,
            cpu,
            args.backend.into(),
            args.wakeup.into(),
        )?;
        let mut report = Report::new("kqueue", period);
        report.run(&mut src, args.seconds, rate, &mut printer)?;
        report.health = Some(format!(
            "source: EVFILT_TIMER in a kevent queue ({:?} backend, {:?} wake-up){}",
            src.kq.backend(),
            Wakeup::from(args.wakeup),
            thread_opts(args.rt, cpu)
        ));
        vec![report]
    } else if !args.compare {
        let mut ticker = build_ticker(args)?;
        // The first tick binds the thread (slack, SCHED_FIFO): errors here
        // are the typed "not permitted" ones.
        ticker.tick()?;
        ticker.reset_stats();
        let mut report = Report::new("kevent", period);
        let mut src = KeventSource(ticker);
        report.run(&mut src, args.seconds, rate, &mut printer)?;
        report.set_ticker_health(&src.0.health());
        vec![report]
    } else {
        let a = args.clone();
        let kevent: Factory = Box::new(move || {
            let t = build_ticker(&a).map_err(io::Error::other)?;
            Ok(Box::new(KeventSource(t)) as Box<dyn Source>)
        });
        let timerfd: Factory =
            Box::new(move || Ok(Box::new(TimerfdLoop::new(period_ns)?) as Box<dyn Source>));
        let epoll: Factory =
            Box::new(move || Ok(Box::new(EpollLoop::new(period_ns)?) as Box<dyn Source>));
        let (rt, backend, wakeup) = (args.rt, args.backend.into(), args.wakeup.into());
        let kqueue: Factory = Box::new(move || {
            let src = KqueueSource::new(period_ns, rt, cpu, backend, wakeup)?;
            Ok(Box::new(src) as Box<dyn Source>)
        });
        let runners = vec![
            spawn_runner("kevent", period, rate, kevent),
            spawn_runner("kqueue", period, rate, kqueue),
            spawn_runner("timerfd", period, rate, timerfd),
            spawn_runner("epoll_wait", period, rate, epoll),
        ];
        let mut reports = run_interleaved(runners, args.seconds, args.json)?;
        // Health of kevent's ticker of the last pass: clock facts, and the
        // thread and spin as configured.
        if let Some(h) = reports[0].last_health.clone() {
            reports[0].set_ticker_health(&h);
        }
        reports
    };
    if !args.compare && !args.compare_wakeups {
        let note = if STOP.load(Ordering::Relaxed) {
            "\n(interrupted)"
        } else {
            ""
        };
        if args.json {
            eprintln!("{note}");
        } else {
            println!("{note}");
        }
    }

    if let Some(path) = &args.plot {
        plot(path, &reports)?;
    }
    if args.json {
        let mut main = reports[0].json();
        if args.compare {
            main["config"] = Value::String(config);
        }
        if args.compare || args.compare_wakeups {
            let peers: serde_json::Map<String, Value> = reports[1..]
                .iter()
                .map(|r| (r.name.to_string(), r.json()))
                .collect();
            main["compare"] = Value::Object(peers);
        }
        println!("{}", serde_json::to_string_pretty(&main)?);
    } else if args.compare || args.compare_wakeups {
        print_compare(&reports);
    } else {
        reports[0].print();
    }
    if let Some(path) = &args.plot {
        if !args.json {
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

fn health_json(h: &kevent_timer::Health) -> Value {
    json!({
        "resolution_ns": h.resolution.as_nanos() as u64,
        "period_ns": h.period.as_nanos() as u64,
        "measured_period_ns": h.measured_period.map(|d| d.as_nanos() as u64),
        "clamped": h.clamped,
        "method": format!("{:?}", h.method),
        "timer_slack_ns": h.timer_slack.map(|d| d.as_nanos() as u64),
        "sched_fifo": h.realtime,
        "cpu": h.cpu,
        "spin": h.spin.to_string(),
        "spin_now_us": h.spin_now.as_secs_f64() * 1e6,
        "spin_percent": h.spin_percent,
        "cpu_percent": h.cpu_percent,
    })
}

fn print_compare(reports: &[Report]) {
    let cols: Vec<&Report> = reports.iter().collect();
    print!("{:<22}", "");
    for r in &cols {
        print!("{:>14}", r.name);
    }
    println!();
    let row = |label: &str, f: &dyn Fn(&Report) -> String| {
        print!("{label:<22}");
        for r in &cols {
            print!("{:>14}", f(r));
        }
        println!();
    };
    let pct =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    row("passes", &|r| r.passes.len().to_string());
    row("best %", &|r| pct(r.best(), 3));
    row("worst %", &|r| pct(r.worst(), 3));
    row("average %", &|r| pct(r.average(), 4));
    row("cumulative %", &|r| pct(r.cumulative(), 4));
    row("ticks", &|r| r.stats.ticks().to_string());
    row("missed", &|r| r.stats.missed().to_string());
    row("lateness p50 µs", &|r| {
        format!("{:.1}", r.stats.lateness_us().p50)
    });
    row("lateness p99 µs", &|r| {
        format!("{:.1}", r.stats.lateness_us().p99)
    });
    row("lateness p99.9 µs", &|r| {
        format!("{:.1}", r.stats.lateness_us().p999)
    });
    row("lateness max µs", &|r| {
        format!("{:.1}", r.stats.lateness_us().max)
    });
    row("longest gap µs", &|r| {
        format!("{:.1}", r.stats.longest_gap().as_secs_f64() * 1e6)
    });
    row("thread CPU %", &|r| pct(r.cpu_percent(), 2));
    row("spinning %", &|r| pct(r.spin_percent(), 2));
    row("run-queue wait µs", &|r| {
        pct(r.run_delay_ns.map(|n| n as f64 / 1000.0), 1)
    });
    if let Some(h) = &reports[0].health {
        println!("{h}");
    }
    println!("(run-queue wait: time the tick thread was runnable in the guest but not running, summed over its passes; a gap far longer is outside the guest's scheduler: the host or the wake-up interrupt)");
    if reports.iter().any(|r| r.name == "epoll_wait") {
        println!("(epoll_wait: lateness is against its own previous wake + 1 ms; its drift shows in the accuracy)");
    }
}

fn plot(path: &std::path::Path, reports: &[Report]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let root = SVGBackend::new(path, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let colors = [BLUE, MAGENTA, RED, GREEN];

    // Lateness histogram: 60 log-spaced bins from 0.05 µs to the largest
    // max (a spun tick's 0.1 µs and a slept one's 30 µs are decades apart),
    // log counts.
    const BINS: usize = 60;
    let lo_us = 0.05f64;
    let hi_us = reports
        .iter()
        .map(|r| r.stats.lateness_us().max)
        .fold(10.0, f64::max)
        * 1.2;
    let step = (hi_us / lo_us).ln() / BINS as f64;
    let centre = |b: usize| lo_us * ((b as f64 + 0.5) * step).exp();
    let mut series = Vec::new();
    let mut max_count = 1u64;
    for r in reports {
        let mut bins = [0u64; BINS];
        for v in r.stats.lateness_histogram().iter_recorded() {
            let us = (v.value_iterated_to() as f64 / 1000.0).max(lo_us);
            let b = (((us / lo_us).ln() / step) as usize).min(BINS - 1);
            bins[b] += v.count_at_value();
        }
        max_count = max_count.max(*bins.iter().max().unwrap_or(&1));
        series.push(bins);
    }
    let mut chart = ChartBuilder::on(&top)
        .caption("Tick lateness (µs, log scale)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (lo_us..hi_us).log_scale(),
            (1u64..max_count * 2).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("lateness µs")
        .y_desc("ticks")
        .draw()?;
    for (i, (r, bins)) in reports.iter().zip(&series).enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                bins.iter()
                    .enumerate()
                    .filter(|(_, &n)| n > 0)
                    .map(|(b, &n)| (centre(b), n)),
                c.stroke_width(2),
            ))?
            .label(r.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;

    // Per-pass accuracy, scaled to the passes at or above 99 % (a naive
    // epoll_wait loop's ~90 % would squash the rest into one line); passes
    // below the axis are drawn on its bottom edge.
    let all = || reports.iter().flat_map(|r| r.passes.iter().copied());
    let lo = all()
        .filter(|&a| a >= 99.0)
        .fold(100.0, f64::min)
        .min(99.99);
    let bottom_y = lo - (100.0 - lo) * 0.1;
    let clipped = all().any(|a| a < bottom_y);
    let n = reports
        .iter()
        .map(|r| r.passes.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let caption = if clipped {
        "dahdi_test accuracy per pass (%; on the bottom edge: below the axis)"
    } else {
        "dahdi_test accuracy per pass (%)"
    };
    let mut chart = ChartBuilder::on(&bottom)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(1usize..n, bottom_y..100.0 + (100.0 - lo) * 0.05)?;
    chart.configure_mesh().x_desc("pass").draw()?;
    for (i, r) in reports.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                r.passes
                    .iter()
                    .enumerate()
                    .map(|(p, &a)| (p + 1, a.max(bottom_y))),
                c.stroke_width(2),
            ))?
            .label(r.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
