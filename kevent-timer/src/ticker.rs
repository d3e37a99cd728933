//! The 1 kHz tick source: what `dahdi_dummy` gives Asterisk, in user space.
//!
//! A [`Ticker`] delivers ticks on the absolute grid `start + n·period`
//! (never accumulated sleeps, so no drift), applies a [`MissedTickPolicy`]
//! when ticks are late, and keeps [`TickStats`] so it can report its own
//! health ([`Ticker::health`]).
//!
//! # How it waits
//!
//! Two ways, both absolute on `CLOCK_MONOTONIC` ([`WaitMethod`]):
//!
//! - **timerfd** armed once, periodic, with `TFD_TIMER_ABSTIME`: the kernel
//!   keeps the grid itself (`hrtimer_forward`) and one `read` per tick both
//!   waits and counts expirations. timerfd hrtimers ignore the thread's
//!   timer slack.
//! - **`clock_nanosleep(TIMER_ABSTIME)`** to each deadline: one syscall per
//!   tick too, but the sleep is subject to timer slack (50 µs by default),
//!   so the ticker sets the thread's slack to 1 ns
//!   (`prctl(PR_SET_TIMERSLACK, 1)`).
//!
//! Measured on the project's 2-core VM (kernel 6.18, HZ=250, tsc, hres on):
//! see [`WaitMethod::default`] for the figures and why it is the default.
//!
//! # Spinning
//!
//! However punctual the hrtimer, the thread runs only once its CPU has
//! left idle and scheduled it. On the project's machine (a Firecracker
//! microVM with `haltpoll.guest_halt_poll_ns=0`: an idle vCPU halts at
//! once) that costs ~30 µs per wake-up, and 90–110 µs at the p99 — on its
//! own that misses the p99 ≤ 50 µs goal, whichever way the thread sleeps.
//! So by default ([`Spin::ADAPTIVE`], with
//! [`WaitMethod::Nanosleep`]) the ticker sleeps until `deadline − S` and
//! busy-waits on the clock for the rest, with `S` learnt from the sleeps'
//! measured latency: the p99 of the last 1024 plus 10 µs, capped at 20 %
//! of the period ([`crate::spin`]). The latency is then paid before the
//! deadline, and the tick lands within a clock read after it. A tick is
//! still never delivered before its deadline.
//!
//! `ticktest --seconds 10 --compare`, medians of 3 interleaved runs, each
//! run under the machine's benchmark lock; "idle" runs started at load
//! < 0.8; "busy": `taskset -c 0 sh -c 'while :; do :; done'` (pinned) or
//! the same loop unpinned. The kevent column is the Ticker's defaults
//! plus the options named; the peer is the plain periodic timerfd loop in
//! the same run (SCHED_OTHER, unpinned). Missed ticks per 10 000 (the
//! three runs in brackets); CPU is the tick thread's
//! `CLOCK_THREAD_CPUTIME_ID` over the wall time, in % of one core:
//!
//! | case | source | average % | missed | p50 µs | p99 µs | CPU % (spin) |
//! |---|---|---|---|---|---|---|
//! | idle | kevent | 99.9999 | 37 (11/37/53) | 0.1 | 6.1 | 9.9 (7.5) |
//! | idle | timerfd loop | 99.9985 | 23 (17/23/32) | 31.9 | 93.8 | 2.3 |
//! | idle, `--rt` | kevent | 100.0000 | 1 (1/0/5) | 0.1 | 21.6 | 8.8 (6.3) |
//! | idle, `--rt` | timerfd loop | 99.9990 | 23 (97/15/23) | 31.3 | 102.7 | 2.1 |
//! | CPU 0 busy, `--rt --cpu 1` | kevent | 100.0000 | 0 (0/0/2) | 0.1 | 7.3 | 8.5 (6.2) |
//! | CPU 0 busy, `--rt --cpu 1` | timerfd loop | 99.9991 | 24 (24/24/110) | 28.5 | 124.8 | 2.0 |
//! | busy unpinned, `--rt` | kevent | 100.0000 | 0 (0/5/0) | 0.1 | 9.5 | 6.9 (4.8) |
//! | busy unpinned, `--rt` | timerfd loop | 99.9983 | 61 (35/178/61) | 28.7 | 178.4 | 2.3 |
//!
//! What it costs: 7–10 % of one core for the tick thread at 1 kHz on this
//! machine, against ~2 % for the timerfd loop; `S` settles at 85–105 µs
//! here, so ~5–7.5 % of that is spinning. On a machine whose wake-ups are
//! punctual `S` shrinks to the p99 + 10 µs (a few % at most); it never
//! exceeds the cap. [`Health::spin_percent`] and [`Health::cpu_percent`]
//! say what it costs where it runs. Why p99: single idle runs with
//! `--spin adaptive:Q` gave p99 lateness 14 µs at 10.8 % CPU for p99, 59 µs
//! at 5.8 % for p95, 70 µs at 5.0 % for p90, and 82 µs at 2.0 % with no
//! spin — only the p99 meets the 50 µs goal. Why capped, and not simply
//! always spinning: a vCPU that never halts is one the host deschedules
//! (`--spin 990` gave one 40 ms gap and 367 missed ticks in 10 000). Set
//! [`Spin::Off`] where the CPU matters more than the
//! lateness.
//!
//! What spinning does not fix: missed ticks. A tick is missed when the
//! thread is not running for a whole period, and without `--rt` that is
//! the guest's scheduler sharing the CPU with whatever else runs (misses
//! follow the thread's run-queue wait — the time it was runnable and not
//! running — in every source alike: 35–110 ms of it per 10 s without
//! `SCHED_FIFO`, 0.2–0.5 ms with it). With `SCHED_FIFO` the remaining
//! misses (0–5 per 10 000) come in 1.7–6.8 ms gaps during which the
//! thread's run-queue wait was well under a millisecond: the vCPU itself
//! was not running (host preemption), which no guest setting removes.
//!
//! # The thread
//!
//! Timer slack, CPU affinity and `SCHED_FIFO` are per thread. The ticker
//! applies them to the thread that calls [`Ticker::tick`], on its first
//! call from that thread (again if it moves), and reports a clear error if
//! real-time priority or the CPU asked for is not permitted. When the other
//! cores are busy: [`TickerBuilder::realtime`] so nothing in the guest runs
//! before the tick, and [`TickerBuilder::cpu`] with the busy work kept off
//! that CPU (`taskset`, cpusets), so the tick thread neither waits behind
//! it nor migrates.
//!
//! # Examples
//!
//! ```no_run
//! use kevent_timer::Ticker;
//!
//! let mut ticker = Ticker::builder().rate_hz(1000).build()?;
//! for _ in 0..1000 {
//!     let tick = ticker.tick()?;
//!     // tick.count ticks passed since the previous call (Merge policy).
//!     let _ = tick.count;
//! }
//! println!("{}", ticker.health());
//! # Ok::<(), kevent_timer::TickerError>(())
//! ```

