//! `EVFILT_TIMER`: the timer storage for a kevent queue.
//!
//! FreeBSD's semantics: `ident` names the timer; `data` is the period (or,
//! with [`note::ABSTIME`](kevent_core::note::ABSTIME), the absolute time since the Unix epoch); the unit
//! is `note::SECONDS`, `MSECONDS` (default), `USECONDS` or `NSECONDS`;
//! periodic unless `ONESHOT` or `ABSTIME`; `CLEAR` is implicit; the
//! delivered `data` counts expirations since the last delivery; an `ADD` of
//! an existing timer restarts it and discards undelivered expirations; a
//! negative `data` is `EINVAL`, as are two units at once and any `fflags`
//! bit this filter does not define (FreeBSD's `filt_timervalidate`); a
//! periodic timer with `data = 0` gets the smallest period of its unit,
//! as FreeBSD. `DISABLE`/`ENABLE`/`DISPATCH`/`DELETE` work as for every
//! filter; a disabled timer keeps running and its expirations merge into
//! `data`.
//!
//! A change of an existing timer acts as FreeBSD's `filt_timertouch`: one
//! carrying `ADD` stores its `fflags` and `data` as the knote's `sfflags`
//! and `sdata` (`sdata` 1 for a periodic 0, as FreeBSD) and restarts the
//! timer, dropping undelivered expirations; one without `ADD` (`ENABLE`,
//! `DISABLE`) leaves both and the schedule alone. The knote's mode
//! (`ONESHOT`) stays the one it was created with. One divergence: a
//! re-`ADD` FreeBSD finds invalid has already stopped the old timer and
//! marks the knote with the error; here it is reported in the eventlist
//! (`EV_ERROR`, `data = EINVAL`) and the timer runs on unchanged.
//!
//! An `ABSTIME` deadline is converted to `CLOCK_MONOTONIC` when the change
//! is applied; a later step of the wall clock does not move it. An
//! absolute time before the system booted (the monotonic clock's origin)
//! is `EINVAL`, as FreeBSD, which subtracts its boot time; one in the past
//! since fires at once. Equal absolute times get equal deadlines (one kept
//! clock offset, see `OffsetCache`), placed at most 4 µs late, never early.
//!
//! # Missed ticks and the catch-up cap (extension)
//!
//! Each periodic timer follows a [`MissedTickPolicy`], chosen with bits
//! 24..=27 of `fflags` (see [`POLICY_MASK`]): [`POLICY_MERGE`] (0, the
//! default: kqueue's behaviour), [`POLICY_CATCHUP`], [`POLICY_SKIP`],
//! [`POLICY_DELAY`]; any other value is `EINVAL`. Under `Catchup`, bits
//! 8..=23 ([`CATCHUP_CAP_MASK`], [`catchup_cap_fflags`]) bound a backlog to
//! that many events (0: [`DEFAULT_CATCHUP_CAP`], 100): when more ticks are
//! due than events allowed, the oldest are merged into the first pending
//! event's `data`, so no stall turns into an unbounded storm of events
//! (the virtualisation seed's warning) and the `data` of all events still
//! adds up to every tick. FreeBSD defines no timer `fflags` there; the bits
//! with another policy are `EINVAL`. [`timer`] and [`catchup_timer`] build
//! such changes from Rust types.
//!
//! # Time
//!
//! Deadlines are absolute `CLOCK_MONOTONIC` nanoseconds, `start + n·period`
//! ([`Schedule`]). Timers sit in a [`Wheel`] with a 1 ms tick, filed under
//! the tick their deadline falls in; when the wheel hands one out its
//! exact deadline is checked, and one still in the future waits in a short
//! "near" list (O(1) insert and cancel: each timer knows its place).
//! Timers due in one round fire in deadline order, equal deadlines in the
//! order they were armed.
//!
//! The waiting thread is woken at the **exact** earliest deadline: the
//! minimum over the near list and the timers of the wheel's next slot
//! ([`Wheel::peek_next`], which holds the wheel's earliest timer), not the
//! slot's millisecond, so a 1 kHz timer costs one wake-up per tick (with
//! the slot's start it cost two: one to move the timer to the near list,
//! one at its deadline). Arming a timer earlier than the armed time
//! re-arms at once (O(1)); cancelling the earliest re-computes it when
//! that looks at no more than 64 timers, else the one early wake-up does.
//! Timers below 1 ms (`USECONDS`, `NSECONDS`) therefore fire no earlier
//! than asked and as soon after as the kernel wakes the thread; nothing
//! is rounded to the wheel's millisecond.
//!
//! Each thread the timer storage serves gets its timer slack set to 1 ns
//! (`PR_SET_TIMERSLACK`), once (a thread-local flag makes every later
//! call free): the thread that waits in `kevent()` and is woken for a
//! timer (the storage's expiry runs on it), the thread that arms one, and
//! under [`Wakeup::QueueTimeout`] the thread about to wait, from the
//! [`Storage::deadline`] hook the queue calls on it before it blocks.
//! Slack matters for the waits that honour it (an `epoll_pwait2` timeout,
//! other sleeps of that thread); timerfd and io_uring timeouts ignore it,
//! so a timerfd- or io_uring-woken timer does not need it before its first
//! wake. The deadline hook is not used for the other mechanisms because
//! the queue then reads the clock and calls the hook around every wait of
//! every queue holding a timer storage (the facade's all do): 161 more
//! instructions per `kevent()` call measured with callgrind (~880 → ~1040
//! for a trigger-and-collect round trip).
//!
//! # The wake-up mechanism, measured
//!
//! [`Wakeup`] chooses how the thread is woken: a timerfd armed with
//! `TFD_TIMER_ABSTIME` (the default), the queue's own wait timeout
//! (`epoll_pwait2` / io_uring `EXT_ARG`, relative, computed just before
//! the wait), or an io_uring `IORING_OP_TIMEOUT` with
//! `IORING_TIMEOUT_ABS`. Lateness of a 1 kHz `Filter::Timer` read through
//! `kevent()`, from `ticktest --compare-wakeups --seconds 8` (the five
//! combinations interleaved pass by pass, each pass a fresh queue), on the
//! shared 2-core VM (kernel 6.18, HZ=250, tsc; other builds running, load
//! 2–4). Two runs with the reading thread under `SCHED_FIFO` (`--rt`: the
//! scheduler's share removed, so the mechanism shows), one without;
//! "missed" counts ticks per 8000 that were not alone at their wake.
//!
//! | backend, wake-up              | p50 µs (rt) | p99 µs (rt) | missed (rt) | p50 / p99 µs, missed (no rt) |
//! |-------------------------------|------------:|------------:|------------:|-----------------------------:|
//! | epoll, timerfd (default)      | 43, 61      | 123, 163    | 0, 9        | 63 / 275, 72                 |
//! | epoll, `epoll_pwait2` timeout | 35, 47      | 99, 136     | 1, 7        | 60 / 253, 77                 |
//! | io_uring, timerfd (default)   | 49, 58      | 114, 189    | 4, 5        | 63 / 271, 83                 |
//! | io_uring, `EXT_ARG` timeout   | 36, 43      | 94, 132     | 1, 4        | 61 / 216, 56                 |
//! | io_uring, `TIMEOUT_ABS` op    | 43, 50      | 107, 158    | 3, 9        | 53 / 153, 156                |
//!
//! All five deliver every tick (dahdi-style average 99.99–99.997 %) and
//! sit within this machine's run-to-run noise of each other. The relative
//! queue timeouts were ~10 µs better at p50 in both `SCHED_FIFO` runs (the
//! hrtimer wakes the sleeping thread directly, where a timerfd goes
//! through its wait queue and epoll's callback first), but they cannot be
//! shortened by a change from another thread while one waits; the
//! timerfd can (and is the same on both backends), so it stays the
//! default. Without real-time priority the scheduler dominates: every
//! mechanism shows the same 3–6 ms gaps when the other core is busy.
//!
//! Wake-ups per tick (strace -c of `ticktest --via kqueue --seconds 2`,
//! 2000 ticks): woken at the wheel slot's start and again at the exact
//! deadline, the queue made 3397 `epoll_pwait2` calls and 3399
//! `timerfd_settime` (epoll; io_uring: 3218 `io_uring_enter`); armed at
//! the exact deadline, 1950 and 1952 (io_uring: 1988) — one per tick,
//! the rest merged under strace's overhead. With the timerfd's count no
//! longer read (edge-triggered watch, reset by the next
//! `timerfd_settime`), a tick costs two syscalls: the wait and the re-arm.

