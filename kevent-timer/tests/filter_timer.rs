//! EVFILT_TIMER behaviour through a kevent-core queue with the timer
//! storage installed, on both backends. Lower time bounds are strict
//! (never early); upper bounds are loose (a shared 2-core machine).

mod util;

use std::time::{Duration, Instant};

use kevent_core::{note, Filter, Flags, Kevent, Kqueue};
use kevent_timer::storage::{
    catchup_cap_fflags, catchup_timer, timer, POLICY_CATCHUP, POLICY_DELAY, POLICY_SKIP,
};
use kevent_timer::{MissedTickPolicy, DEFAULT_CATCHUP_CAP};
use util::*;

const MS: Duration = Duration::from_millis(1);

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
        let now = wall();
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
        let real = wall();
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
            .kevent(&[ctl(9, Flags::DELETE)], &mut [], None)
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
    // 300 periods of 1 ms: the counts add up to the time passed, whatever
    // the wake-up latency (absolute grid, not accumulated sleeps). Both
    // ways: never more ticks than periods passed (never early), and no
    // tick missing — a timer re-armed relative to each wake loses its
    // lateness every period (~50 µs here: 15 ticks over 300) and fails
    // the second bound.
    for (name, b, w) in wakeups() {
        let kq = queue(b, w);
        let period = Duration::from_micros(1000);
        let t0 = Instant::now();
        change(&kq, add(4, Flags::empty(), note::USECONDS, 1000));
        let mut total = 0u64;
        let mut last = Duration::ZERO;
        while total < 300 {
            total += expect_timer(&kq, 4, Duration::from_secs(1)).data as u64;
            last = t0.elapsed();
        }
        assert!(
            last >= period * total as u32,
            "{name}: {total} ticks in {last:?}: early"
        );
        // Every deadline up to the last event was counted: allow 1 ms
        // between the expiry round and the return, and the one tick that
        // may fall due in it.
        let floor = (last.saturating_sub(MS).as_nanos() / period.as_nanos()) as u64;
        assert!(
            total + 1 >= floor,
            "{name}: {total} ticks in {last:?}: ticks missing (drift)"
        );
    }
}

/// Starts a 2 ms periodic timer under `policy_fflags`, takes its first
/// event, then stalls for ~10 periods and returns the late event.
#[track_caller]
fn stall(kq: &Kqueue, ident: u64, policy_fflags: u32) -> Kevent {
    change(
        kq,
        add(ident, Flags::empty(), note::MSECONDS | policy_fflags, 2),
    );
    expect_timer(kq, ident, Duration::from_secs(1));
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
        let (events, _) = drain(&kq, 1);
        assert!(events.iter().all(|&d| d == 1), "{events:?}");
        let backlog = events.len() as u128;
        assert!(backlog >= 9, "only {backlog} caught-up ticks");
        // Never more ticks than periods passed since the timer was added.
        let periods = t0.elapsed().as_millis() / 2;
        assert!(
            backlog + 2 <= periods + 1,
            "{backlog} ticks in {periods} periods"
        );
    }
}

/// Collects every event ready now: `(events, total data)`.
fn drain(kq: &Kqueue, ident: u64) -> (Vec<i64>, i64) {
    let mut v = Vec::new();
    while let Some(ev) = wait_one(kq, Duration::ZERO) {
        assert_eq!(ev.ident, ident, "{ev:?}");
        v.push(ev.data);
        if v.len() > 100_000 {
            break;
        }
    }
    let sum = v.iter().sum();
    (v, sum)
}

