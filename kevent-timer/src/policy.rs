//! Periodic schedules on an absolute grid, and what each missed-tick policy
//! delivers when a tick is late.
//!
//! A [`Schedule`] says deadline `n` is `start + n·period`; it is never
//! computed by adding sleeps, so lateness does not accumulate into drift
//! (Gleixner's point in the clockevents thread: relative expiry loses the
//! time that passed before the timer was programmed).
//!
//! [`step`] is pure: given the schedule and the current time it says what
//! to deliver and what the schedule becomes. The [`Ticker`](crate::Ticker)
//! and the `EVFILT_TIMER` storage both use it, so both behave the same.
//!
//! Times and periods are plain `u64` in one unit of the caller's choice (the
//! ticker uses `CLOCK_MONOTONIC` nanoseconds).

use std::fmt;

/// What a periodic timer does with ticks that are due while it could not
/// deliver them (the consumer stalled, the thread was not scheduled, the
/// VM was descheduled).
///
/// The list is the one hypervisors implement for a guest's timer interrupt
/// (the libvirt `tickpolicy` discussion in the virtualisation seed):
/// deliver at the normal rate without catching up, catch up at a higher
/// rate, merge into one tick, discard. The seed's warning applies to
/// [`Catchup`](Self::Catchup): a naive catch-up lets a long stall turn into
/// a storm of back-to-back events ("a naive implementation of the policy
/// leads to a guest DOS of the host"), and the fix it names is to merge
/// the ticks beyond a threshold. So catch-up is bounded: at most a *cap*
/// of events ([`DEFAULT_CATCHUP_CAP`] unless chosen) stand for one
/// backlog, and the oldest ticks beyond it are merged into the first of
/// them ([`catchup_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MissedTickPolicy {
    /// One event whose `data` is the number of ticks that passed since the
    /// last delivery; the schedule stays on its grid. kqueue's `EVFILT_TIMER`
    /// behaviour, and the default ("merge into 1 tick & deliver asap").
    #[default]
    Merge,
    /// Each missed tick is delivered as its own event (`data` = 1), back to
    /// back, as fast as the consumer takes them, until the schedule is back
    /// on its grid ("deliver at higher rate to catch up") — up to a cap of
    /// events per backlog ([`DEFAULT_CATCHUP_CAP`] by default); a backlog
    /// longer than the cap has its oldest ticks merged into the first
    /// event's `data`, so `data` still adds up to every tick.
    Catchup,
    /// Missed ticks are dropped: one event (`data` = 1) now, and the next
    /// tick on the original grid ("discard all missed ticks").
    Skip,
    /// The schedule restarts from the late tick: one event (`data` = 1) now,
    /// the next one period after now ("deliver at normal rate without
    /// catch-up"); the grid shifts by the lateness.
    Delay,
}

/// The default bound on a [`MissedTickPolicy::Catchup`] backlog: at most
/// this many events stand for the ticks due at one delivery (a tenth of a
/// second of ticks at 1 kHz); older ticks beyond it are merged into the
/// first event's `data`.
pub const DEFAULT_CATCHUP_CAP: u64 = 100;

/// A periodic schedule: deadline `n` is `start + n·period`, and `next` is the
/// index of the first deadline not yet delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Schedule {
    start: u64,
    period: u64,
    next: u64,
}

/// A schedule cannot have a zero period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroPeriod;

impl fmt::Display for ZeroPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timer period must be greater than zero")
    }
}

impl std::error::Error for ZeroPeriod {}

impl Schedule {
    /// A schedule whose first deadline is `start + period` (index 1).
    ///
    /// # Errors
    ///
    /// [`ZeroPeriod`] if `period` is 0.
    pub const fn new(start: u64, period: u64) -> Result<Self, ZeroPeriod> {
        Self::with_next(start, period, 1)
    }

    /// A schedule whose next undelivered deadline has index `next`
    /// (`next = 0` makes `start` itself the first deadline).
    ///
    /// # Errors
    ///
    /// [`ZeroPeriod`] if `period` is 0.
    pub const fn with_next(start: u64, period: u64, next: u64) -> Result<Self, ZeroPeriod> {
        if period == 0 {
            return Err(ZeroPeriod);
        }
        Ok(Schedule {
            start,
            period,
            next,
        })
    }

    /// The grid's origin.
    #[must_use]
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// The period.
    #[must_use]
    pub const fn period(&self) -> u64 {
        self.period
    }

    /// Index of the next undelivered deadline.
    #[must_use]
    pub const fn next_index(&self) -> u64 {
        self.next
    }

    /// Deadline `n`: `start + n·period`, saturating at `u64::MAX` (a
    /// deadline that never comes).
    #[must_use]
    pub const fn deadline(&self, n: u64) -> u64 {
        match n.checked_mul(self.period) {
            Some(off) => self.start.saturating_add(off),
            None => u64::MAX,
        }
    }

    /// The next undelivered deadline.
    #[must_use]
    pub const fn next_deadline(&self) -> u64 {
        self.deadline(self.next)
    }