mod change;
mod wakeup;

use std::time::{Duration, Instant};

use kevent_core::{Context, Errno, Filter, Flags, Kevent, KnoteId, Readiness, Storage};
use slab::Slab;

pub use crate::policy::DEFAULT_CATCHUP_CAP;
use crate::policy::{step, MissedTickPolicy, Schedule};
use crate::sys;
use crate::wheel::{Key, Wheel};
pub use change::{
    catchup_cap_fflags, catchup_timer, policy_fflags, timer, CATCHUP_CAP_MASK, CATCHUP_CAP_SHIFT,
    POLICY_CATCHUP, POLICY_DELAY, POLICY_MASK, POLICY_MERGE, POLICY_SKIP,
};
use change::{parse, OffsetCache, Spec};
use wakeup::Waker;
pub use wakeup::Wakeup;

const NS_PER_MS: u64 = 1_000_000;
/// `Timer::near_pos` of a timer not in the near list.
const NOT_NEAR: usize = usize::MAX;

#[derive(Debug)]
struct Timer {
    knote: KnoteId,
    /// `Some` for a periodic timer.
    schedule: Option<Schedule>,
    policy: MissedTickPolicy,
    /// Catch-up cap in events.
    cap: u64,
    /// Exact deadline of the pending expiry, if armed.
    deadline_ns: Option<u64>,
    /// Filing order, for ties.
    seq: u64,
    key: Option<Key>,
    /// Index in `TimerStorage::near`, or [`NOT_NEAR`].
    near_pos: usize,
    /// Catch-up events still to deliver after the pending one.
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
    /// Scratch for one expiry round (kept to avoid allocating):
    /// `(deadline, seq, timer)`.
    due: Vec<(u64, u64, usize)>,
    /// `CLOCK_MONOTONIC` ns of the wheel's tick 0, and the same instant
    /// as an `Instant` (read after it, so `instant_of` is never early).
    origin_ns: u64,
    origin: Instant,
    next_seq: u64,
    offsets: OffsetCache,
    waker: Waker,
}

