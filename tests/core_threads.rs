//! Several threads waiting on one queue: exactly-once delivery of
//! ONESHOT/CLEAR/DISPATCH events, no lost USER triggers, and `close()`
//! waking blocked waiters.
//!
//! Waiters block with no timeout, so a lost wake-up shows up as a stall
//! (caught by the producer's deadline), not hidden by a periodic timeout.

#[macro_use]
mod util;

use kevent::{note, Backend, Filter, Flags, Kevent, Kqueue};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use util::*;

backends_complete_test!();

const U: Filter = Filter::User;
const WAITERS: usize = 4;
const TRIGGERS: usize = if cfg!(miri) { 1000 } else { 100_000 };
const IDENTS: usize = 64;
/// Upper bound for a whole run; generous for debug builds on 2 busy cores.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Closes the queue when dropped (also on panic), so blocked waiters end.
struct CloseOnDrop(Arc<Kqueue>);
impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Oneshot,
    Clear,
    Dispatch,
}

/// `WAITERS` threads collect USER events from one queue while this thread
/// triggers `TRIGGERS` times over `IDENTS` knotes, never re-triggering an
/// ident before its last trigger was collected. Every trigger must be
/// delivered exactly once.
fn exactly_once(b: Backend, mode: Mode) {
    let kq = Arc::new(kq(b));
    let _close = CloseOnDrop(kq.clone());
    let pending: Arc<Vec<AtomicBool>> =
        Arc::new((0..IDENTS).map(|_| AtomicBool::new(false)).collect());
    let delivered = Arc::new(AtomicUsize::new(0));
    let dups = Arc::new(AtomicUsize::new(0));
    let per_thread: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WAITERS).map(|_| AtomicUsize::new(0)).collect());
    let mode_flags = match mode {
        Mode::Oneshot => Flags::ONESHOT,
        Mode::Clear => Flags::CLEAR,
        Mode::Dispatch => Flags::DISPATCH,
    };
    if !matches!(mode, Mode::Oneshot) {
        let adds: Vec<_> = (0..IDENTS as u64)
            .map(|i| ev(i, U, Flags::ADD | mode_flags, 0, 0, 0))
            .collect();
        change(&kq, &adds);
    }
    let waiters: Vec<JoinHandle<()>> = (0..WAITERS)
        .map(|t| {
            let (kq, pending, delivered, dups, per_thread) = (
                kq.clone(),
                pending.clone(),
                delivered.clone(),
                dups.clone(),
                per_thread.clone(),
            );
            std::thread::spawn(move || {
                let mut out = [Kevent::default(); 16];
                loop {
                    let n = match kq.kevent(&[], &mut out, None) {
                        Ok(n) => n,
                        Err(e) => {
                            assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
                            return;
                        }
                    };
                    for e in &out[..n] {
                        assert_eq!(e.filter, U, "{e:?}");
                        if pending[e.ident as usize].swap(false, Ordering::AcqRel) {
                            delivered.fetch_add(1, Ordering::Relaxed);
                            per_thread[t].fetch_add(1, Ordering::Relaxed);
                        } else {
                            dups.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    let start = Instant::now();
    let mut sent = 0;
    let mut changes = Vec::with_capacity(IDENTS);
    while sent < TRIGGERS {
        for i in 0..IDENTS {
            if sent == TRIGGERS {
                break;
            }
            if !pending[i].load(Ordering::Acquire) {
                pending[i].store(true, Ordering::Release);
                changes.push(match mode {
                    Mode::Oneshot => ev(
                        i as u64,
                        U,
                        Flags::ADD | Flags::ONESHOT,
                        note::TRIGGER,
                        0,
                        0,
                    ),
                    Mode::Clear => ev(i as u64, U, Flags::empty(), note::TRIGGER, 0, 0),
                    Mode::Dispatch => ev(i as u64, U, Flags::ENABLE, note::TRIGGER, 0, 0),
                });
                sent += 1;
            }
        }
        if changes.is_empty() {
            assert!(
                start.elapsed() < RUN_LIMIT,
                "stalled: {} of {sent} delivered",
                delivered.load(Ordering::Relaxed)
            );
            std::thread::yield_now();
        } else {
            change(&kq, &changes);
            changes.clear();
        }
    }
    while delivered.load(Ordering::Relaxed) < TRIGGERS {
        assert!(
            start.elapsed() < RUN_LIMIT,
            "stalled: {} of {TRIGGERS} delivered",
            delivered.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Give a duplicate the chance to show up.
    std::thread::sleep(Duration::from_millis(50));
    kq.close();
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(
        dups.load(Ordering::Relaxed),
        0,
        "{mode:?}: duplicate deliveries"
    );
    assert_eq!(delivered.load(Ordering::Relaxed), TRIGGERS, "{mode:?}");
    let counts: Vec<usize> = per_thread
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), TRIGGERS, "{counts:?}");
}

backend_test!(exactly_once_oneshot, |b: Backend| exactly_once(
    b,
    Mode::Oneshot
));
backend_test!(exactly_once_clear, |b: Backend| exactly_once(
    b,
    Mode::Clear
));
backend_test!(exactly_once_dispatch, |b: Backend| exactly_once(
    b,
    Mode::Dispatch
));

// Producers each own a CLEAR USER knote and trigger it with an increasing
// `data`, waiting each time until some waiter has seen that value; a lost
// trigger (or a lost wake-up) stalls a producer past its deadline.
backend_test!(stress_no_lost_user_trigger, |b: Backend| {
    const PRODUCERS: usize = 4;
    const ROUNDS: i64 = if cfg!(miri) { 50 } else { 5_000 };
    const STALL: Duration = Duration::from_secs(10);
    let kq = Arc::new(kq(b));
    let _close = CloseOnDrop(kq.clone());
    let seen: Arc<Vec<AtomicI64>> = Arc::new((0..PRODUCERS).map(|_| AtomicI64::new(0)).collect());
    let adds: Vec<_> = (0..PRODUCERS as u64)
        .map(|p| ev(p, U, Flags::ADD | Flags::CLEAR, 0, 0, 0))
        .collect();
    change(&kq, &adds);
    let waiters: Vec<JoinHandle<usize>> = (0..3)
        .map(|_| {
            let (kq, seen) = (kq.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut out = [Kevent::default(); 4];
                let mut got = 0;
                loop {
                    let n = match kq.kevent(&[], &mut out, None) {
                        Ok(n) => n,
                        Err(e) => {
                            assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
                            return got;
                        }
                    };
                    for e in &out[..n] {
                        let prev = seen[e.ident as usize].fetch_max(e.data, Ordering::AcqRel);
                        // Each trigger waits for the previous one to be
                        // seen, so deliveries of a knote count up by one:
                        // a duplicate or a merged (lost) trigger breaks it.
                        assert_eq!(prev, e.data - 1, "{e:?}");
                        got += 1;
                    }
                }
            })
        })
        .collect();
    let producers: Vec<JoinHandle<()>> = (0..PRODUCERS)
        .map(|p| {
            let (kq, seen) = (kq.clone(), seen.clone());
            std::thread::spawn(move || {
                for seq in 1..=ROUNDS {
                    change(
                        &kq,
                        &[ev(p as u64, U, Flags::empty(), note::TRIGGER, seq, 0)],
                    );
                    let t = Instant::now();
                    while seen[p].load(Ordering::Acquire) < seq {
                        assert!(t.elapsed() < STALL, "producer {p}: trigger {seq} lost");
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    kq.close();
    let got: usize = waiters.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(got, PRODUCERS * ROUNDS as usize);
    for s in seen.iter() {
        assert_eq!(s.load(Ordering::Relaxed), ROUNDS);
    }
});

backend_test!(close_wakes_blocked_waiters, |b: Backend| {
    let kq = Arc::new(kq(b));
    change(&kq, &[ev(1, U, Flags::ADD, 0, 0, 0)]);
    let (tx, rx) = mpsc::channel();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (kq, tx) = (kq.clone(), tx.clone());
            std::thread::spawn(move || {
                let mut out = [Kevent::default(); 4];
                let r = kq.kevent(&[], &mut out, None);
                tx.send(r.map_err(|e| e.raw_os_error())).unwrap();
            })
        })
        .collect();
    // Let them block (one in the backend, the others as followers).
    std::thread::sleep(Duration::from_millis(100));
    assert!(rx.try_recv().is_err(), "a waiter returned before close");
    let t = Instant::now();
    kq.close();
    for _ in 0..3 {
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("close() left a waiter blocked");
        assert_eq!(r, Err(Some(libc::EBADF)));
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    for w in waiters {
        w.join().unwrap();
    }
    // Closed for good.
    let mut out = [Kevent::default(); 1];
    assert_errno(kq.kevent(&[], &mut out, Some(Duration::ZERO)), libc::EBADF);
    assert_errno(
        try_change(&kq, &[ev(2, U, Flags::ADD, 0, 0, 0)]),
        libc::EBADF,
    );
});

backend_test!(trigger_wakes_one_of_many_waiters, |b: Backend| {
    let kq = Arc::new(kq(b));
    let _close = CloseOnDrop(kq.clone());
    change(&kq, &[ev(1, U, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    let (tx, rx) = mpsc::channel();
    for _ in 0..3 {
        let (kq, tx) = (kq.clone(), tx.clone());
        std::thread::spawn(move || {
            let mut out = [Kevent::default(); 4];
            while let Ok(n) = kq.kevent(&[], &mut out, None) {
                for e in &out[..n] {
                    let _ = tx.send(e.ident);
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..20 {
        kq.trigger(1).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(3)),
            Ok(1),
            "trigger not delivered"
        );
        // CLEAR: exactly one of the waiters got it.
        assert!(
            rx.recv_timeout(Duration::from_millis(20)).is_err(),
            "delivered twice"
        );
    }
});