use std::fmt;
use std::io;
use std::thread::{self, ThreadId};
use std::time::Duration;

use crate::policy::{catchup_step, step, MissedTickPolicy, Schedule, DEFAULT_CATCHUP_CAP};
use crate::spin::{Spin, SpinEstimator};
use crate::stats::{Lateness, TickStats};
use crate::sys;

/// Wakes between two samples of the tick thread's CPU clock (one syscall).
const CPU_SAMPLE_WAKES: u32 = 128;

/// How the ticker sleeps until a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WaitMethod {
    /// A periodic `CLOCK_MONOTONIC` timerfd with `TFD_TIMER_ABSTIME`.
    Timerfd,
    /// `clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)` to each deadline,
    /// with the thread's timer slack at 1 ns.
    Nanosleep,
}

impl Default for WaitMethod {
    /// `Nanosleep`: it can wake early, which the default adaptive spin
    /// needs (a periodic timerfd fires on its own grid; the
    /// [module docs](self#spinning) have the figures with it). Both methods
    /// sleep on the same kind of hrtimer, and with the thread's slack at
    /// 1 ns neither has an advantage in the kernel; what is left is the
    /// VM's wake-up path. Measured with
    /// `ticktest --method`, three interleaved 3 s runs each on the shared
    /// 2-core VM (others' builds running, load 3–8): `clock_nanosleep` p50
    /// 31–37 µs and 106–270 missed ticks per 3000; timerfd p50 37–42 µs and
    /// 232–311 missed — nanosleep slightly tighter, within the noise of
    /// that machine. It also keeps no kernel-side grid, so a policy that
    /// moves the grid (`Delay`) needs no re-arming syscall, a late wake
    /// leaves no stale expiration count behind, and no fd is needed.
    fn default() -> Self {
        WaitMethod::Nanosleep
    }
}

/// Why a [`Ticker`] could not be built or could not tick.
#[derive(Debug)]
#[non_exhaustive]
pub enum TickerError {
    /// The period (or rate) was zero.
    ZeroPeriod,
    /// The period is shorter than `clock_getres(CLOCK_MONOTONIC)`: the
    /// kernel would silently clamp it (`hrtimer_forward`).
    PeriodBelowResolution {
        /// The period asked for.
        period: Duration,
        /// The clock's resolution.
        resolution: Duration,
    },
    /// The `SCHED_FIFO` priority is outside the range the kernel accepts.
    BadPriority {
        /// The priority asked for.
        priority: i32,
        /// `sched_get_priority_min(SCHED_FIFO)`.
        min: i32,
        /// `sched_get_priority_max(SCHED_FIFO)`.
        max: i32,
    },
    /// `SCHED_FIFO` was asked for and the thread may not have it (no
    /// `CAP_SYS_NICE`, `RLIMIT_RTPRIO` 0, or a container without RT
    /// bandwidth).
    RealtimeNotPermitted(io::Error),
    /// Spinning before deadlines ([`TickerBuilder::spin`]) needs
    /// [`WaitMethod::Nanosleep`]: a periodic timerfd cannot wake early.
    SpinNeedsNanosleep,
    /// The spin's parameters are unusable (a fixed spin not shorter than
    /// the period, an adaptive quantile outside 0.5..=1, a cap outside 1 to
    /// [`MAX_SPIN_PERCENT`](crate::spin::MAX_SPIN_PERCENT) %).
    InvalidSpin(&'static str),
    /// The tick thread cannot be pinned to this CPU: it does not exist, is
    /// offline, or is outside the CPUs this process may use (cpuset).
    CpuNotAllowed {
        /// The CPU asked for.
        cpu: usize,
        /// The CPUs online (`/sys/devices/system/cpu/online`), or if that
        /// cannot be read, the ones the calling thread may use.
        available: Vec<usize>,
    },
    /// Any other OS error.
    Io(io::Error),
}

impl fmt::Display for TickerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TickerError::ZeroPeriod => f.write_str("tick period must be greater than zero"),
            TickerError::PeriodBelowResolution { period, resolution } => write!(
                f,
                "tick period {period:?} is below the clock resolution {resolution:?}; the kernel would clamp it"
            ),
            TickerError::BadPriority { priority, min, max } => {
                write!(f, "SCHED_FIFO priority {priority} outside {min}..={max}")
            }
            TickerError::RealtimeNotPermitted(e) => write!(
                f,
                "SCHED_FIFO not permitted for the tick thread ({e}); needs CAP_SYS_NICE or RLIMIT_RTPRIO"
            ),
            TickerError::SpinNeedsNanosleep => {
                f.write_str("spinning before deadlines needs the clock_nanosleep wait method")
            }
            TickerError::InvalidSpin(why) => f.write_str(why),
            TickerError::CpuNotAllowed { cpu, available } => write!(
                f,
                "cannot pin the tick thread to CPU {cpu}: it does not exist or this process may not use it (available: {})",
                cpu_list(available)
            ),
            TickerError::Io(e) => write!(f, "tick source: {e}"),
        }
    }
}

