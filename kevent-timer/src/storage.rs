//! `EVFILT_TIMER`: the timer storage for a kevent queue.
//!
//! FreeBSD's semantics: `ident` names the timer; `data` is the period (or,
//! with [`note::ABSTIME`], the absolute time since the Unix epoch); the unit
//! is `note::SECONDS`, `MSECONDS` (default), `USECONDS` or `NSECONDS`;
//! periodic unless `ONESHOT` or `ABSTIME`; `CLEAR` is implicit; the
//! delivered `data` counts expirations since the last delivery; an `ADD` of
//! an existing timer restarts it and discards undelivered expirations; a
//! negative `data` is `EINVAL` (as are two units at once); a periodic
//! timer with `data = 0` gets the smallest period of its unit, as FreeBSD.
//! `DISABLE`/`ENABLE`/`DISPATCH`/`DELETE` work as for every filter; a
//! disabled timer keeps running and its expirations merge into `data`.
//!
//! An `ABSTIME` deadline is converted to `CLOCK_MONOTONIC` when the change
//! is applied; a later step of the wall clock does not move it.
//!
//! One divergence: FreeBSD re-arms a timer on *any* change of an existing
//! knote (its `f_touch`), so an `ENABLE` with `data = 0` turns a 1 s timer
//! into a 1 ms one. Here only a change carrying `ADD` restarts the timer;
//! `ENABLE`/`DISABLE` alone leave its schedule alone.
//!
//! # Missed ticks (extension)
//!
//! Each periodic timer follows a [`MissedTickPolicy`], chosen with bits
//! 24..28 of `fflags` (see [`POLICY_MASK`]): [`POLICY_MERGE`] (0, the
//! default: kqueue's behaviour), [`POLICY_CATCHUP`], [`POLICY_SKIP`],
//! [`POLICY_DELAY`]; any other value is `EINVAL`. FreeBSD defines no timer
//! `fflags` there. [`timer`] builds such a change from Rust types.
//!
//! # Time
//!
//! Deadlines are absolute `CLOCK_MONOTONIC` nanoseconds, `start + n·period`
//! ([`Schedule`]). Timers sit in a [`Wheel`] with a 1 ms tick, filed under
//! the tick their deadline falls in; when the wheel hands one out its
//! exact deadline is checked, and one still in the future waits in a short
//! "near" list. The storage owns one timerfd, armed with
//! `TFD_TIMER_ABSTIME` at the exact earliest deadline (the near list's, or
//! the wheel's next slot), and watched by the queue like any fd. So
//! timers below 1 ms (`USECONDS`, `NSECONDS`) fire no earlier than asked
//! and as soon after as the kernel wakes the waiting thread: timerfd
//! hrtimers ignore timer slack, the expiry is absolute (no time lost
//! between computing and programming a relative timeout), and nothing is
//! rounded to the wheel's millisecond.

use std::io;
use std::time::Duration;

use kevent_core::{note, Context, Errno, Filter, Flags, Kevent, KnoteId, Readiness, Storage};
use slab::Slab;

use crate::policy::{step, MissedTickPolicy, Schedule};
use crate::sys::{self, Timerfd};
use crate::wheel::{Key, Wheel};

/// Mask of the missed-tick policy bits in a TIMER change's `fflags`.
pub const POLICY_MASK: u32 = 0x0F00_0000;
/// `fflags` value: [`MissedTickPolicy::Merge`] (the default).
pub const POLICY_MERGE: u32 = 0x0000_0000;
/// `fflags` value: [`MissedTickPolicy::Catchup`].
pub const POLICY_CATCHUP: u32 = 0x0100_0000;
/// `fflags` value: [`MissedTickPolicy::Skip`].
pub const POLICY_SKIP: u32 = 0x0200_0000;
/// `fflags` value: [`MissedTickPolicy::Delay`].
pub const POLICY_DELAY: u32 = 0x0300_0000;

const UNITS: u32 = note::SECONDS | note::MSECONDS | note::USECONDS | note::NSECONDS;
const NS_PER_MS: u64 = 1_000_000;

/// The `fflags` bits that select `policy`.
#[must_use]
pub const fn policy_fflags(policy: MissedTickPolicy) -> u32 {
    match policy {
        MissedTickPolicy::Merge => POLICY_MERGE,
        MissedTickPolicy::Catchup => POLICY_CATCHUP,
        MissedTickPolicy::Skip => POLICY_SKIP,
        MissedTickPolicy::Delay => POLICY_DELAY,
    }
}