    /// How many deadlines from `next` on are at or before `now`.
    #[must_use]
    pub const fn due(&self, now: u64) -> u64 {
        let first = self.next_deadline();
        if now < first {
            return 0;
        }
        // first <= now, so this cannot overflow; +1 counts `first` itself.
        (now - first) / self.period + 1
    }
}

/// What [`step`] says to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Step {
    /// The event's `data`: how many ticks this one event stands for.
    pub data: u64,
    /// Deadlines that were due at `now` (from the oldest undelivered one on),
    /// so `expired - 1` ticks were late beyond the first. At least 1.
    pub expired: u64,
    /// The oldest deadline this event carries (its lateness is
    /// `now - deadline`).
    pub deadline: u64,
    /// The schedule after this delivery. Under [`MissedTickPolicy::Catchup`]
    /// its next deadline may still be at or before `now`: deliver again at
    /// once.
    pub schedule: Schedule,
}

impl Step {
    /// Grid deadlines this step retires (delivered or dropped).
    #[must_use]
    pub const fn consumed(&self, before: &Schedule) -> u64 {
        if self.schedule.start == before.start && self.schedule.period == before.period {
            self.schedule.next.saturating_sub(before.next)
        } else {
            // Delay restarted the grid: everything due was retired.
            self.expired
        }
    }
}

/// What the timer delivers at `now` under `policy`, or `None` if its next
/// deadline is still in the future (never early).
///
/// With `k = schedule.due(now)` deadlines due:
///
/// | policy    | `data` | next deadline                               |
/// |-----------|--------|---------------------------------------------|
/// | `Merge`   | `k`    | first grid deadline after `now`             |
/// | `Catchup` | `1`    | the following grid deadline (maybe `<= now`)|
/// | `Skip`    | `1`    | first grid deadline after `now`             |
/// | `Delay`   | `1`    | `now + period` (grid restarts at `now`)     |
#[must_use]
pub fn step(policy: MissedTickPolicy, schedule: Schedule, now: u64) -> Option<Step> {
    let expired = schedule.due(now);
    if expired == 0 {
        return None;
    }
    let deadline = schedule.next_deadline();
    let on_grid = |advance: u64| Schedule {
        next: schedule.next.saturating_add(advance),
        ..schedule
    };
    let (data, next) = match policy {
        MissedTickPolicy::Merge => (expired, on_grid(expired)),
        MissedTickPolicy::Catchup => (1, on_grid(1)),
        MissedTickPolicy::Skip => (1, on_grid(expired)),
        MissedTickPolicy::Delay => (
            1,
            Schedule {
                start: now,
                period: schedule.period,
                next: 1,
            },
        ),
    };
    Some(Step {
        data,
        expired,
        deadline,
        schedule: next,
    })
}

/// [`MissedTickPolicy::Catchup`] bounded by `cap` events per backlog: with
/// `k` ticks due at `now`, a delivery stands for one tick while `k <= cap`
/// (as [`step`]), and for the `k - cap + 1` oldest ones once `k > cap`, so
/// that `cap - 1` single-tick deliveries follow and `data` still adds up
/// to every tick. `cap` 0 is taken as 1 (everything merged, as `Merge`).
/// `None` if nothing is due.
///
/// ```
/// use kevent_timer::policy::{catchup_step, Schedule};
///
/// // 10 ticks due, at most 4 events: 7 merged into the first, then 1, 1, 1.
/// let mut s = Schedule::new(0, 10)?;
/// let mut data = Vec::new();
/// while let Some(st) = catchup_step(s, 105, 4) {
///     data.push(st.data);
///     s = st.schedule;
/// }
/// assert_eq!(data, [7, 1, 1, 1]);
/// assert_eq!(s.next_deadline(), 110);
/// # Ok::<(), kevent_timer::policy::ZeroPeriod>(())
/// ```
#[must_use]
pub fn catchup_step(schedule: Schedule, now: u64, cap: u64) -> Option<Step> {
    let mut st = step(MissedTickPolicy::Catchup, schedule, now)?;
    let cap = cap.max(1);
    if st.expired > cap {
        st.data = st.expired - cap + 1;
        st.schedule = Schedule {
            next: schedule.next.saturating_add(st.data),
            ..schedule
        };
    }
    Some(st)
}

#[cfg(test)]
mod tests {
    use super::MissedTickPolicy::*;
    use super::*;

    fn sched(start: u64, period: u64, next: u64) -> Schedule {
        Schedule::with_next(start, period, next).unwrap()
    }

    #[test]
    fn zero_period_is_an_error() {
        assert_eq!(Schedule::new(0, 0), Err(ZeroPeriod));
    }

    #[test]
    fn never_early() {
        for policy in [Merge, Catchup, Skip, Delay] {
            let s = sched(1000, 10, 1);
            for now in 0..1010 {
                assert_eq!(step(policy, s, now), None, "{policy:?} at {now}");
            }
            assert!(step(policy, s, 1010).is_some());
        }
    }