impl std::error::Error for TickerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TickerError::RealtimeNotPermitted(e) | TickerError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for TickerError {
    fn from(e: io::Error) -> Self {
        TickerError::Io(e)
    }
}

/// Builds a [`Ticker`]; see [`Ticker::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TickerBuilder {
    period: Duration,
    policy: MissedTickPolicy,
    method: WaitMethod,
    realtime: Option<i32>,
    /// `None`: the method's default (adaptive for nanosleep, off for timerfd).
    spin: Option<Spin>,
    cpu: Option<usize>,
    catchup_cap: u64,
}

impl TickerBuilder {
    /// Ticks per second (default 1000). 0 is rejected by [`build`](Self::build).
    pub fn rate_hz(mut self, hz: u32) -> Self {
        self.period = if hz == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(1_000_000_000 / u64::from(hz))
        };
        self
    }

    /// The tick period (default 1 ms).
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// What to do with late ticks (default [`MissedTickPolicy::Merge`]).
    pub fn policy(mut self, policy: MissedTickPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Under [`MissedTickPolicy::Catchup`], the most deliveries that stand
    /// for one backlog (default [`DEFAULT_CATCHUP_CAP`]; 0 is taken as 1):
    /// the oldest ticks beyond it are merged into one delivery's `count`
    /// ([`catchup_step`]).
    pub fn catchup_cap(mut self, cap: u64) -> Self {
        self.catchup_cap = cap;
        self
    }

    /// How to wait (default [`WaitMethod::Nanosleep`]).
    pub fn method(mut self, method: WaitMethod) -> Self {
        self.method = method;
        self
    }

    /// Run the tick thread under `SCHED_FIFO` at `priority` (1..=99 on
    /// Linux); `None` (the default) leaves the scheduling policy alone.
    pub fn realtime(mut self, priority: Option<i32>) -> Self {
        self.realtime = priority;
        self
    }

    /// How to spend the last moments before each deadline ([`Spin`]; a
    /// `Duration` converts: zero is [`Spin::Off`], else [`Spin::Fixed`]).
    ///
    /// Default: [`Spin::ADAPTIVE`] with [`WaitMethod::Nanosleep`] (wake
    /// early by the p99 of the measured wake-up latency + 10 µs, at most
    /// 20 % of the period, and busy-wait on the clock for the rest), and
    /// [`Spin::Off`] with [`WaitMethod::Timerfd`]. Spinning trades CPU for
    /// lateness: the wake-up latency (tens of µs in a VM whose vCPU halts
    /// when idle) is paid before the deadline instead of after it, at the
    /// cost of up to the spin's length of CPU per tick — what it costs is
    /// in [`Health::spin_percent`] and [`Health::cpu_percent`]. Figures and
    /// why it is the default: the [module docs](self#spinning).
    /// A spin other than `Off` needs [`WaitMethod::Nanosleep`].
    pub fn spin(mut self, spin: impl Into<Spin>) -> Self {
        self.spin = Some(spin.into());
        self
    }

    /// Pin the tick thread to `cpu` (`sched_setaffinity` on the thread
    /// that calls [`Ticker::tick`], on its first call); `None` (the
    /// default) leaves its affinity alone.
    ///
    /// What to do when the other cores are busy: pin the tick thread to a
    /// CPU of its own (and the busy work elsewhere, e.g. `taskset`), with
    /// [`realtime`](Self::realtime) so nothing on that CPU runs before it.
    /// Unpinned, a woken thread may be placed behind a busy task or
    /// migrated, and a tick is missed in the scheduler, not the clock.
    pub fn cpu(mut self, cpu: Option<usize>) -> Self {
        self.cpu = cpu;
        self
    }

    /// Checks the configuration and the clock. The schedule starts when
    /// the first [`Ticker::tick`] is called.
    ///
    /// # Errors
    ///
    /// [`TickerError::ZeroPeriod`], [`TickerError::PeriodBelowResolution`],
    /// [`TickerError::BadPriority`], [`TickerError::SpinNeedsNanosleep`],
    /// [`TickerError::InvalidSpin`], [`TickerError::CpuNotAllowed`] for a
    /// CPU that is not online (one outside the process's cpuset is refused
    /// by the kernel at the first tick, with the same error), or
    /// [`TickerError::Io`] if the clock or the timerfd cannot be had.
    pub fn build(self) -> Result<Ticker, TickerError> {
        let period_ns = u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX);
        if period_ns == 0 {
            return Err(TickerError::ZeroPeriod);
        }
        let resolution_ns = sys::monotonic_resolution_ns()?;
        if period_ns < resolution_ns {
            return Err(TickerError::PeriodBelowResolution {
                period: self.period,
                resolution: Duration::from_nanos(resolution_ns),
            });
        }
        if let Some(priority) = self.realtime {
            let (min, max) = sys::fifo_priority_range();
            if !(min..=max).contains(&priority) {
                return Err(TickerError::BadPriority { priority, min, max });
            }
        }
        let spin = match (self.spin, self.method) {
            (Some(spin), _) => spin,
            (None, WaitMethod::Nanosleep) => Spin::ADAPTIVE,
            (None, WaitMethod::Timerfd) => Spin::Off,
        };
        if spin != Spin::Off && self.method != WaitMethod::Nanosleep {
            return Err(TickerError::SpinNeedsNanosleep);
        }
        let estimator = match spin {
            Spin::Off => None,
            Spin::Fixed(d) => {
                if d.as_nanos() >= u128::from(period_ns) {
                    return Err(TickerError::InvalidSpin(
                        "a fixed spin must be shorter than the period",
                    ));
                }
                None
            }
            Spin::Adaptive(a) => {
                if let Some(why) = a.invalid() {
                    return Err(TickerError::InvalidSpin(why));
                }
                Some(Box::new(SpinEstimator::new(period_ns, &a)))
            }
        };
        if let Some(cpu) = self.cpu {
            let available = available_cpus();
            if !available.contains(&cpu) {
                return Err(TickerError::CpuNotAllowed { cpu, available });
            }
        }
        let timerfd = match self.method {
            WaitMethod::Timerfd => Some(sys::Timerfd::new()?),
            WaitMethod::Nanosleep => None,
        };
        Ok(Ticker {
            period_ns,
            // Placeholder grid; `start` re-bases it at the first tick.
            schedule: Schedule::new(0, period_ns).map_err(|_| TickerError::ZeroPeriod)?,
            started: false,
            behind: false,
            policy: self.policy,
            catchup_cap: self.catchup_cap,
            method: self.method,
            realtime: self.realtime,
            cpu: self.cpu,
            spin,
            estimator,
            spin_total_ns: 0,
            since_ns: None,
            cpu_base: None,
            cpu_last: None,
            wakes_since_cpu: 0,
            timerfd,
            thread: None,
            resolution_ns,
            slack_ns: None,
            stats: TickStats::new(self.period),
        })
    }
}