/// An `ADD` change for a periodic timer `ident` of `period` under `policy`,
/// in the finest unit that holds it (ns up to 292 years).
///
/// ```
/// use kevent_timer::storage::timer;
/// use kevent_timer::MissedTickPolicy;
/// use std::time::Duration;
///
/// let ch = timer(7, Duration::from_millis(1), MissedTickPolicy::Skip, 0);
/// assert_eq!(ch.data, 1_000_000);
/// ```
#[must_use]
pub fn timer(ident: u64, period: Duration, policy: MissedTickPolicy, udata: u64) -> Kevent {
    let (unit, data) = match i64::try_from(period.as_nanos()) {
        Ok(ns) => (note::NSECONDS, ns),
        Err(_) => (
            note::SECONDS,
            i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
        ),
    };
    Kevent::new(
        ident,
        Filter::Timer,
        Flags::ADD,
        unit | policy_fflags(policy),
        data,
        udata,
    )
}

/// What a change asks for, in monotonic ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    first_ns: u64,
    period_ns: Option<u64>,
    policy: MissedTickPolicy,
}

/// Parses a TIMER change: units, `ABSTIME`, policy. Pure.
fn parse(
    fflags: u32,
    data: i64,
    oneshot: bool,
    now_mono: u64,
    now_real: u64,
) -> Result<Spec, Errno> {
    if data < 0 {
        return Err(libc::EINVAL);
    }
    let unit_ns: u64 = match fflags & UNITS {
        0 | note::MSECONDS => NS_PER_MS,
        note::SECONDS => 1_000_000_000,
        note::USECONDS => 1_000,
        note::NSECONDS => 1,
        _ => return Err(libc::EINVAL),
    };
    let policy = match fflags & POLICY_MASK {
        POLICY_MERGE => MissedTickPolicy::Merge,
        POLICY_CATCHUP => MissedTickPolicy::Catchup,
        POLICY_SKIP => MissedTickPolicy::Skip,
        POLICY_DELAY => MissedTickPolicy::Delay,
        _ => return Err(libc::EINVAL),
    };
    // Saturate: a time too far to represent never comes.
    let value_ns = (data as u64).saturating_mul(unit_ns);
    if fflags & note::ABSTIME != 0 {
        // A time already past keeps its place in the past (so due timers
        // fire in deadline order), not "now".
        let first_ns = if value_ns >= now_real {
            now_mono.saturating_add(value_ns - now_real)
        } else {
            now_mono.saturating_sub(now_real - value_ns)
        };
        return Ok(Spec {
            first_ns,
            period_ns: None,
            policy,
        });
    }
    if oneshot {
        return Ok(Spec {
            first_ns: now_mono.saturating_add(value_ns),
            period_ns: None,
            policy,
        });
    }
    let period_ns = value_ns.max(unit_ns);
    Ok(Spec {
        first_ns: now_mono.saturating_add(period_ns),
        period_ns: Some(period_ns),
        policy,
    })
}

#[derive(Debug)]
struct Timer {
    knote: KnoteId,
    /// `Some` for a periodic timer.
    schedule: Option<Schedule>,
    policy: MissedTickPolicy,
    /// Exact deadline of the pending expiry, if armed.
    deadline_ns: Option<u64>,
    key: Option<Key>,
    in_near: bool,
    /// Catch-up events still to deliver after the current one.
    backlog: u64,
}

/// The `EVFILT_TIMER` storage; see the [module docs](self).
///
/// Add it to a queue with `kevent_core::Kqueue::builder(..).storage(..)`
/// (the `kevent` facade does).
#[derive(Debug)]
pub struct TimerStorage {
    timers: Slab<Timer>,
    wheel: Wheel<usize>,
    /// Timers the wheel handed out whose exact deadline is still ahead.
    near: Vec<usize>,
    /// Scratch for one expiry round (kept to avoid allocating).
    due: Vec<(u64, usize)>,
    origin_ns: u64,
    timerfd: Option<Timerfd>,
    armed_ns: Option<u64>,
}

impl Default for TimerStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerStorage {
    /// An empty timer storage.
    #[must_use]
    pub fn new() -> Self {
        TimerStorage {
            timers: Slab::new(),
            wheel: Wheel::new(),
            near: Vec::new(),
            due: Vec::new(),
            origin_ns: sys::monotonic_ns(),
            timerfd: None,
            armed_ns: None,
        }
    }

