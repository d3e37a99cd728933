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
//! # The thread
//!
//! Timer slack and `SCHED_FIFO` are per thread. The ticker applies both to
//! the thread that calls [`Ticker::tick`], on its first call from that
//! thread (again if it moves), and reports a clear error if real-time
//! priority was asked for and is not permitted.
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
use crate::stats::{Lateness, TickStats};
use crate::sys;

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
    /// `Nanosleep`. Both methods sleep on the same kind of hrtimer, and with
    /// the thread's slack at 1 ns neither has an advantage in the kernel;
    /// what is left is the VM's wake-up path. Measured with
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
    spin: Duration,
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

    /// Wake `spin` before each deadline and busy-wait on the clock for the
    /// rest (default zero: no spinning). Trades CPU for lateness: the
    /// kernel's wake-up latency (tens of µs in a VM whose vCPU halts when
    /// idle) is paid before the deadline instead of after it, at the cost
    /// of up to `spin` of CPU per tick (10 % of a core for 100 µs at
    /// 1 kHz). Needs [`WaitMethod::Nanosleep`].
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Checks the configuration and the clock. The schedule starts when
    /// the first [`Ticker::tick`] is called.
    ///
    /// # Errors
    ///
    /// [`TickerError::ZeroPeriod`], [`TickerError::PeriodBelowResolution`],
    /// [`TickerError::BadPriority`], or [`TickerError::Io`] if the clock or
    /// the timerfd cannot be had.
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
        let spin_ns = u64::try_from(self.spin.as_nanos()).unwrap_or(u64::MAX);
        if spin_ns > 0 && self.method != WaitMethod::Nanosleep {
            return Err(TickerError::SpinNeedsNanosleep);
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
            spin_ns,
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
    spin_ns: u64,
    timerfd: Option<sys::Timerfd>,
    thread: Option<ThreadId>,
    resolution_ns: u64,
    slack_ns: Option<u64>,
    stats: TickStats,
}

impl Ticker {
    /// A builder: 1 kHz, `Merge`, `clock_nanosleep`, no real-time priority.
    pub fn builder() -> TickerBuilder {
        TickerBuilder {
            period: Duration::from_millis(1),
            policy: MissedTickPolicy::Merge,
            method: WaitMethod::default(),
            realtime: None,
            spin: Duration::ZERO,
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

    /// Clears the statistics (e.g. after a warm-up); the schedule goes on.
    pub fn reset_stats(&mut self) {
        self.stats = TickStats::new(self.period());
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
        loop {
            let now = sys::monotonic_ns();
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
                return Ok(Tick {
                    count: st.data,
                    expired: st.expired,
                    deadline_ns: st.deadline,
                    now_ns: now,
                });
            }
            // Not due yet. A timerfd read can also return for an expiry the
            // clock already accounted for (read raced the grid): loop.
            match &self.timerfd {
                Some(tfd) => {
                    tfd.wait()?;
                }
                None if self.spin_ns == 0 => sys::sleep_until(self.schedule.next_deadline())?,
                None => {
                    let deadline = self.schedule.next_deadline();
                    sys::sleep_until(deadline.saturating_sub(self.spin_ns))?;
                    while sys::monotonic_ns() < deadline {
                        std::hint::spin_loop();
                    }
                }
            }
        }
    }

    /// The ticker's health: clock, measured tick, statistics.
    #[must_use]
    pub fn health(&self) -> Health {
        Health {
            period: self.period(),
            resolution: Duration::from_nanos(self.resolution_ns),
            measured_period: self.stats.measured_period(),
            clamped: self.stats.clamped(),
            timer_slack: self.slack_ns.map(Duration::from_nanos),
            realtime: self.realtime.filter(|_| self.thread.is_some()),
            method: self.method,
            policy: self.policy,
            ticks: self.stats.ticks(),
            missed: self.stats.missed(),
            lateness_us: self.stats.lateness_us(),
            longest_gap: self.stats.longest_gap(),
        }
    }

    fn start(&mut self) -> Result<(), TickerError> {
        let now = sys::monotonic_ns();
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
        sys::set_timer_slack(1)?;
        self.slack_ns = sys::timer_slack().ok();
        if let Some(priority) = self.realtime {
            set_realtime(priority)?;
        }
        self.thread = Some(me);
        Ok(())
    }
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
            "thread: {:?}, slack {}, {}",
            self.method,
            self.timer_slack
                .map_or("-".to_string(), |s| format!("{s:?}")),
            self.realtime
                .map_or("SCHED_OTHER".to_string(), |p| format!("SCHED_FIFO {p}"))
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