/// One delivery of a [`Ticker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// How many ticks this delivery stands for (the policy's `data`: the
    /// count under `Merge`, otherwise 1).
    pub count: u64,
    /// Ticks that were due at this delivery (1 when on time).
    pub expired: u64,
    /// `CLOCK_MONOTONIC` ns of the oldest tick delivered.
    pub deadline_ns: u64,
    /// `CLOCK_MONOTONIC` ns when it was delivered.
    pub now_ns: u64,
}

impl Tick {
    /// How late the oldest tick of this delivery is.
    #[must_use]
    pub fn lateness(&self) -> Duration {
        Duration::from_nanos(self.now_ns.saturating_sub(self.deadline_ns))
    }
}

/// A periodic tick source on an absolute grid; see the [module docs](self).
#[derive(Debug)]
pub struct Ticker {
    period_ns: u64,
    schedule: Schedule,
    started: bool,
    /// After the last delivery the next deadline was already due (catch-up).
    behind: bool,
    policy: MissedTickPolicy,
    catchup_cap: u64,
    method: WaitMethod,
    realtime: Option<i32>,
    cpu: Option<usize>,
    spin: Spin,
    /// The adaptive spin's estimator (`Some` iff `spin` is adaptive).
    estimator: Option<Box<SpinEstimator>>,
    /// Time spent spinning since the statistics were reset.
    spin_total_ns: u64,
    /// `CLOCK_MONOTONIC` when the statistics started (first tick or reset).
    since_ns: Option<u64>,
    /// (thread CPU ns, monotonic ns) on the tick thread when the
    /// statistics started, and at the last sample.
    cpu_base: Option<(u64, u64)>,
    cpu_last: Option<(u64, u64)>,
    wakes_since_cpu: u32,
    timerfd: Option<sys::Timerfd>,
    thread: Option<ThreadId>,
    resolution_ns: u64,
    slack_ns: Option<u64>,
    stats: TickStats,
}

impl Ticker {
    /// A builder: 1 kHz, `Merge`, `clock_nanosleep` with the adaptive spin,
    /// no real-time priority, no pinning.
    pub fn builder() -> TickerBuilder {
        TickerBuilder {
            period: Duration::from_millis(1),
            policy: MissedTickPolicy::Merge,
            method: WaitMethod::default(),
            realtime: None,
            spin: None,
            cpu: None,
            catchup_cap: DEFAULT_CATCHUP_CAP,
        }
    }

    /// The period.
    #[must_use]
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    /// The running statistics.
    #[must_use]
    pub fn stats(&self) -> &TickStats {
        &self.stats
    }

    /// Clears the statistics (e.g. after a warm-up), the spin and CPU
    /// accounting with them; the schedule, and what the adaptive spin has
    /// learnt, go on.
    pub fn reset_stats(&mut self) {
        self.stats.clear();
        self.spin_total_ns = 0;
        let now = sys::monotonic_ns();
        self.since_ns = Some(now);
        // The CPU clock is the tick thread's: read it there.
        self.cpu_base = None;
        self.cpu_last = None;
        if self.on_tick_thread() {
            self.sample_cpu(now);
        }
    }

    /// How early the ticker wakes before the next deadline now: the fixed
    /// spin, the adaptive spin's current estimate, or zero.
    #[must_use]
    pub fn spin_now(&self) -> Duration {
        Duration::from_nanos(self.current_spin_ns())
    }

    fn current_spin_ns(&self) -> u64 {
        match (&self.estimator, self.spin) {
            (Some(e), _) => e.spin_ns(),
            // Shorter than the period (checked by `build`): fits a u64.
            (None, Spin::Fixed(d)) => d.as_nanos() as u64,
            _ => 0,
        }
    }

    fn on_tick_thread(&self) -> bool {
        self.thread == Some(thread::current().id())
    }

