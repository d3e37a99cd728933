//! EVFILT_TIMER behaviour through a kevent-core queue with the timer
//! storage installed. Lower time bounds are strict (never early); upper
//! bounds are loose (a shared 2-core machine).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kevent_core::{note, Backend, Filter, Flags, Kevent, Kqueue};
use kevent_timer::storage::{timer, POLICY_CATCHUP, POLICY_DELAY, POLICY_SKIP};
use kevent_timer::{MissedTickPolicy, TimerStorage};

/// One queue with the timer storage per backend: epoll and io_uring. A
/// backend that cannot be created fails the test — never a silent skip;
/// on a kernel without io_uring skip it explicitly with
/// `KEVENT_TEST_SKIP=IoUring` (said on stderr).
fn queues() -> Vec<Kqueue> {
    let skip = std::env::var("KEVENT_TEST_SKIP").unwrap_or_default();
    let mut v = Vec::new();
    for backend in [Backend::Epoll, Backend::IoUring] {
        if skip.split(',').any(|n| n.trim() == format!("{backend:?}")) {
            eprintln!("SKIPPED on {backend:?}: KEVENT_TEST_SKIP");
            continue;
        }
        match Kqueue::builder(backend)
            .and_then(|b| b.storage(Box::new(TimerStorage::new())).build())
        {
            Ok(kq) => v.push(kq),
            Err(e) => panic!("{backend:?}: {e}"),
        }
    }
    v
}

fn add(ident: u64, flags: Flags, fflags: u32, data: i64) -> Kevent {
    Kevent::new(
        ident,
        Filter::Timer,
        Flags::ADD | flags,
        fflags,
        data,
        ident,
    )
}

#[track_caller]
fn change(kq: &Kqueue, ch: Kevent) {
    kq.kevent(&[ch], &mut [], None).unwrap();
}

/// Waits up to `timeout` for one timer event.
#[track_caller]
fn wait_one(kq: &Kqueue, timeout: Duration) -> Option<Kevent> {
    let mut out = [Kevent::default(); 1];
    let n = kq.kevent(&[], &mut out, Some(timeout)).unwrap();
    (n == 1).then_some(out[0])
}

#[track_caller]
fn expect_timer(kq: &Kqueue, ident: u64, timeout: Duration) -> Kevent {
    let ev = wait_one(kq, timeout)
        .unwrap_or_else(|| panic!("timer {ident} did not fire in {timeout:?}"));
    assert_eq!((ev.ident, ev.filter), (ident, Filter::Timer), "{ev:?}");
    assert!(ev.flags.contains(Flags::CLEAR), "implicit CLEAR: {ev:?}");
    ev
}

#[test]
fn every_unit_fires_no_earlier_than_asked() {
    for kq in queues() {
        for (fflags, data, want) in [
            (0, 20, Duration::from_millis(20)),
            (note::MSECONDS, 15, Duration::from_millis(15)),
            (note::USECONDS, 7_500, Duration::from_micros(7_500)),
            (note::NSECONDS, 3_250_000, Duration::from_nanos(3_250_000)),
            (note::USECONDS, 300, Duration::from_micros(300)),
            (note::NSECONDS, 50_000, Duration::from_micros(50)),
            (note::SECONDS, 1, Duration::from_secs(1)),
        ] {
            let t0 = Instant::now();
            change(&kq, add(1, Flags::ONESHOT, fflags, data));
            let ev = expect_timer(&kq, 1, want + Duration::from_secs(2));
            let took = t0.elapsed();
            assert!(
                took >= want,
                "fflags {fflags:#x} data {data}: fired after {took:?}, asked {want:?}"
            );
            assert_eq!(ev.data, 1);
        }
    }
}