    fn tick_of(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.origin_ns) / NS_PER_MS
    }

    fn ensure_timerfd(&mut self, cx: &mut Context<'_>) -> Result<(), Errno> {
        if self.timerfd.is_none() {
            let tfd = Timerfd::new_nonblocking().map_err(errno)?;
            cx.watch_fd(tfd.raw(), kevent_core::Interest::Read, 0)
                .map_err(errno)?;
            self.timerfd = Some(tfd);
        }
        Ok(())
    }

    /// Files timer `idx` under its deadline.
    fn arm(&mut self, idx: usize, deadline_ns: u64) {
        let tick = self.tick_of(deadline_ns);
        let key = self.wheel.insert(tick, idx);
        let t = &mut self.timers[idx];
        t.deadline_ns = Some(deadline_ns);
        t.key = Some(key);
    }

    /// Takes timer `idx` out of the wheel and the near list.
    fn disarm(&mut self, idx: usize) {
        let t = &mut self.timers[idx];
        t.deadline_ns = None;
        if let Some(key) = t.key.take() {
            self.wheel.cancel(key);
        }
        if std::mem::take(&mut t.in_near) {
            if let Some(p) = self.near.iter().position(|&i| i == idx) {
                self.near.swap_remove(p);
            }
        }
    }

    /// Programs the timerfd for the earliest exact deadline.
    fn rearm(&mut self) {
        let near = self
            .near
            .iter()
            .filter_map(|&i| self.timers[i].deadline_ns)
            .min();
        let wheel = self
            .wheel
            .next_expiration()
            .map(|t| self.origin_ns.saturating_add(t.saturating_mul(NS_PER_MS)));
        let next = match (near, wheel) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if next == self.armed_ns {
            return;
        }
        let Some(tfd) = &self.timerfd else { return };
        let r = match next {
            Some(ns) => tfd.set_abs(ns, 0),
            None => tfd.disarm(),
        };
        match r {
            Ok(()) => self.armed_ns = next,
            Err(e) => log::error!("EVFILT_TIMER: cannot arm timerfd: {e}"),
        }
    }

    /// Sets timer `idx` from a change and starts it.
    fn start(&mut self, idx: usize, spec: Spec) {
        let t = &mut self.timers[idx];
        t.policy = spec.policy;
        t.backlog = 0;
        t.schedule = spec
            .period_ns
            .and_then(|p| Schedule::new(spec.first_ns - p, p).ok());
        // A deadline already past (ABSTIME in the past, a zero one-shot) is
        // filed too: the timerfd armed in the past fires at once, and the
        // expiry round fires it in deadline order with every other due
        // timer rather than ahead of them.
        self.arm(idx, spec.first_ns);
    }

    /// Runs every timer due at `now`.
    fn expire_at(&mut self, cx: &mut Context<'_>, now: u64) {
        let now_tick = self.tick_of(now);
        while let Some(e) = self.wheel.pop_expired(now_tick) {
            let t = &mut self.timers[e.value];
            t.key = None;
            t.in_near = true;
            self.near.push(e.value);
        }
        self.due.clear();
        let mut i = 0;
        while i < self.near.len() {
            let idx = self.near[i];
            match self.timers[idx].deadline_ns {
                Some(d) if d <= now => {
                    self.near.swap_remove(i);
                    self.timers[idx].in_near = false;
                    self.due.push((d, idx));
                }
                _ => i += 1,
            }
        }
        // Fire in deadline order (ties: the order they were filed).
        let mut due = std::mem::take(&mut self.due);
        due.sort_by_key(|&(d, _)| d);
        for &(_, idx) in &due {
            self.fire(cx, idx, now);
        }
        self.due = due;
        self.rearm();
    }

    fn fire(&mut self, cx: &mut Context<'_>, idx: usize, now: u64) {
        let t = &mut self.timers[idx];
        t.deadline_ns = None;
        let knote = t.knote;
        let Some(schedule) = t.schedule else {
            let k = cx.knote_mut(knote);
            k.set_data(k.data().saturating_add(1));
            cx.activate(knote);
            return;
        };
        let policy = t.policy;
        let mut sched = schedule;
        let data = match policy {
            MissedTickPolicy::Catchup => {
                // Every due tick becomes its own event: count them, and
                // hand them out one per delivery (see `clear`).
                // O(1) under the queue's lock, however long the stall:
                // Merge's step counts the due ticks and lands on the grid
                // point that as many Catchup steps would reach.
                let n = match step(MissedTickPolicy::Merge, sched, now) {
                    Some(st) => {
                        sched = st.schedule;
                        st.data
                    }
                    None => 0,
                };
                let k = cx.knote(knote);
                let queued = k.data() > 0;
                t.backlog = t
                    .backlog
                    .saturating_add(n.saturating_sub(u64::from(!queued)));
                1
            }
            _ => match step(policy, sched, now) {
                Some(st) => {
                    sched = st.schedule;
                    st.data
                }
                None => 0,
            },
        };
        t.schedule = Some(sched);
        let next = sched.next_deadline();
        let k = cx.knote_mut(knote);
        let merged = match policy {
            MissedTickPolicy::Merge => k.data().saturating_add(data as i64),
            // Dropped or delayed ticks are not counted; one event pending.
            _ => data.min(1) as i64,
        };
        if data > 0 {
            k.set_data(merged);
            cx.activate(knote);
        }
        self.arm(idx, next);
    }
}