    /// Reads the tick thread's CPU clock (call only on that thread),
    /// paired with `now`, the monotonic clock the caller just read.
    fn sample_cpu(&mut self, now: u64) {
        self.wakes_since_cpu = 0;
        if let Ok(cpu) = sys::thread_cpu_ns() {
            let sample = (cpu, now);
            if self.cpu_base.is_none() {
                self.cpu_base = Some(sample);
            }
            self.cpu_last = Some(sample);
        }
    }

    /// Blocks until the next tick is due and delivers it under the
    /// ticker's [`MissedTickPolicy`]. Never returns before the deadline of
    /// the oldest tick it delivers.
    ///
    /// The first call starts the grid: deadline `n` is `now + n·period`.
    ///
    /// # Errors
    ///
    /// [`TickerError::RealtimeNotPermitted`] on the first call from a
    /// thread if `SCHED_FIFO` was asked for and refused;
    /// [`TickerError::Io`] if waiting fails (EINTR is retried, not
    /// reported).
    pub fn tick(&mut self) -> Result<Tick, TickerError> {
        self.bind_thread()?;
        if !self.started {
            self.start()?;
        }
        let continuation = self.behind && self.policy == MissedTickPolicy::Catchup;
        let mut now = sys::monotonic_ns();
        loop {
            let st = match self.policy {
                MissedTickPolicy::Catchup => catchup_step(self.schedule, now, self.catchup_cap),
                p => step(p, self.schedule, now),
            };
            if let Some(st) = st {
                let consumed = st.consumed(&self.schedule);
                self.stats
                    .record(now, st.deadline, st.expired, consumed, !continuation);
                if st.schedule.start() != self.schedule.start() {
                    // Delay moved the grid; a timerfd keeps the old one.
                    if let Some(tfd) = &self.timerfd {
                        tfd.set_abs(st.schedule.next_deadline(), self.period_ns)?;
                    }
                }
                self.schedule = st.schedule;
                self.behind = self.schedule.next_deadline() <= now;
                self.wakes_since_cpu += 1;
                if self.wakes_since_cpu >= CPU_SAMPLE_WAKES || self.cpu_base.is_none() {
                    self.sample_cpu(now);
                }
                return Ok(Tick {
                    count: st.data,
                    expired: st.expired,
                    deadline_ns: st.deadline,
                    now_ns: now,
                });
            }
            // Not due yet. A timerfd read can also return for an expiry the
            // clock already accounted for (read raced the grid): loop.
            let spin = self.current_spin_ns();
            now = match &self.timerfd {
                Some(tfd) => {
                    tfd.wait()?;
                    sys::monotonic_ns()
                }
                None if spin == 0 => {
                    sys::sleep_until(self.schedule.next_deadline())?;
                    sys::monotonic_ns()
                }
                None => self.sleep_and_spin(now, spin)?,
            };
        }
    }

    /// Sleeps until `spin` before the next deadline, feeds the sleep's
    /// latency to the adaptive spin, then busy-waits on the clock until the
    /// deadline. Returns the clock read that reached it (the caller's `now`:
    /// no second read), so the caller's `step` delivers.
    fn sleep_and_spin(&mut self, now: u64, spin: u64) -> Result<u64, TickerError> {
        let deadline = self.schedule.next_deadline();
        let target = deadline.saturating_sub(spin);
        let mut t = now;
        if target > now {
            sys::sleep_until(target)?;
            t = sys::monotonic_ns();
            if let Some(e) = &mut self.estimator {
                // Independent of the spin itself: how late the sleep ended.
                e.record(t.saturating_sub(target));
            }
        }
        let from = t;
        while t < deadline {
            std::hint::spin_loop();
            t = sys::monotonic_ns();
        }
        self.spin_total_ns += t - from;
        Ok(t)
    }

    /// The ticker's health: clock, measured tick, what spinning costs,
    /// statistics.
    ///
    /// The CPU figure is the tick thread's CPU clock; called on that
    /// thread it is read now, from any other it is as of the last sample
    /// (every 128 wakes).
    #[must_use]
    pub fn health(&self) -> Health {
        let now = sys::monotonic_ns();
        let elapsed_ns = self.since_ns.map_or(0, |s| now.saturating_sub(s));
        let fresh = if self.on_tick_thread() {
            sys::thread_cpu_ns().ok().map(|c| (c, now))
        } else {
            None
        };
        let cpu_percent = match (self.cpu_base, fresh.or(self.cpu_last)) {
            (Some((c0, w0)), Some((c1, w1))) if w1 > w0 => {
                Some(c1.saturating_sub(c0) as f64 * 100.0 / (w1 - w0) as f64)
            }
            _ => None,
        };
        Health {
            period: self.period(),
            resolution: Duration::from_nanos(self.resolution_ns),
            measured_period: self.stats.measured_period(),
            clamped: self.stats.clamped(),
            timer_slack: self.slack_ns.map(Duration::from_nanos),
            realtime: self.realtime.filter(|_| self.thread.is_some()),
            method: self.method,
            policy: self.policy,
            cpu: self.cpu.filter(|_| self.thread.is_some()),
            spin: self.spin,
            spin_now: self.spin_now(),
            spin_time: Duration::from_nanos(self.spin_total_ns),
            spin_percent: if elapsed_ns > 0 {
                self.spin_total_ns as f64 * 100.0 / elapsed_ns as f64
            } else {
                0.0
            },
            cpu_percent,
            elapsed: Duration::from_nanos(elapsed_ns),
            ticks: self.stats.ticks(),
            missed: self.stats.missed(),
            lateness_us: self.stats.lateness_us(),
            longest_gap: self.stats.longest_gap(),
        }
    }

