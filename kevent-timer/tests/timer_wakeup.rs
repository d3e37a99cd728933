//! How the timer storage wakes the waiting thread: one wake-up per tick at
//! the exact deadline, sub-millisecond timers not rounded to the wheel's
//! millisecond, the waiting thread's timer slack, and every wake-up
//! mechanism on every backend it runs on.

mod util;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kevent_core::{note, Flags};
use kevent_timer::storage::Wakeup;
use util::*;

#[test]
fn one_wakeup_per_tick_at_the_exact_deadline() {
    // A 1 kHz timer whose grid is not aligned to the wheel's millisecond
    // (added 0.25/0.5/0.75 ms after the queue was made). Woken at the
    // wheel slot's start and again at the deadline it would cost two
    // wake-ups per tick; woken at the exact deadline, one.
    for (name, b, w) in wakeups() {
        for phase_us in [250, 500, 750] {
            let (kq, wakes, _) = Probe::queue(b, w);
            std::thread::sleep(Duration::from_micros(phase_us));
            change(&kq, add(1, Flags::empty(), note::USECONDS, 1000));
            let before = wakes.load(Ordering::Relaxed);
            let (mut events, mut ticks) = (0u64, 0i64);
            while ticks < 200 {
                ticks += expect_timer(&kq, 1, Duration::from_secs(1)).data;
                events += 1;
            }
            let n = wakes.load(Ordering::Relaxed) - before;
            assert!(n >= events, "{name}: {n} wake-ups for {events} events");
            assert!(
                n <= events + events / 4 + 5,
                "{name} phase {phase_us} µs: {n} wake-ups for {events} events ({ticks} ticks)"
            );
        }
    }
}

#[test]
fn sub_millisecond_oneshot_is_not_rounded_to_the_millisecond() {
    // 50 runs of a 300 µs one-shot: never before 300 µs (strict), median
    // under 1 ms (loose; a deadline rounded up to the wheel's millisecond,
    // or a wake-up at the next slot's start, would sit at 1 ms or more).
    for (name, b, w) in wakeups() {
        let kq = queue(b, w);
        let want = Duration::from_micros(300);
        let mut took: Vec<Duration> = (0..50)
            .map(|_| {
                let t0 = Instant::now();
                change(&kq, add(1, Flags::ONESHOT, note::USECONDS, 300));
                expect_timer(&kq, 1, Duration::from_secs(1));
                let d = t0.elapsed();
                assert!(d >= want, "{name}: fired after {d:?}");
                d
            })
            .collect();
        took.sort();
        let median = took[took.len() / 2];
        assert!(
            median < Duration::from_millis(1),
            "{name}: median {median:?} (min {:?}, max {:?})",
            took[0],
            took[took.len() - 1]
        );
    }
}

#[test]
fn waiting_thread_gets_the_minimum_timer_slack() {
    // The timer is armed on one thread; a fresh thread (default slack,
    // 50 µs here, inherited from this test's thread, which never touches
    // the queue) that only waits in kevent() and gets the timer's event
    // has its slack at 1 ns afterwards.
    for (name, b, w) in wakeups() {
        let kq = Arc::new(queue(b, w));
        {
            let kq = kq.clone();
            std::thread::spawn(move || change(&kq, add(1, Flags::ONESHOT, 0, 20)))
                .join()
                .unwrap();
        }
        let waiter = {
            let kq = kq.clone();
            std::thread::spawn(move || {
                let before = timer_slack_ns();
                let ev = wait_one(&kq, Duration::from_secs(2));
                (before, ev, timer_slack_ns())
            })
        };
        let (before, ev, after) = waiter.join().unwrap();
        assert_eq!(ev.map(|e| e.ident), Some(1), "{name}");
        assert_ne!(
            before, 1,
            "{name}: the thread started at the minimum already"
        );
        assert_eq!(after, 1, "{name}: slack {after} ns after waiting");
    }
}

#[test]
fn arming_thread_gets_the_minimum_timer_slack() {
    for (name, b, w) in wakeups() {
        let (before, after) = std::thread::spawn(move || {
            let before = timer_slack_ns();
            let kq = queue(b, w);
            change(&kq, add(1, Flags::empty(), 0, 1000));
            (before, timer_slack_ns())
        })
        .join()
        .unwrap();
        assert_ne!(before, 1, "{name}");
        assert_eq!(after, 1, "{name}");
    }
}

#[test]
fn a_queue_without_timers_leaves_the_slack_alone() {
    for b in backends() {
        let r = std::thread::spawn(move || {
            let before = timer_slack_ns();
            let kq = queue(b, Wakeup::Timerfd);
            assert!(wait_one(&kq, Duration::from_millis(2)).is_none());
            (before, timer_slack_ns())
        })
        .join()
        .unwrap();
        assert_eq!(r.0, r.1, "{b:?}");
    }
}

#[test]
fn every_mechanism_fires_in_order_and_rearms() {
    // Earliest-first after arming out of order, a re-ADD that moves the
    // earliest later (the wake-up must follow), and a delete of the
    // earliest.
    for (name, b, w) in wakeups() {
        let kq = queue(b, w);
        let t0 = Instant::now();
        change(&kq, add(3, Flags::ONESHOT, 0, 30));
        change(&kq, add(1, Flags::ONESHOT, 0, 10));
        change(&kq, add(2, Flags::ONESHOT, 0, 20));
        change(&kq, add(9, Flags::ONESHOT, 0, 5));
        change(&kq, ctl(9, Flags::DELETE));
        for (i, ms) in [(1u64, 10u64), (2, 20), (3, 30)] {
            let ev = expect_timer(&kq, i, Duration::from_secs(1));
            assert_eq!(ev.data, 1, "{name}");
            assert!(
                t0.elapsed() >= Duration::from_millis(ms),
                "{name}: {i} early"
            );
        }
        // Move the only timer later: no wake-up at its old time delivers.
        change(&kq, add(4, Flags::empty(), 0, 5));
        let t1 = Instant::now();
        change(&kq, add(4, Flags::empty(), 0, 40));
        assert!(wait_one(&kq, Duration::from_millis(20)).is_none(), "{name}");
        expect_timer(&kq, 4, Duration::from_secs(1));
        assert!(t1.elapsed() >= Duration::from_millis(40), "{name}");
        change(&kq, ctl(4, Flags::DELETE));
        assert!(wait_one(&kq, Duration::from_millis(50)).is_none(), "{name}");
    }
}

#[test]
fn a_timer_added_from_another_thread_wakes_the_waiter() {
    // One thread blocks in kevent() with no timer armed; another adds a
    // 20 ms timer. The timerfd and the io_uring timeout re-arm under the
    // blocked thread (QueueTimeout cannot, as documented).
    for (name, b, w) in wakeups() {
        if w == Wakeup::QueueTimeout {
            continue;
        }
        let kq = Arc::new(queue(b, w));
        let adder = {
            let kq = kq.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let t = Instant::now();
                change(&kq, add(1, Flags::ONESHOT, 0, 20));
                t
            })
        };
        let ev = wait_one(&kq, Duration::from_secs(5));
        let added = adder.join().unwrap();
        let ev = ev.unwrap_or_else(|| panic!("{name}: no event"));
        assert_eq!(ev.ident, 1, "{name}");
        // Measured after the wait returned: at least the timer's 20 ms.
        let after = added.elapsed();
        assert!(after >= Duration::from_millis(20), "{name}: {after:?}");
        assert!(
            after < Duration::from_secs(1),
            "{name}: woke {after:?} after the ADD"
        );
    }
}