impl Default for TimerStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl TimerStorage {
    /// An empty timer storage woken by a timerfd ([`Wakeup::Timerfd`]).
    #[must_use]
    pub fn new() -> Self {
        Self::with_wakeup(Wakeup::default())
    }

    /// An empty timer storage woken by `wakeup`.
    #[must_use]
    pub fn with_wakeup(wakeup: Wakeup) -> Self {
        let origin_ns = sys::monotonic_ns();
        TimerStorage {
            timers: Slab::new(),
            wheel: Wheel::new(),
            near: Vec::new(),
            due: Vec::new(),
            origin_ns,
            origin: Instant::now(),
            next_seq: 0,
            offsets: OffsetCache::default(),
            waker: Waker::new(wakeup),
        }
    }

    /// The wake-up mechanism in use: the one asked for, except
    /// [`Wakeup::UringTimeout`] on an epoll queue, which uses
    /// [`Wakeup::Timerfd`] (known once the first timer was added).
    #[must_use]
    pub fn wakeup(&self) -> Wakeup {
        self.waker.mode.unwrap_or(self.waker.asked)
    }

    fn tick_of(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.origin_ns) / NS_PER_MS
    }

    /// `ns` (monotonic) as an `Instant`, never before it; `None` past what
    /// an `Instant` holds (a deadline that never comes).
    fn instant_of(&self, ns: u64) -> Option<Instant> {
        self.origin
            .checked_add(Duration::from_nanos(ns.saturating_sub(self.origin_ns)))
    }

    /// Files timer `idx` under its deadline; returns the deadline.
    fn arm(&mut self, idx: usize, deadline_ns: u64) -> u64 {
        let tick = self.tick_of(deadline_ns);
        let key = self.wheel.insert(tick, idx);
        let seq = self.next_seq;
        self.next_seq += 1;
        let t = &mut self.timers[idx];
        t.deadline_ns = Some(deadline_ns);
        t.key = Some(key);
        t.seq = seq;
        deadline_ns
    }

    /// Takes timer `idx` out of the wheel and the near list (O(1)); returns
    /// the deadline it had.
    fn disarm(&mut self, idx: usize) -> Option<u64> {
        let t = &mut self.timers[idx];
        let had = t.deadline_ns.take();
        if let Some(key) = t.key.take() {
            self.wheel.cancel(key);
        }
        let pos = std::mem::replace(&mut t.near_pos, NOT_NEAR);
        if pos != NOT_NEAR {
            self.near_remove(pos);
        }
        had
    }

    fn near_push(&mut self, idx: usize) {
        self.timers[idx].near_pos = self.near.len();
        self.near.push(idx);
    }

    /// Removes the near list's entry at `pos` (its timer's `near_pos` is
    /// the caller's to reset).
    fn near_remove(&mut self, pos: usize) {
        self.near.swap_remove(pos);
        if let Some(&moved) = self.near.get(pos) {
            self.timers[moved].near_pos = pos;
        }
    }

    /// The earliest exact deadline: the near list's, or among the wheel's
    /// next slot (which holds the wheel's earliest timer).
    fn earliest(&self) -> Option<u64> {
        self.earliest_within(usize::MAX).flatten()
    }

    /// [`earliest`](Self::earliest) if it takes looking at no more than
    /// `budget` timers, else `None`.
    fn earliest_within(&self, budget: usize) -> Option<Option<u64>> {
        if self.near.len() > budget {
            return None;
        }
        let deadline = |&i: &usize| self.timers[i].deadline_ns;
        let near = self.near.iter().filter_map(deadline).min();
        let mut wheel = None;
        for (seen, (_, i)) in self.wheel.peek_next().enumerate() {
            if self.near.len() + seen >= budget {
                return None;
            }
            wheel = match (wheel, deadline(i)) {
                (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                (a, b) => a.or(b),
            };
        }
        Some(match (near, wheel) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Programs the wake-up for the earliest exact deadline.
    fn rearm(&mut self, cx: &mut Context<'_>) {
        let next = self.earliest();
        self.waker.program(cx, next);
    }

    /// After timer `idx` moved from `old` to `new`: re-arm the wake-up if
    /// it must come earlier (O(1)). If the timer was the earliest, the
    /// armed time would wake for nothing: re-compute it when that means
    /// looking at a few timers (a slot holding thousands, cancelled
    /// earliest-first, would make that quadratic), else leave it and let
    /// that one early wake-up re-compute.
    fn moved(&mut self, cx: &mut Context<'_>, old: Option<u64>, new: Option<u64>) {
        /// Timers looked at, at most, to re-compute after a cancel.
        const BUDGET: usize = 64;
        if let Some(d) = new {
            if self.waker.armed.is_none_or(|a| d < a) {
                // The earliest deadline is now this one (the armed time
                // is never after any deadline): no search needed.
                self.waker.program(cx, Some(d));
                return;
            }
        }
        if old.is_some() && old == self.waker.armed && new != old {
            if let Some(next) = self.earliest_within(BUDGET) {
                self.waker.program(cx, next);
            }
        }
    }

    /// Sets timer `idx` from a change and starts it; returns its deadline.
    fn start(&mut self, idx: usize, spec: Spec) -> u64 {
        let t = &mut self.timers[idx];
        t.policy = spec.policy;
        t.cap = spec.cap;
        t.backlog = 0;
        t.schedule = spec
            .period_ns
            .and_then(|p| Schedule::new(spec.first_ns - p, p).ok());
        // A deadline already past (ABSTIME in the past, a zero one-shot) is
        // filed too: the wake-up armed in the past fires at once, and the
        // expiry round fires it in deadline order with every other due
        // timer rather than ahead of them.
        self.arm(idx, spec.first_ns)
    }

    /// Runs every timer due at `now`.
    fn expire_at(&mut self, cx: &mut Context<'_>, now: u64) {
        let now_tick = self.tick_of(now);
        while let Some(e) = self.wheel.pop_expired(now_tick) {
            self.timers[e.value].key = None;
            self.near_push(e.value);
        }
        self.due.clear();
        let mut i = 0;
        while i < self.near.len() {
            let idx = self.near[i];
            let t = &mut self.timers[idx];
            match t.deadline_ns {
                Some(d) if d <= now => {
                    t.near_pos = NOT_NEAR;
                    self.due.push((d, t.seq, idx));
                    self.near_remove(i);
                }
                _ => i += 1,
            }
        }
        // Deadline order; equal deadlines in filing order (`seq` is unique).
        let mut due = std::mem::take(&mut self.due);
        due.sort_unstable_by_key(|&(d, seq, _)| (d, seq));
        for &(_, _, idx) in &due {
            self.fire(cx, idx, now);
        }
        self.due = due;
        self.rearm(cx);
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
        // Catchup counts like Merge: O(1) under the queue's lock however
        // long the stall, landing on the grid point that as many Catchup
        // steps would reach.
        let counting = match t.policy {
            MissedTickPolicy::Catchup => MissedTickPolicy::Merge,
            p => p,
        };
        let Some(st) = step(counting, schedule, now) else {
            // Not due after all (cannot happen: fired timers are due).
            self.arm(idx, schedule.next_deadline());
            return;
        };
        t.schedule = Some(st.schedule);
        let as_data = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let pending = cx.knote(knote).data();
        let data = match t.policy {
            MissedTickPolicy::Merge => pending.saturating_add(as_data(st.data)),
            MissedTickPolicy::Catchup => {
                // Pending: one event of `pending` ticks (0: none) and
                // `backlog` single-tick events after it. The new ticks
                // are events of their own, as many as the cap allows; the
                // oldest beyond it merge into the first event (the split
                // `catchup_step` makes).
                let pending = pending.max(0) as u64;
                let ticks = pending.saturating_add(t.backlog).saturating_add(st.data);
                let events = u64::from(pending > 0)
                    .saturating_add(t.backlog)
                    .saturating_add(st.data)
                    .min(t.cap.max(1));
                t.backlog = events - 1;
                as_data(ticks - t.backlog)
            }
            // Dropped or delayed ticks are not counted; one event pending.
            _ => 1,
        };
        cx.knote_mut(knote).set_data(data);
        cx.activate(knote);
        self.arm(idx, st.schedule.next_deadline());
    }
}

impl Storage for TimerStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Timer]
    }

    fn attach(&mut self, cx: &mut Context<'_>, kn: KnoteId) -> Result<(), Errno> {
        sys::min_timer_slack_once();
        let k = cx.knote(kn);
        let oneshot = k.flags().contains(Flags::ONESHOT);
        let (sfflags, sdata) = (k.sfflags(), k.sdata());
        let (mono, abs) = self.offsets.clocks_for(sfflags);
        let spec = parse(sfflags, sdata, oneshot, mono, abs)?;
        self.waker
            .ensure(cx)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let k = cx.knote_mut(kn);
        k.set_flags(Flags::CLEAR, true);
        k.set_sdata(spec.sdata);
        let idx = self.timers.insert(Timer {
            knote: kn,
            schedule: None,
            policy: MissedTickPolicy::Merge,
            cap: 1,
            deadline_ns: None,
            seq: 0,
            key: None,
            near_pos: NOT_NEAR,
            backlog: 0,
        });
        k.hook = idx as u64;
        let d = self.start(idx, spec);
        self.moved(cx, None, Some(d));
        Ok(())
    }

    fn modify(&mut self, cx: &mut Context<'_>, kn: KnoteId, change: &Kevent) -> Result<(), Errno> {
        if !change.flags.contains(Flags::ADD) {
            // ENABLE/DISABLE/DISPATCH only: the schedule runs on, and the
            // subscription is kept (FreeBSD's filt_timertouch acts on ADD).
            return Ok(());
        }
        let k = cx.knote(kn);
        // The mode is the knote's, fixed at creation (FreeBSD keeps
        // `kn_flags` on re-ADD): a change cannot turn a periodic knote into
        // a one-shot timer that would then sit registered and dead.
        let oneshot = k.flags().contains(Flags::ONESHOT);
        let (mono, abs) = self.offsets.clocks_for(change.fflags);
        let spec = parse(change.fflags, change.data, oneshot, mono, abs)?;
        let idx = k.hook as usize;
        let k = cx.knote_mut(kn);
        k.set_sfflags(change.fflags);
        k.set_sdata(spec.sdata);
        // Restart: undelivered expirations are discarded.
        k.set_data(0);
        cx.deactivate(kn);
        let old = self.disarm(idx);
        let new = self.start(idx, spec);
        self.moved(cx, old, Some(new));
        Ok(())
    }

    fn detach(&mut self, cx: &mut Context<'_>, kn: KnoteId) {
        let idx = cx.knote(kn).hook as usize;
        if self.timers.get(idx).is_some_and(|t| t.knote == kn) {
            let old = self.disarm(idx);
            self.timers.remove(idx);
            self.moved(cx, old, None);
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
        // On the thread that waited and was woken for a timer.
        sys::min_timer_slack_once();
        self.waker.on_timerfd();
        self.expire_at(cx, sys::monotonic_ns());
    }

    fn completion(&mut self, cx: &mut Context<'_>, payload: u64, result: i32, _flags: u32) {
        // -ETIME: the live timeout expired; -ECANCELED: an old one went.
        if self.waker.on_completion(cx, payload, result) {
            sys::min_timer_slack_once();
            self.expire_at(cx, sys::monotonic_ns());
        }
    }

    fn timed(&self) -> bool {
        // Only the queue-timeout mechanism needs the deadline hook (see the
        // module docs for what it would cost the others).
        self.waker.asked == Wakeup::QueueTimeout
    }

    fn deadline(&self) -> Option<Instant> {
        if self.timers.is_empty() {
            return None;
        }
        // Runs on the thread about to wait: its slack goes to 1 ns, once.
        sys::min_timer_slack_once();
        match self.waker.mode {
            Some(Wakeup::QueueTimeout) => self.waker.armed.and_then(|ns| self.instant_of(ns)),
            _ => None,
        }
    }

    fn expire(&mut self, cx: &mut Context<'_>, _now: Instant) {
        self.waker.armed = None;
        self.expire_at(cx, sys::monotonic_ns());
    }
}