    fn start(&mut self) -> Result<(), TickerError> {
        let now = sys::monotonic_ns();
        self.since_ns.get_or_insert(now);
        self.schedule = Schedule::new(now, self.period_ns).map_err(|_| TickerError::ZeroPeriod)?;
        if let Some(tfd) = &self.timerfd {
            tfd.set_abs(self.schedule.next_deadline(), self.period_ns)?;
        }
        self.started = true;
        Ok(())
    }

    /// Applies timer slack and `SCHED_FIFO` to the calling thread once.
    fn bind_thread(&mut self) -> Result<(), TickerError> {
        let me = thread::current().id();
        if self.thread == Some(me) {
            return Ok(());
        }
        if let Some(cpu) = self.cpu {
            pin_current_thread(cpu)?;
        }
        sys::set_timer_slack(1)?;
        self.slack_ns = sys::timer_slack().ok();
        if let Some(priority) = self.realtime {
            set_realtime(priority)?;
        }
        self.thread = Some(me);
        // Another thread's CPU clock says nothing about this one.
        self.cpu_base = None;
        self.cpu_last = None;
        Ok(())
    }
}

/// Pins the calling thread to `cpu`, with the errors a [`Ticker`] gives:
/// for a thread that waits on a kevent queue's `Filter::Timer` rather than
/// on a `Ticker` (see [`TickerBuilder::cpu`] for when to).
///
/// # Errors
///
/// [`TickerError::CpuNotAllowed`] if the CPU does not exist, is offline or
/// is outside the process's cpuset (`EINVAL`); [`TickerError::Io`]
/// otherwise.
pub fn pin_current_thread(cpu: usize) -> Result<(), TickerError> {
    sys::pin_to_cpu(cpu).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => TickerError::CpuNotAllowed {
            cpu,
            available: available_cpus(),
        },
        _ => TickerError::Io(e),
    })
}

/// The CPUs online, from `/sys/devices/system/cpu/online` ("0-3,6"), or
/// if that cannot be read or parsed, the calling thread's affinity.
fn available_cpus() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()))
        .or_else(|| sys::allowed_cpus().ok())
        .unwrap_or_default()
}

/// Parses the kernel's CPU list format ("0-3,6,8-9").
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if b < a || b - a > 1 << 16 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Formats CPUs as the kernel does ("0-3,6").
fn cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}-{}", cpus[i], cpus[j]));
        } else {
            out.push_str(&cpus[i].to_string());
        }
        i = j + 1;
    }
    if out.is_empty() {
        out.push_str("none known");
    }
    out
}

/// Puts the calling thread under `SCHED_FIFO` at `priority`, with the
/// errors a [`Ticker`] gives: for a thread that waits on a kevent queue's
/// `Filter::Timer` rather than on a `Ticker`.
///
/// # Errors
///
/// [`TickerError::BadPriority`] outside the kernel's range,
/// [`TickerError::RealtimeNotPermitted`] if the thread may not have it
/// (`EPERM`: no `CAP_SYS_NICE`, `RLIMIT_RTPRIO` too low, no RT bandwidth
/// in the cgroup), [`TickerError::Io`] otherwise.
pub fn set_realtime(priority: i32) -> Result<(), TickerError> {
    let (min, max) = sys::fifo_priority_range();
    if !(min..=max).contains(&priority) {
        return Err(TickerError::BadPriority { priority, min, max });
    }
    sys::set_fifo(priority).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => TickerError::RealtimeNotPermitted(e),
        _ => TickerError::Io(e),
    })
}