#[test]
fn abstime_in_the_past_fires_at_once_and_in_the_future_on_time() {
    for kq in queues() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let t0 = Instant::now();
        change(
            &kq,
            add(
                1,
                Flags::empty(),
                note::ABSTIME | note::SECONDS,
                now.as_secs() as i64 - 10,
            ),
        );
        let ev = expect_timer(&kq, 1, Duration::from_secs(1));
        assert_eq!(ev.data, 1);
        assert!(t0.elapsed() < Duration::from_millis(500));

        let at = now + Duration::from_millis(40);
        let t0 = Instant::now();
        change(
            &kq,
            add(
                2,
                Flags::empty(),
                note::ABSTIME | note::USECONDS,
                at.as_micros() as i64,
            ),
        );
        expect_timer(&kq, 2, Duration::from_secs(2));
        let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(real >= at, "absolute timer early by {:?}", at - real);
        assert!(t0.elapsed() >= Duration::from_millis(30));
        // ABSTIME is one-shot: nothing more.
        assert!(wait_one(&kq, Duration::from_millis(60)).is_none());
    }
}

#[test]
fn oneshot_fires_once_and_is_gone() {
    for kq in queues() {
        change(&kq, add(9, Flags::ONESHOT, 0, 5));
        expect_timer(&kq, 9, Duration::from_secs(2));
        assert!(wait_one(&kq, Duration::from_millis(30)).is_none());
        let err = kq
            .kevent(
                &[Kevent::new(9, Filter::Timer, Flags::DELETE, 0, 0, 0)],
                &mut [],
                None,
            )
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}

#[test]
fn periodic_merges_expirations_into_data() {
    for kq in queues() {
        let t0 = Instant::now();
        change(&kq, add(3, Flags::empty(), 0, 2));
        std::thread::sleep(Duration::from_millis(30));
        let ev = expect_timer(&kq, 3, Duration::from_secs(1));
        let max = (t0.elapsed().as_millis() / 2) as i64;
        assert!(
            ev.data >= 14 && ev.data <= max,
            "data {} (max {max})",
            ev.data
        );
        // The grid goes on: the next delivery counts the ticks since.
        let t1 = Instant::now();
        let ev = expect_timer(&kq, 3, Duration::from_secs(1));
        assert!(ev.data >= 1);
        assert!(t1.elapsed() <= Duration::from_millis(500));
    }
}

#[test]
fn no_drift_over_many_periods() {
    // 200 periods of 1 ms: the counts add up to the time passed, whatever
    // the wake-up latency (absolute grid, not accumulated sleeps).
    for kq in queues() {
        let t0 = Instant::now();
        change(&kq, add(4, Flags::empty(), note::USECONDS, 1000));
        let mut total = 0;
        while total < 200 {
            total += expect_timer(&kq, 4, Duration::from_secs(1)).data;
        }
        let elapsed = t0.elapsed();
        assert!(
            elapsed >= Duration::from_millis(total as u64),
            "{total} ticks in {elapsed:?}"
        );
    }
}

#[track_caller]
fn stall(kq: &Kqueue, ident: u64, policy_fflags: u32) -> Kevent {
    change(
        kq,
        add(ident, Flags::empty(), note::MSECONDS | policy_fflags, 2),
    );
    expect_timer(kq, ident, Duration::from_secs(1));
    // The consumer stalls for ~10 periods.
    std::thread::sleep(Duration::from_millis(21));
    expect_timer(kq, ident, Duration::from_secs(1))
}

#[test]
fn policy_merge_counts_missed_ticks() {
    for kq in queues() {
        let ev = stall(&kq, 1, 0);
        assert!(ev.data >= 10, "{ev:?}");
    }
}

#[test]
fn policy_catchup_delivers_each_missed_tick() {
    for kq in queues() {
        let t0 = Instant::now();
        let ev = stall(&kq, 1, POLICY_CATCHUP);
        assert_eq!(ev.data, 1);
        // The backlog comes back to back, one event per call, data 1 each.
        let mut backlog = 0;
        while let Some(ev) = wait_one(&kq, Duration::ZERO) {
            assert_eq!((ev.ident, ev.data), (1, 1));
            backlog += 1;
            if backlog > 1000 {
                break;
            }
        }
        assert!(backlog >= 9, "only {backlog} caught-up ticks");
        // Never more ticks than periods passed since the timer was added.
        let periods = t0.elapsed().as_millis() / 2;
        assert!(
            backlog + 2 <= periods + 1,
            "{backlog} ticks in {periods} periods"
        );
    }
}

#[test]
fn policy_skip_drops_missed_ticks_and_keeps_the_grid() {
    for kq in queues() {
        let ev = stall(&kq, 1, POLICY_SKIP);
        assert_eq!(ev.data, 1);
        let ev = expect_timer(&kq, 1, Duration::from_secs(1));
        assert_eq!(ev.data, 1);
    }
}

#[test]
fn policy_delay_restarts_from_the_late_tick() {
    for kq in queues() {
        let ev = stall(&kq, 1, POLICY_DELAY);
        assert_eq!(ev.data, 1);
        let t0 = Instant::now();
        let ev = expect_timer(&kq, 1, Duration::from_secs(1));
        assert_eq!(ev.data, 1);
        // A full period after the late delivery (minus the time between the
        // late tick's expiry and t0), never immediately.
        assert!(
            t0.elapsed() >= Duration::from_micros(1500),
            "{:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn re_add_restarts_and_discards_undelivered() {
    for kq in queues() {
        change(&kq, add(5, Flags::empty(), 0, 1));
        std::thread::sleep(Duration::from_millis(10));
        // Pending expirations are discarded; the new period is 200 ms.
        let t0 = Instant::now();
        change(&kq, add(5, Flags::empty(), 0, 200));
        assert!(wait_one(&kq, Duration::from_millis(50)).is_none());
        let ev = expect_timer(&kq, 5, Duration::from_secs(2));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(ev.data, 1);
        // And the other way: a long timer made short.
        change(&kq, add(6, Flags::empty(), 0, 10_000));
        let t0 = Instant::now();
        change(&kq, add(6, Flags::ONESHOT, 0, 5));
        expect_timer(&kq, 6, Duration::from_secs(2));
        assert!(t0.elapsed() >= Duration::from_millis(5));
    }
}

#[test]
fn delete_while_pending() {
    for kq in queues() {
        change(&kq, add(7, Flags::empty(), 0, 1));
        std::thread::sleep(Duration::from_millis(5));
        // Let it expire into the ready list without collecting it.
        kq.kevent(&[], &mut [], Some(Duration::ZERO)).unwrap();
        change(&kq, Kevent::new(7, Filter::Timer, Flags::DELETE, 0, 0, 0));
        assert!(wait_one(&kq, Duration::from_millis(20)).is_none());
    }
}

#[test]
fn disable_keeps_counting_enable_delivers() {
    for kq in queues() {
        change(&kq, add(8, Flags::empty(), 0, 2));
        change(&kq, Kevent::new(8, Filter::Timer, Flags::DISABLE, 0, 0, 8));
        assert!(wait_one(&kq, Duration::from_millis(20)).is_none());
        change(&kq, Kevent::new(8, Filter::Timer, Flags::ENABLE, 0, 0, 8));
        let ev = expect_timer(&kq, 8, Duration::from_secs(1));
        assert!(ev.data >= 5, "{ev:?}");
    }
}

#[test]
fn dispatch_disables_after_each_delivery() {
    for kq in queues() {
        change(&kq, add(9, Flags::DISPATCH, 0, 1));
        expect_timer(&kq, 9, Duration::from_secs(1));
        assert!(wait_one(&kq, Duration::from_millis(20)).is_none());
        change(
            &kq,
            Kevent::new(9, Filter::Timer, Flags::ENABLE | Flags::DISPATCH, 0, 0, 9),
        );
        let ev = expect_timer(&kq, 9, Duration::from_secs(1));
        assert!(ev.data >= 10, "expirations while disabled are kept: {ev:?}");
    }
}

#[test]
fn bad_changes_are_einval() {
    for kq in queues() {
        for ch in [
            add(1, Flags::empty(), 0, -1),
            add(1, Flags::empty(), note::SECONDS | note::NSECONDS, 1),
            add(1, Flags::empty(), 0x0700_0000, 1),
        ] {
            let mut out = [Kevent::default(); 2];
            let n = kq.kevent(&[ch], &mut out, Some(Duration::ZERO)).unwrap();
            assert_eq!(n, 1, "{ch:?}");
            assert!(out[0].flags.contains(Flags::ERROR));
            assert_eq!(out[0].data, libc::EINVAL as i64);
        }
    }
}

#[test]
fn rust_api_change_builder() {
    for kq in queues() {
        let t0 = Instant::now();
        change(
            &kq,
            timer(11, Duration::from_micros(2500), MissedTickPolicy::Skip, 77),
        );
        let ev = expect_timer(&kq, 11, Duration::from_secs(1));
        assert!(t0.elapsed() >= Duration::from_micros(2500));
        assert_eq!(ev.udata, 77);
    }
}

#[test]
fn hundred_thousand_timers_fire_in_order() {
    const N: u64 = 100_000;
    for kq in queues() {
        let base =
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_millis(300);
        // Deadlines 10 µs apart (1 s in all), added in a scrambled order.
        let changes: Vec<Kevent> = (0..N)
            .map(|i| (i * 7919) % N)
            .map(|i| {
                let at = base + Duration::from_micros(10 * i);
                Kevent::new(
                    i,
                    Filter::Timer,
                    Flags::ADD | Flags::ONESHOT,
                    note::ABSTIME | note::NSECONDS,
                    at.as_nanos() as i64,
                    i,
                )
            })
            .collect();
        for chunk in changes.chunks(4096) {
            kq.kevent(chunk, &mut [], None).unwrap();
        }
        let mut out = vec![Kevent::default(); 1024];
        let mut next = 0u64;
        let t0 = Instant::now();
        while next < N && t0.elapsed() < Duration::from_secs(20) {
            let n = kq
                .kevent(&[], &mut out, Some(Duration::from_secs(1)))
                .unwrap();
            let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            for ev in &out[..n] {
                assert_eq!(ev.udata, next, "out of order");
                assert!(real >= base + Duration::from_micros(10 * ev.udata), "early");
                next += 1;
            }
        }
        assert_eq!(next, N);
    }
}

#[test]
fn readd_keeps_the_mode_the_knote_was_created_with() {
    // FreeBSD fixes a knote's mode at creation: a re-ADD carrying ONESHOT
    // restarts a periodic timer, still periodic (it must not fire once and
    // then sit registered and dead).
    for kq in queues() {
        change(&kq, add(7, Flags::empty(), note::MSECONDS, 20));
        change(&kq, add(7, Flags::ONESHOT, note::MSECONDS, 10));
        expect_timer(&kq, 7, Duration::from_secs(2));
        expect_timer(&kq, 7, Duration::from_secs(2));
    }
}

#[test]
fn catchup_counts_a_long_stall_at_once() {
    // 1 µs period, 100 ms stall: 100k missed ticks, counted in O(1) (each
    // then delivered as its own event; collect a few and delete).
    for kq in queues() {
        change(
            &kq,
            add(8, Flags::empty(), note::USECONDS | POLICY_CATCHUP, 1),
        );
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        for _ in 0..3 {
            let ev = expect_timer(&kq, 8, Duration::from_secs(2));
            assert_eq!(ev.data, 1, "{ev:?}");
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        change(&kq, Kevent::new(8, Filter::Timer, Flags::DELETE, 0, 0, 0));
    }
}