#[test]
fn catchup_cap_merges_the_backlog_beyond_it() {
    // A cap of 4 events through fflags: a stall of >= 15 periods comes back
    // as one event carrying the oldest ticks, then 3 single ticks; the data
    // still adds up to every tick.
    for kq in queues() {
        let t0 = Instant::now();
        change(
            &kq,
            add(
                1,
                Flags::empty(),
                note::MSECONDS | POLICY_CATCHUP | catchup_cap_fflags(4),
                2,
            ),
        );
        let first = expect_timer(&kq, 1, Duration::from_secs(1));
        // A late first wake may have left a backlog: take it, so the stall
        // below starts from nothing pending.
        let (_, settled) = drain(&kq, 1);
        std::thread::sleep(Duration::from_millis(30));
        let t1 = Instant::now();
        let (events, sum) = drain(&kq, 1);
        let periods = (t0.elapsed().as_millis() / 2) as i64;
        assert!(events[0] >= 15 - 3, "merged head {events:?}");
        assert!(
            events[1..].iter().all(|&d| d == 1),
            "singles after the head: {events:?}"
        );
        // The cap, plus at most one per tick that fell due while draining.
        let extra = (t1.elapsed().as_millis() / 2) as usize + 1;
        assert!(events.len() >= 4 && events.len() <= 4 + extra, "{events:?}");
        let total = first.data + settled + sum;
        assert!(total <= periods, "{total} ticks in {periods} periods");
        assert!(total >= 16, "{events:?}");
    }
}

#[test]
fn catchup_default_cap_and_the_rust_builder() {
    // The default cap (100) through the builder with cap 0: a 200 µs timer
    // stalled for 50 ms has >= 250 ticks due.
    for kq in queues() {
        let t0 = Instant::now();
        change(&kq, catchup_timer(2, Duration::from_micros(200), 0, 2));
        let first = expect_timer(&kq, 2, Duration::from_secs(1));
        let (_, settled) = drain(&kq, 2);
        std::thread::sleep(Duration::from_millis(50));
        let (events, sum) = drain(&kq, 2);
        let cap = DEFAULT_CATCHUP_CAP as i64;
        assert!(events[0] >= 250 - (cap - 1), "head {}", events[0]);
        assert!(events.len() as i64 >= cap, "{} events", events.len());
        let periods = (t0.elapsed().as_micros() / 200) as i64;
        let total = first.data + settled + sum;
        assert!(total <= periods, "{total} ticks in {periods} periods");
        // Far fewer events than ticks: the cap bounded the storm.
        assert!(
            (events.len() as i64) < sum,
            "{} events for {sum} ticks",
            events.len()
        );
    }
}

/// A 20 ms timer under `policy_fflags`: the first event, a stall until
/// 70 ms after the ADD (10 ms past grid point 60, 10 ms before 80), the
/// late event and the next one. Returns the late event, the time the call
/// that collected it began (its expiry round ran no earlier), and the next
/// event's arrival, both since just before the ADD.
fn grid_stall(kq: &Kqueue, policy_fflags: u32) -> (Kevent, Duration, Duration) {
    let t0 = Instant::now();
    change(
        kq,
        add(1, Flags::empty(), note::MSECONDS | policy_fflags, 20),
    );
    expect_timer(kq, 1, Duration::from_secs(1));
    let target = Duration::from_millis(70);
    std::thread::sleep(target.saturating_sub(t0.elapsed()));
    let collect_from = t0.elapsed();
    let late = expect_timer(kq, 1, Duration::from_secs(1));
    let next = expect_timer(kq, 1, Duration::from_secs(2));
    assert_eq!(next.data, 1, "{next:?}");
    (late, collect_from, t0.elapsed())
}

#[test]
fn policy_skip_drops_missed_ticks_and_keeps_the_grid() {
    for kq in queues() {
        let (late, from, next_at) = grid_stall(&kq, POLICY_SKIP);
        assert_eq!(late.data, 1, "missed ticks dropped: {late:?}");
        // The next tick is on the original grid (t0 + 20·k): never before
        // the grid point after the late one's expiry round (strict; that
        // round ran no earlier than `from`), and within 7 ms of a grid
        // point (loose). Delay would land a period after the late round,
        // ~10 ms off the grid.
        let grid = Duration::from_millis(20);
        let k = from.as_millis() / 20 + 1;
        assert!(
            next_at >= grid * k as u32,
            "early: {next_at:?} before grid point {k}"
        );
        let phase = Duration::from_nanos((next_at.as_nanos() % grid.as_nanos()) as u64);
        assert!(
            phase < Duration::from_millis(7),
            "off the grid by {phase:?} (late collected from {from:?}, next {next_at:?})"
        );
    }
}