fn errno(e: io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `(monotonic, realtime)` now; the realtime read (three clock reads) only
/// when an `ABSTIME` change needs it.
fn clocks_for(fflags: u32) -> (u64, u64) {
    if fflags & note::ABSTIME != 0 {
        clocks_now()
    } else {
        (sys::monotonic_ns(), 0)
    }
}

/// `(monotonic, realtime)` read as one instant: the pair whose realtime
/// reads bracket the monotonic read most tightly of a few tries, so a
/// preemption between the reads cannot skew an `ABSTIME` conversion.
fn clocks_now() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..4 {
        let r0 = realtime_ns();
        let m = sys::monotonic_ns();
        let r1 = realtime_ns();
        let width = r1.saturating_sub(r0);
        if width < best.0 {
            best = (width, m, r0 + width / 2);
        }
        if width < 2_000 {
            break;
        }
    }
    (best.1, best.2)
}

impl Storage for TimerStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Timer]
    }

    fn attach(&mut self, cx: &mut Context<'_>, kn: KnoteId) -> Result<(), Errno> {
        let k = cx.knote(kn);
        let oneshot = k.flags().contains(Flags::ONESHOT);
        let (mono, real) = clocks_for(k.sfflags());
        let spec = parse(k.sfflags(), k.sdata(), oneshot, mono, real)?;
        self.ensure_timerfd(cx)?;
        let k = cx.knote_mut(kn);
        k.set_flags(Flags::CLEAR, true);
        let idx = self.timers.insert(Timer {
            knote: kn,
            schedule: None,
            policy: MissedTickPolicy::Merge,
            deadline_ns: None,
            key: None,
            in_near: false,
            backlog: 0,
        });
        k.hook = idx as u64;
        self.start(idx, spec);
        self.rearm();
        Ok(())
    }

    fn modify(&mut self, cx: &mut Context<'_>, kn: KnoteId, change: &Kevent) -> Result<(), Errno> {
        if !change.flags.contains(Flags::ADD) {
            // ENABLE/DISABLE/DISPATCH only: the schedule runs on.
            return Ok(());
        }
        let k = cx.knote(kn);
        // The mode is the knote's, fixed at creation (FreeBSD keeps
        // `kn_flags` on re-ADD): a change cannot turn a periodic knote into
        // a one-shot timer that would then sit registered and dead.
        let oneshot = k.flags().contains(Flags::ONESHOT);
        let (mono, real) = clocks_for(change.fflags);
        let spec = parse(change.fflags, change.data, oneshot, mono, real)?;
        let idx = k.hook as usize;
        let k = cx.knote_mut(kn);
        k.set_sfflags(change.fflags);
        // Restart: undelivered expirations are discarded.
        k.set_data(0);
        cx.deactivate(kn);
        self.disarm(idx);
        self.start(idx, spec);
        self.rearm();
        Ok(())
    }

    fn detach(&mut self, cx: &mut Context<'_>, kn: KnoteId) {
        let idx = cx.knote(kn).hook as usize;
        if self.timers.get(idx).is_some_and(|t| t.knote == kn) {
            self.disarm(idx);
            self.timers.remove(idx);
            self.rearm();
        }
    }

    fn event(&mut self, cx: &mut Context<'_>, kn: KnoteId, out: &mut Kevent) -> bool {
        let k = cx.knote(kn);
        *out = k.to_event();
        out.data > 0
    }

    fn clear(&mut self, cx: &mut Context<'_>, kn: KnoteId) {
        // Catch-up: the next missed tick is ready at once.
        let idx = cx.knote(kn).hook as usize;
        let Some(t) = self.timers.get_mut(idx).filter(|t| t.knote == kn) else {
            return;
        };
        if t.backlog > 0 {
            t.backlog -= 1;
            cx.knote_mut(kn).set_data(1);
            cx.activate(kn);
        }
    }

    fn os_event(&mut self, cx: &mut Context<'_>, _payload: u64, _ready: Readiness) {
        if let Some(tfd) = &self.timerfd {
            // Drain the expiration count (EAGAIN when already drained).
            let _ = tfd.try_read();
        }
        self.armed_ns = None;
        self.expire_at(cx, sys::monotonic_ns());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000_000;
    const REAL: u64 = 1_700_000_000_000_000_000;

    #[test]
    fn units() {
        let p = |f, d| parse(f, d, false, NOW, REAL).unwrap().period_ns;
        assert_eq!(p(0, 5), Some(5_000_000));
        assert_eq!(p(note::MSECONDS, 5), Some(5_000_000));
        assert_eq!(p(note::SECONDS, 2), Some(2_000_000_000));
        assert_eq!(p(note::USECONDS, 250), Some(250_000));
        assert_eq!(p(note::NSECONDS, 1), Some(1));
        // Zero period: the smallest of its unit, as FreeBSD.
        assert_eq!(p(note::USECONDS, 0), Some(1_000));
        let s = parse(0, 5, false, NOW, REAL).unwrap();
        assert_eq!(s.first_ns, NOW + 5_000_000);
    }

    #[test]
    fn errors() {
        assert_eq!(parse(0, -1, false, NOW, REAL), Err(libc::EINVAL));
        assert_eq!(
            parse(note::SECONDS | note::USECONDS, 1, false, NOW, REAL),
            Err(libc::EINVAL)
        );
        assert_eq!(parse(0x0400_0000, 1, false, NOW, REAL), Err(libc::EINVAL));
    }

    #[test]
    fn oneshot_and_abstime() {
        let s = parse(note::USECONDS, 0, true, NOW, REAL).unwrap();
        assert_eq!((s.first_ns, s.period_ns), (NOW, None));
        // Absolute, 2 s in the future / in the past.
        let s = parse(
            note::ABSTIME | note::SECONDS,
            (REAL / 1_000_000_000 + 2) as i64,
            false,
            NOW,
            REAL,
        )
        .unwrap();
        assert_eq!(s.period_ns, None);
        assert!(s.first_ns > NOW + 1_000_000_000 && s.first_ns <= NOW + 2_000_000_000);
        let s = parse(
            note::ABSTIME | note::NSECONDS,
            (REAL - 5) as i64,
            false,
            NOW,
            REAL,
        )
        .unwrap();
        assert_eq!(s.first_ns, NOW - 5);
        let s = parse(note::ABSTIME, 0, false, NOW, REAL).unwrap();
        assert_eq!(s.first_ns, 0);
    }

    #[test]
    fn policies_and_saturation() {
        for (f, p) in [
            (POLICY_MERGE, MissedTickPolicy::Merge),
            (POLICY_CATCHUP, MissedTickPolicy::Catchup),
            (POLICY_SKIP, MissedTickPolicy::Skip),
            (POLICY_DELAY, MissedTickPolicy::Delay),
        ] {
            assert_eq!(parse(f, 1, false, NOW, REAL).unwrap().policy, p);
            assert_eq!(policy_fflags(p), f);
        }
        let s = parse(note::SECONDS, i64::MAX, false, NOW, REAL).unwrap();
        assert_eq!(s.first_ns, u64::MAX);
    }

    #[test]
    fn timer_change_round_trips() {
        let ch = timer(3, Duration::from_micros(1500), MissedTickPolicy::Delay, 9);
        let s = parse(ch.fflags, ch.data, false, NOW, REAL).unwrap();
        assert_eq!(s.period_ns, Some(1_500_000));
        assert_eq!(s.policy, MissedTickPolicy::Delay);
        assert_eq!((ch.ident, ch.udata, ch.filter), (3, 9, Filter::Timer));
    }
}
