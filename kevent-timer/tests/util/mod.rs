//! Helpers shared by the timer storage's behaviour tests: one queue per
//! backend (and per wake-up mechanism), change builders, waits that fail
//! with a message, and [`Probe`], a storage that wraps a `TimerStorage`
//! to watch what the queue asks of it.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kevent_core::{
    Backend, Context, Errno, Filter, Flags, Kevent, KnoteId, Kqueue, Readiness, Storage,
};
use kevent_timer::storage::Wakeup;
use kevent_timer::TimerStorage;

/// The backends every test runs on. A backend that cannot be created
/// fails the test — never a silent skip; on a kernel without io_uring
/// skip it explicitly with `KEVENT_TEST_SKIP=IoUring` (said on stderr).
pub fn backends() -> Vec<Backend> {
    let skip = std::env::var("KEVENT_TEST_SKIP").unwrap_or_default();
    [Backend::Epoll, Backend::IoUring]
        .into_iter()
        .filter(|b| {
            let skipped = skip.split(',').any(|n| n.trim() == format!("{b:?}"));
            if skipped {
                eprintln!("SKIPPED on {b:?}: KEVENT_TEST_SKIP");
            }
            !skipped
        })
        .collect()
}

/// A queue on `backend` whose timers are woken by `wakeup`.
#[track_caller]
pub fn queue(backend: Backend, wakeup: Wakeup) -> Kqueue {
    Kqueue::builder(backend)
        .and_then(|b| {
            b.storage(Box::new(TimerStorage::with_wakeup(wakeup)))
                .build()
        })
        .unwrap_or_else(|e| panic!("{backend:?}: {e}"))
}

/// One queue with the (default) timer storage per backend.
pub fn queues() -> Vec<Kqueue> {
    backends()
        .into_iter()
        .map(|b| queue(b, Wakeup::default()))
        .collect()
}

/// Every wake-up mechanism on every backend it is distinct on:
/// `(name, backend, wakeup)`.
pub fn wakeups() -> Vec<(String, Backend, Wakeup)> {
    let mut v = Vec::new();
    for b in backends() {
        for w in [Wakeup::Timerfd, Wakeup::QueueTimeout, Wakeup::UringTimeout] {
            if w == Wakeup::UringTimeout && b != Backend::IoUring {
                continue;
            }
            v.push((format!("{b:?}/{w:?}"), b, w));
        }
    }
    v
}

/// An `ADD` change for timer `ident` (`udata` = `ident`).
pub fn add(ident: u64, flags: Flags, fflags: u32, data: i64) -> Kevent {
    Kevent::new(
        ident,
        Filter::Timer,
        Flags::ADD | flags,
        fflags,
        data,
        ident,
    )
}

/// A change without `ADD` (`DELETE`, `ENABLE`, `DISABLE`).
pub fn ctl(ident: u64, flags: Flags) -> Kevent {
    Kevent::new(ident, Filter::Timer, flags, 0, 0, ident)
}

#[track_caller]
pub fn change(kq: &Kqueue, ch: Kevent) {
    kq.kevent(&[ch], &mut [], None).unwrap();
}

/// The change's `EV_ERROR` entry (`RECEIPT`-style: one slot, no wait).
#[track_caller]
pub fn change_errno(kq: &Kqueue, ch: Kevent) -> Option<i64> {
    let mut out = [Kevent::default(); 1];
    let n = kq.kevent(&[ch], &mut out, Some(Duration::ZERO)).unwrap();
    (n == 1 && out[0].flags.contains(Flags::ERROR) && out[0].data != 0).then_some(out[0].data)
}

/// Waits up to `timeout` for one event.
#[track_caller]
pub fn wait_one(kq: &Kqueue, timeout: Duration) -> Option<Kevent> {
    let mut out = [Kevent::default(); 1];
    let n = kq.kevent(&[], &mut out, Some(timeout)).unwrap();
    (n == 1).then_some(out[0])
}

/// Waits for timer `ident`; fails on another event or a timeout.
#[track_caller]
pub fn expect_timer(kq: &Kqueue, ident: u64, timeout: Duration) -> Kevent {
    let ev = wait_one(kq, timeout)
        .unwrap_or_else(|| panic!("timer {ident} did not fire in {timeout:?}"));
    assert_eq!((ev.ident, ev.filter), (ident, Filter::Timer), "{ev:?}");
    assert!(ev.flags.contains(Flags::CLEAR), "implicit CLEAR: {ev:?}");
    ev
}