    #[test]
    fn on_time_tick_is_the_same_for_every_policy() {
        for policy in [Merge, Catchup, Skip, Delay] {
            let s = sched(0, 10, 3);
            let st = step(policy, s, 30).unwrap();
            assert_eq!((st.data, st.expired, st.deadline), (1, 1, 30), "{policy:?}");
            assert_eq!(st.schedule.next_deadline(), 40, "{policy:?}");
        }
    }

    #[test]
    fn merge_counts_and_stays_on_grid() {
        // 3 ticks late by 5: deadlines 10, 20, 30 are due at 35.
        let st = step(Merge, sched(0, 10, 1), 35).unwrap();
        assert_eq!((st.data, st.expired, st.deadline), (3, 3, 10));
        assert_eq!(st.schedule.next_deadline(), 40);
        assert_eq!(st.consumed(&sched(0, 10, 1)), 3);
    }

    #[test]
    fn catchup_delivers_each_tick_then_returns_to_grid() {
        let mut s = sched(0, 10, 1);
        let now = 35;
        let mut delivered = Vec::new();
        while let Some(st) = step(Catchup, s, now) {
            assert_eq!(st.data, 1);
            assert_eq!(st.consumed(&s), 1);
            delivered.push(st.deadline);
            s = st.schedule;
        }
        assert_eq!(delivered, [10, 20, 30]);
        assert_eq!(s.next_deadline(), 40);
    }

    #[test]
    fn skip_drops_missed_ticks_and_keeps_grid() {
        let st = step(Skip, sched(0, 10, 1), 35).unwrap();
        assert_eq!((st.data, st.expired), (1, 3));
        assert_eq!(st.schedule.next_deadline(), 40);
        assert_eq!(st.consumed(&sched(0, 10, 1)), 3);
    }

    #[test]
    fn delay_restarts_from_now() {
        let st = step(Delay, sched(0, 10, 1), 35).unwrap();
        assert_eq!((st.data, st.expired), (1, 3));
        assert_eq!(st.schedule.start(), 35);
        assert_eq!(st.schedule.next_deadline(), 45);
        assert_eq!(st.consumed(&sched(0, 10, 1)), 3);
    }

    #[test]
    fn exhaustive_small_grid() {
        // Every start, period, next index and now in a small range: the
        // invariants of each policy.
        for period in 1..7u64 {
            for start in 0..5u64 {
                for next in 0..4u64 {
                    let s = sched(start, period, next);
                    for now in 0..60u64 {
                        let k = (next..).take_while(|&n| start + n * period <= now).count() as u64;
                        assert_eq!(s.due(now), k);
                        for policy in [Merge, Catchup, Skip, Delay] {
                            let Some(st) = step(policy, s, now) else {
                                assert_eq!(k, 0);
                                continue;
                            };
                            assert!(st.deadline <= now, "early");
                            assert_eq!(st.expired, k);
                            let nd = st.schedule.next_deadline();
                            match policy {
                                Merge | Skip => {
                                    assert!(nd > now && nd - now <= period);
                                    assert_eq!((nd - start) % period, 0, "off grid");
                                    assert_eq!(st.data, if policy == Merge { k } else { 1 });
                                }
                                Catchup => {
                                    assert_eq!(nd, st.deadline + period);
                                    assert_eq!(st.data, 1);
                                }
                                Delay => {
                                    assert_eq!(nd, now + period);
                                    assert_eq!(st.data, 1);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn catchup_cap_merges_the_oldest_ticks_beyond_it() {
        for cap in 0..8u64 {
            for due in 0..20u64 {
                let mut s = sched(0, 10, 1);
                let now = due * 10 + 5;
                let (mut events, mut ticks) = (0u64, 0u64);
                let mut first = None;
                while let Some(st) = catchup_step(s, now, cap) {
                    assert!(st.deadline <= now, "early");
                    assert_eq!(st.consumed(&s), st.data);
                    first.get_or_insert(st.data);
                    events += 1;
                    ticks += st.data;
                    s = st.schedule;
                }
                assert_eq!(ticks, due, "cap {cap} due {due}: every tick counted");
                assert_eq!(events, due.min(cap.max(1)), "cap {cap} due {due}");
                if due > cap.max(1) {
                    assert_eq!(first, Some(due - cap.max(1) + 1));
                }
                assert_eq!(s.next_deadline(), now + 5, "back on the grid");
            }
        }
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let s = sched(u64::MAX - 5, u64::MAX / 2, 1);
        assert_eq!(s.next_deadline(), u64::MAX);
        assert_eq!(step(Merge, s, u64::MAX - 1), None);
        let s = sched(0, 3, u64::MAX);
        assert_eq!(s.next_deadline(), u64::MAX);
    }

    #[test]
    fn merge_total_matches_elapsed_grid() {
        // Whatever the wake times, Merge's data adds up to every deadline
        // passed: no tick lost, none counted twice.
        let mut s = sched(7, 13, 1);
        let mut total = 0;
        let mut now = 0;
        for jump in [1u64, 5, 13, 40, 2, 100, 0, 13, 26, 1000] {
            now += jump;
            if let Some(st) = step(Merge, s, now) {
                total += st.data;
                s = st.schedule;
            }
        }
        assert_eq!(total, (now - 7) / 13);
    }
}