#[test]
fn policy_delay_restarts_from_the_late_tick() {
    for kq in queues() {
        let (late, from, next_at) = grid_stall(&kq, POLICY_DELAY);
        assert_eq!(late.data, 1, "{late:?}");
        // A full period after the late tick's expiry round, which ran no
        // earlier than `from` (strict), not the grid point ~10 ms after it
        // as Skip would; loosely bounded above.
        let gap = next_at - from;
        assert!(gap >= Duration::from_millis(20), "gap {gap:?}: Skip?");
        assert!(gap < Duration::from_millis(500), "gap {gap:?}");
    }
}

#[test]
fn re_add_restarts_and_discards_undelivered() {
    for kq in queues() {
        // Two 1 ms timers; after 10 ms one collect takes the first and
        // leaves the second queued with ~10 expirations in its data.
        change(&kq, add(4, Flags::empty(), 0, 1));
        change(&kq, add(5, Flags::empty(), 0, 1));
        std::thread::sleep(Duration::from_millis(10));
        let first = wait_one(&kq, Duration::ZERO).expect("both due");
        let (taken, pending) = if first.ident == 4 { (4, 5) } else { (5, 4) };
        assert!(first.data >= 9, "{first:?}");
        change(&kq, ctl(taken, Flags::DELETE));
        // Re-ADD the pending one: its expirations are discarded and it
        // restarts with a 200 ms period.
        let t0 = Instant::now();
        change(&kq, add(pending, Flags::empty(), 0, 200));
        assert!(
            wait_one(&kq, Duration::from_millis(50)).is_none(),
            "undelivered expirations survived the re-ADD"
        );
        let ev = expect_timer(&kq, pending, Duration::from_secs(2));
        assert!(t0.elapsed() >= Duration::from_millis(200), "restart time");
        assert_eq!(ev.data, 1);
        change(&kq, ctl(pending, Flags::DELETE));

        // The same with the expirations merged into a disabled knote.
        change(&kq, add(6, Flags::DISABLE, 0, 1));
        std::thread::sleep(Duration::from_millis(10));
        assert!(wait_one(&kq, Duration::ZERO).is_none(), "disabled");
        let t0 = Instant::now();
        change(&kq, add(6, Flags::ENABLE, 0, 100));
        assert!(wait_one(&kq, Duration::from_millis(30)).is_none());
        let ev = expect_timer(&kq, 6, Duration::from_secs(2));
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert_eq!(ev.data, 1);

        // And a long timer made short.
        change(&kq, add(7, Flags::empty(), 0, 10_000));
        let t0 = Instant::now();
        change(&kq, add(7, Flags::ONESHOT, 0, 5));
        expect_timer(&kq, 7, Duration::from_secs(2));
        assert!(t0.elapsed() >= Duration::from_millis(5));
    }
}

#[test]
fn re_add_stores_the_new_subscription() {
    // FreeBSD's filt_timertouch: a re-ADD stores its fflags and data
    // (1 for a periodic 0); a change without ADD leaves them (and the
    // schedule) alone; an invalid re-ADD changes nothing.
    for b in backends() {
        let (kq, _, log) = Probe::queue(b, Default::default());
        change(&kq, add(1, Flags::empty(), note::SECONDS, 100));
        change(&kq, add(1, Flags::empty(), note::USECONDS, 0));
        let t0 = Instant::now();
        change(&kq, add(1, Flags::empty(), note::MSECONDS, 250));
        change(&kq, ctl(1, Flags::DISABLE));
        assert_eq!(
            change_errno(&kq, add(1, Flags::empty(), note::MSECONDS, -5)),
            Some(libc::EINVAL as i64)
        );
        let log = log.lock().unwrap();
        assert_eq!(log.after_attach, [(note::SECONDS, 100)]);
        assert_eq!(
            log.after_modify,
            [
                (note::USECONDS, 1),
                (note::MSECONDS, 250),
                (note::MSECONDS, 250),
                (note::MSECONDS, 250),
            ]
        );
        drop(log);
        // The bad re-ADD left the 250 ms timer running on its schedule.
        change(&kq, ctl(1, Flags::ENABLE));
        let ev = expect_timer(&kq, 1, Duration::from_secs(2));
        assert!(ev.data >= 1, "{ev:?}");
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_millis(1250), "{took:?}");
    }
}