/// A tick source's health report ([`Ticker::health`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The period asked for.
    pub period: Duration,
    /// `clock_getres(CLOCK_MONOTONIC)`.
    pub resolution: Duration,
    /// Median interval between the first wakes.
    pub measured_period: Option<Duration>,
    /// The measured tick is more than 1.5× the period: something clamps it.
    pub clamped: bool,
    /// The tick thread's timer slack, once it has ticked.
    pub timer_slack: Option<Duration>,
    /// `SCHED_FIFO` priority in force, if any.
    pub realtime: Option<i32>,
    /// The CPU the tick thread is pinned to, if any.
    pub cpu: Option<usize>,
    /// How the ticker spins before deadlines.
    pub spin: Spin,
    /// How early it wakes before the next deadline now (the adaptive
    /// spin's current estimate).
    pub spin_now: Duration,
    /// Time spent spinning since the statistics started.
    pub spin_time: Duration,
    /// `spin_time` as a share of the time since the statistics started
    /// (% of one core).
    pub spin_percent: f64,
    /// The tick thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) as a share of
    /// the time since the statistics started (% of one core): spinning,
    /// syscalls, and whatever the caller does on that thread between
    /// ticks. `None` before the thread has ticked.
    pub cpu_percent: Option<f64>,
    /// Time since the statistics started (first tick or reset).
    pub elapsed: Duration,
    /// How the ticker waits.
    pub method: WaitMethod,
    /// The missed-tick policy.
    pub policy: MissedTickPolicy,
    /// Grid ticks that passed.
    pub ticks: u64,
    /// Ticks that were not the only one due at their wake.
    pub missed: u64,
    /// Lateness percentiles in µs.
    pub lateness_us: Lateness,
    /// Longest interval between two wakes.
    pub longest_gap: Duration,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "clock: CLOCK_MONOTONIC resolution {:?}; period {:?}, measured {}{}",
            self.resolution,
            self.period,
            self.measured_period
                .map_or("-".to_string(), |m| format!("{m:?}")),
            if self.clamped {
                " (CLAMPED: the kernel does not deliver this rate)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "thread: {:?}, slack {}, {}, {}",
            self.method,
            self.timer_slack
                .map_or("-".to_string(), |s| format!("{s:?}")),
            self.realtime
                .map_or("SCHED_OTHER".to_string(), |p| format!("SCHED_FIFO {p}")),
            self.cpu
                .map_or("unpinned".to_string(), |c| format!("pinned to CPU {c}"))
        )?;
        writeln!(
            f,
            "spin: {}, now {:.1} µs; spinning {:.2} % of the time; tick thread CPU {}",
            self.spin,
            self.spin_now.as_secs_f64() * 1e6,
            self.spin_percent,
            self.cpu_percent
                .map_or("-".to_string(), |c| format!("{c:.2} %"))
        )?;
        let l = &self.lateness_us;
        write!(
            f,
            "ticks {} missed {} longest gap {:?}; lateness µs p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
            self.ticks, self.missed, self.longest_gap, l.p50, l.p99, l.p999, l.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_are_typed_errors() {
        assert!(matches!(
            Ticker::builder().rate_hz(0).build(),
            Err(TickerError::ZeroPeriod)
        ));
        assert!(matches!(
            Ticker::builder().period(Duration::ZERO).build(),
            Err(TickerError::ZeroPeriod)
        ));
        assert!(matches!(
            Ticker::builder().realtime(Some(1000)).build(),
            Err(TickerError::BadPriority { priority: 1000, .. })
        ));
        let res = sys::monotonic_resolution_ns().unwrap();
        if res > 1 {
            assert!(matches!(
                Ticker::builder()
                    .period(Duration::from_nanos(res - 1))
                    .build(),
                Err(TickerError::PeriodBelowResolution { .. })
            ));
        }
    }

    fn run(method: WaitMethod, policy: MissedTickPolicy) {
        let mut t = Ticker::builder()
            .rate_hz(1000)
            .method(method)
            .policy(policy)
            .build()
            .unwrap();
        let first = t.tick().unwrap();
        let start = first.deadline_ns - 1_000_000;
        let mut delivered = first.count;
        for _ in 0..50 {
            let tick = t.tick().unwrap();
            // Never early; upper bound deliberately loose.
            assert!(
                tick.now_ns >= tick.deadline_ns,
                "{method:?} {policy:?}: early"
            );
            if policy != MissedTickPolicy::Delay {
                assert_eq!((tick.deadline_ns - start) % 1_000_000, 0, "off grid");
            }
            delivered += tick.count;
        }
        // Stall the consumer for 5 ms: the policy decides what comes next.
        thread::sleep(Duration::from_millis(5));
        let late = t.tick().unwrap();
        assert!(late.expired >= 5, "{late:?}");
        match policy {
            MissedTickPolicy::Merge => assert_eq!(late.count, late.expired),
            MissedTickPolicy::Catchup => {
                assert_eq!(late.count, 1);
                // The backlog comes back to back, each never early.
                for _ in 1..late.expired {
                    let next = t.tick().unwrap();
                    assert_eq!(next.count, 1);
                    assert!(next.now_ns >= next.deadline_ns);
                }
            }
            MissedTickPolicy::Skip | MissedTickPolicy::Delay => assert_eq!(late.count, 1),
        }
        let after = t.tick().unwrap();
        assert!(after.now_ns >= after.deadline_ns);
        if policy == MissedTickPolicy::Delay {
            assert_eq!(
                after.deadline_ns,
                late.now_ns + 1_000_000,
                "restarted from the late tick"
            );
        }
        let h = t.health();
        assert!(h.missed >= 4, "{h}");
        assert!(h.ticks >= delivered);
        assert_eq!(h.timer_slack, Some(Duration::from_nanos(1)));
        assert!(h.measured_period.is_some());
    }

    #[test]
    fn nanosleep_every_policy() {
        for p in [
            MissedTickPolicy::Merge,
            MissedTickPolicy::Catchup,
            MissedTickPolicy::Skip,
            MissedTickPolicy::Delay,
        ] {
            run(WaitMethod::Nanosleep, p);
        }
    }

    #[test]
    fn timerfd_every_policy() {
        for p in [
            MissedTickPolicy::Merge,
            MissedTickPolicy::Catchup,
            MissedTickPolicy::Skip,
            MissedTickPolicy::Delay,
        ] {
            run(WaitMethod::Timerfd, p);
        }
    }

    /// Ticks under `spin` and checks each is delivered no earlier than its
    /// deadline, against a clock read after `tick` returned too.
    fn never_early_with(spin: Spin) -> Health {
        let mut t = Ticker::builder().rate_hz(1000).spin(spin).build().unwrap();
        let first = t.tick().unwrap();
        let start = first.deadline_ns - 1_000_000;
        for i in 0..300u64 {
            let tick = t.tick().unwrap();
            let after = sys::monotonic_ns();
            assert!(tick.now_ns >= tick.deadline_ns, "{spin:?}: early {tick:?}");
            assert!(after >= tick.deadline_ns, "{spin:?}: early {tick:?}");
            assert_eq!((tick.deadline_ns - start) % 1_000_000, 0, "off grid");
            if i % 100 == 99 {
                // A stall: the next deadline is already past, or within the
                // spin: no sleep, and still never early.
                thread::sleep(Duration::from_micros(1900));
            }
        }
        t.health()
    }

    #[test]
    fn never_early_spin_or_not() {
        let off = never_early_with(Spin::Off);
        assert_eq!(off.spin_time, Duration::ZERO);
        assert_eq!(off.spin_now, Duration::ZERO);
        let fixed = never_early_with(Spin::Fixed(Duration::from_micros(150)));
        assert_eq!(fixed.spin_now, Duration::from_micros(150));
        // Woken 150 µs early ~300 times: it spun (lower bound loose, wakes
        // may be late by more than the spin under load).
        assert!(fixed.spin_time > Duration::ZERO, "{fixed}");
        let adaptive = never_early_with(Spin::ADAPTIVE);
        assert!(
            adaptive.spin_now <= Duration::from_micros(200),
            "{adaptive}"
        );
        assert!(adaptive.spin_now > Duration::ZERO, "{adaptive}");
        assert!(adaptive.cpu_percent.is_some(), "{adaptive}");
        assert!(adaptive.spin_percent <= 100.0, "{adaptive}");
    }

    #[test]
    fn spin_defaults_and_errors() {
        let t = Ticker::builder().build().unwrap();
        assert_eq!(
            t.spin,
            Spin::ADAPTIVE,
            "nanosleep spins adaptively by default"
        );
        assert_eq!(
            t.spin_now(),
            Duration::from_micros(200),
            "the cap until it learns"
        );
        let t = Ticker::builder()
            .method(WaitMethod::Timerfd)
            .build()
            .unwrap();
        assert_eq!(t.spin, Spin::Off, "a timerfd cannot wake early: no spin");
        assert!(matches!(
            Ticker::builder()
                .method(WaitMethod::Timerfd)
                .spin(Spin::ADAPTIVE)
                .build(),
            Err(TickerError::SpinNeedsNanosleep)
        ));
        assert!(matches!(
            Ticker::builder().spin(Duration::from_millis(1)).build(),
            Err(TickerError::InvalidSpin(_))
        ));
        assert!(matches!(
            Ticker::builder()
                .spin(crate::AdaptiveSpin::new().max_percent(99))
                .build(),
            Err(TickerError::InvalidSpin(_))
        ));
        // Zero is off, also with a timerfd.
        let t = Ticker::builder()
            .method(WaitMethod::Timerfd)
            .spin(Duration::ZERO)
            .build()
            .unwrap();
        assert_eq!(t.spin, Spin::Off);
    }

    #[test]
    fn pinning_to_a_missing_cpu_is_a_clear_error() {
        let online = available_cpus();
        assert!(!online.is_empty());
        for bad in [online.last().unwrap() + 1, 4096, usize::MAX] {
            match Ticker::builder().cpu(Some(bad)).build() {
                Err(TickerError::CpuNotAllowed { cpu, available }) => {
                    assert_eq!(cpu, bad);
                    assert_eq!(available, online);
                    let msg = TickerError::CpuNotAllowed { cpu, available }.to_string();
                    assert!(msg.contains(&format!("CPU {bad}")), "{msg}");
                }
                other => panic!("CPU {bad}: {other:?}"),
            }
            // The thread-level door says the same, and leaves it unpinned.
            let r = thread::spawn(move || {
                let before = sys::allowed_cpus().unwrap();
                let r = pin_current_thread(bad);
                (r, before, sys::allowed_cpus().unwrap())
            })
            .join()
            .unwrap();
            assert!(matches!(r.0, Err(TickerError::CpuNotAllowed { cpu, .. }) if cpu == bad));
            assert_eq!(r.1, r.2);
        }
    }

    #[test]
    fn pinned_tick_thread_runs_on_its_cpu() {
        let cpu = *sys::allowed_cpus().unwrap().last().unwrap();
        let (h, on, allowed) = thread::spawn(move || {
            let mut t = Ticker::builder().cpu(Some(cpu)).build().unwrap();
            for _ in 0..20 {
                t.tick().unwrap();
            }
            (
                t.health(),
                sys::current_cpu().unwrap(),
                sys::allowed_cpus().unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(h.cpu, Some(cpu));
        assert_eq!(on, cpu);
        assert_eq!(allowed, vec![cpu]);
    }

    #[test]
    fn cpu_lists_parse_and_print_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(cpu_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(cpu_list(&[1]), "1");
        assert_eq!(cpu_list(&[]), "none known");
    }

    #[test]
    fn realtime_is_granted_or_a_clear_error() {
        let r = thread::spawn(|| {
            let mut t = Ticker::builder().realtime(Some(10)).build().unwrap();
            t.tick().map(|_| t.health().realtime)
        })
        .join()
        .unwrap();
        match r {
            Ok(p) => assert_eq!(p, Some(10)),
            Err(TickerError::RealtimeNotPermitted(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn catchup_cap_merges_a_long_backlog() {
        let mut t = Ticker::builder()
            .rate_hz(1000)
            .policy(MissedTickPolicy::Catchup)
            .catchup_cap(5)
            .build()
            .unwrap();
        t.tick().unwrap();
        thread::sleep(Duration::from_millis(20));
        let head = t.tick().unwrap();
        assert!(head.expired >= 20, "{head:?}");
        assert_eq!(head.count, head.expired - 4, "oldest merged: {head:?}");
        for _ in 0..4 {
            let next = t.tick().unwrap();
            assert!(next.now_ns >= next.deadline_ns);
            // Singles (or, if more fell due meanwhile, merged again).
            assert!(next.count >= 1, "{next:?}");
        }
        assert!(set_realtime(1000).is_err());
    }

    #[test]
    fn merge_loses_no_tick_over_time() {
        let mut t = Ticker::builder().rate_hz(2000).build().unwrap();
        let first = t.tick().unwrap();
        let start = first.deadline_ns - 500_000;
        let mut total = first.count;
        let mut last = first;
        for i in 0..200 {
            if i % 50 == 0 {
                thread::sleep(Duration::from_millis(3));
            }
            last = t.tick().unwrap();
            total += last.count;
        }
        // Every grid deadline up to the last delivery was counted once.
        assert_eq!(total, (last.now_ns - start) / 500_000);
    }
}