/// Time since the Unix epoch.
pub fn wall() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// When the system booted, as a time since the Unix epoch (realtime minus
/// `CLOCK_MONOTONIC`).
pub fn boot_wall() -> Duration {
    wall() - monotonic()
}

/// `CLOCK_MONOTONIC` as a `Duration` since its origin.
pub fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The calling thread's timer slack in ns (`PR_GET_TIMERSLACK`).
pub fn timer_slack_ns() -> u64 {
    // SAFETY: PR_GET_TIMERSLACK takes no pointer arguments.
    let r = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) };
    assert!(r >= 0, "prctl: {}", std::io::Error::last_os_error());
    r as u64
}

/// What a [`Probe`] saw.
#[derive(Debug, Default)]
pub struct ProbeLog {
    /// `(sfflags, sdata)` of the knote after each `modify`.
    pub after_modify: Vec<(u32, i64)>,
    /// `(sfflags, sdata)` after each `attach`.
    pub after_attach: Vec<(u32, i64)>,
}

/// A storage that hands everything to a `TimerStorage` and records what
/// the queue asked: wake-ups (each `os_event`, `completion` or `expire`:
/// one per time the storage's wake-up mechanism fired) and the knote's
/// subscription after each attach and modify.
#[derive(Debug)]
pub struct Probe {
    inner: TimerStorage,
    pub wakes: Arc<AtomicU64>,
    pub log: Arc<Mutex<ProbeLog>>,
}

impl Probe {
    pub fn new(inner: TimerStorage) -> Self {
        Probe {
            inner,
            wakes: Arc::default(),
            log: Arc::default(),
        }
    }

    /// A queue on `backend` with this probe as its timer storage.
    #[track_caller]
    pub fn queue(
        backend: Backend,
        wakeup: Wakeup,
    ) -> (Kqueue, Arc<AtomicU64>, Arc<Mutex<ProbeLog>>) {
        let p = Probe::new(TimerStorage::with_wakeup(wakeup));
        let (w, l) = (p.wakes.clone(), p.log.clone());
        let kq = Kqueue::builder(backend)
            .and_then(|b| b.storage(Box::new(p)).build())
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        (kq, w, l)
    }

    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
    }
}

/// The knote's subscription, `(sfflags, sdata)`, as [`ProbeLog`] keeps it.
fn subscription(cx: &Context<'_>, kn: KnoteId) -> (u32, i64) {
    let k = cx.knote(kn);
    (k.sfflags(), k.sdata())
}

impl Storage for Probe {
    fn filters(&self) -> &'static [Filter] {
        self.inner.filters()
    }
    fn attach(&mut self, cx: &mut Context<'_>, kn: KnoteId) -> Result<(), Errno> {
        let r = self.inner.attach(cx, kn);
        if r.is_ok() {
            let sub = subscription(cx, kn);
            self.log.lock().unwrap().after_attach.push(sub);
        }
        r
    }
    fn modify(&mut self, cx: &mut Context<'_>, kn: KnoteId, ch: &Kevent) -> Result<(), Errno> {
        let r = self.inner.modify(cx, kn, ch);
        let sub = subscription(cx, kn);
        self.log.lock().unwrap().after_modify.push(sub);
        r
    }
    fn detach(&mut self, cx: &mut Context<'_>, kn: KnoteId) {
        self.inner.detach(cx, kn)
    }
    fn event(&mut self, cx: &mut Context<'_>, kn: KnoteId, out: &mut Kevent) -> bool {
        self.inner.event(cx, kn, out)
    }
    fn clear(&mut self, cx: &mut Context<'_>, kn: KnoteId) {
        self.inner.clear(cx, kn)
    }
    fn os_event(&mut self, cx: &mut Context<'_>, payload: u64, ready: Readiness) {
        self.wake();
        self.inner.os_event(cx, payload, ready)
    }
    fn completion(&mut self, cx: &mut Context<'_>, payload: u64, res: i32, flags: u32) {
        // A cancelled timeout's completion is no wake-up of the thread
        // for a deadline; count only expiries.
        if res != -libc::ECANCELED {
            self.wake();
        }
        self.inner.completion(cx, payload, res, flags)
    }
    fn deadline(&self) -> Option<Instant> {
        self.inner.deadline()
    }
    fn expire(&mut self, cx: &mut Context<'_>, now: Instant) {
        self.wake();
        self.inner.expire(cx, now)
    }
    fn timed(&self) -> bool {
        self.inner.timed()
    }
    fn resolve(&mut self, cx: &mut Context<'_>, ch: &Kevent) -> Result<(), Errno> {
        self.inner.resolve(cx, ch)
    }
}