#[test]
fn delete_while_pending() {
    for kq in queues() {
        // Both due; one collect leaves the other queued, then delete it.
        change(&kq, add(7, Flags::empty(), 0, 1));
        change(&kq, add(8, Flags::empty(), 0, 1));
        std::thread::sleep(Duration::from_millis(5));
        let first = wait_one(&kq, Duration::ZERO).expect("both due");
        let (taken, pending) = if first.ident == 7 { (7, 8) } else { (8, 7) };
        change(&kq, ctl(pending, Flags::DELETE));
        change(&kq, ctl(taken, Flags::DELETE));
        assert!(wait_one(&kq, Duration::from_millis(20)).is_none());
        // Gone: a second delete is ENOENT.
        let err = kq
            .kevent(&[ctl(pending, Flags::DELETE)], &mut [], None)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}

#[test]
fn disable_keeps_counting_enable_delivers() {
    for kq in queues() {
        change(&kq, add(8, Flags::empty(), 0, 2));
        change(&kq, ctl(8, Flags::DISABLE));
        assert!(wait_one(&kq, Duration::from_millis(20)).is_none());
        change(&kq, ctl(8, Flags::ENABLE));
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
        change(&kq, ctl(9, Flags::ENABLE | Flags::DISPATCH));
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
            add(1, Flags::empty(), 0x0000_0020, 1),
            add(1, Flags::empty(), catchup_cap_fflags(5), 1),
        ] {
            assert_eq!(change_errno(&kq, ch), Some(libc::EINVAL as i64), "{ch:?}");
        }
        // Nothing was registered.
        assert!(kq.kevent(&[ctl(1, Flags::DELETE)], &mut [], None).is_err());
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
        let base = wall() + Duration::from_millis(300);
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
            let real = wall();
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
fn equal_deadlines_fire_in_filing_order() {
    // Equal absolute times map to one deadline; timers due at the same
    // deadline fire in the order they were armed, whatever their idents.
    for kq in queues() {
        let at = (wall() + Duration::from_millis(20)).as_nanos() as i64;
        let idents = [50u64, 3, 41, 7, 12, 99, 1, 64, 23, 8];
        let changes: Vec<Kevent> = idents
            .iter()
            .map(|&i| add(i, Flags::ONESHOT, note::ABSTIME | note::NSECONDS, at))
            .collect();
        kq.kevent(&changes, &mut [], None).unwrap();
        let mut out = [Kevent::default(); 16];
        let mut got = Vec::new();
        let t0 = Instant::now();
        while got.len() < idents.len() && t0.elapsed() < Duration::from_secs(2) {
            let n = kq
                .kevent(&[], &mut out, Some(Duration::from_secs(1)))
                .unwrap();
            got.extend(out[..n].iter().map(|e| e.ident));
        }
        assert_eq!(got, idents, "filing order");
        // A later deadline armed first still fires after an earlier one.
        let now = wall();
        let late = (now + Duration::from_millis(30)).as_nanos() as i64;
        let soon = (now + Duration::from_millis(10)).as_nanos() as i64;
        kq.kevent(
            &[
                add(1, Flags::ONESHOT, note::ABSTIME | note::NSECONDS, late),
                add(2, Flags::ONESHOT, note::ABSTIME | note::NSECONDS, soon),
            ],
            &mut [],
            None,
        )
        .unwrap();
        assert_eq!(expect_timer(&kq, 2, Duration::from_secs(1)).ident, 2);
        assert_eq!(expect_timer(&kq, 1, Duration::from_secs(1)).ident, 1);
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
    // 1 µs period, 100 ms stall, the largest cap: 100k missed ticks,
    // counted in O(1) and handed out as at most 65535 events (collect a
    // few and delete).
    for kq in queues() {
        change(
            &kq,
            add(
                8,
                Flags::empty(),
                note::USECONDS | POLICY_CATCHUP | catchup_cap_fflags(u16::MAX),
                1,
            ),
        );
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let head = expect_timer(&kq, 8, Duration::from_secs(2));
        assert!(head.data >= 100_000 - 65_535, "{head:?}");
        for _ in 0..3 {
            // Singles, or (ticks keep falling due every µs while the
            // backlog is at the cap) the newest merged into the next one.
            let ev = expect_timer(&kq, 8, Duration::from_secs(2));
            assert!(ev.data >= 1, "{ev:?}");
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        change(&kq, ctl(8, Flags::DELETE));
    }
}
