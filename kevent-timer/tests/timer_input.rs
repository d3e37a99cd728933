//! Whatever a user puts in a TIMER change gets a clear answer (`EINVAL`
//! or a timer) and never a panic: extreme `data` with every unit,
//! absolute times far in the past and future, undefined `fflags` bits,
//! extreme idents, and a re-ADD that fails.

mod util;

use std::time::Duration;

use kevent_core::{note, Flags, Kevent, Kqueue};
use kevent_timer::storage::{
    catchup_cap_fflags, CATCHUP_CAP_MASK, POLICY_CATCHUP, POLICY_DELAY, POLICY_MASK,
};
use util::*;

const UNITS: [u32; 5] = [
    0,
    note::SECONDS,
    note::MSECONDS,
    note::USECONDS,
    note::NSECONDS,
];

const EINVAL: Option<i64> = Some(libc::EINVAL as i64);

/// Adds `ch`, expects it accepted and silent for a while, then deletes it.
#[track_caller]
fn accepted_and_silent(kq: &Kqueue, ch: Kevent) {
    assert_eq!(change_errno(kq, ch), None, "{ch:?}");
    assert!(
        wait_one(kq, Duration::from_millis(5)).is_none(),
        "{ch:?} fired"
    );
    change(kq, ctl(ch.ident, Flags::DELETE));
}

#[test]
fn extreme_data_with_every_unit() {
    for kq in queues() {
        for unit in UNITS {
            for flags in [Flags::empty(), Flags::ONESHOT] {
                for data in [i64::MIN, -1] {
                    let ch = add(1, flags, unit, data);
                    assert_eq!(change_errno(&kq, ch), EINVAL, "{ch:?}");
                }
                // The largest periods and delays never come soon.
                for data in [i64::MAX, i64::MAX / 2, 1 << 40] {
                    accepted_and_silent(&kq, add(1, flags, unit, data));
                }
            }
            // The policies too.
            for policy in [POLICY_CATCHUP, POLICY_DELAY] {
                accepted_and_silent(&kq, add(2, Flags::empty(), unit | policy, i64::MAX));
            }
        }
    }
}

#[test]
fn absolute_times_far_past_and_future() {
    for kq in queues() {
        let abs = |u: u32| note::ABSTIME | u;
        // Before boot (FreeBSD subtracts its boot time and rejects what
        // lands before it): EINVAL.
        let boot = boot_wall();
        for (unit, data) in [
            (note::SECONDS, 0),
            (note::NSECONDS, 1),
            (note::SECONDS, boot.as_secs() as i64 - 5),
            (note::MSECONDS, boot.as_millis() as i64 - 1000),
        ] {
            let ch = add(1, Flags::empty(), abs(unit), data);
            assert_eq!(change_errno(&kq, ch), EINVAL, "{ch:?}");
        }
        // After boot, even long ago: fires at once.
        let ch = add(
            1,
            Flags::empty(),
            abs(note::SECONDS),
            boot.as_secs() as i64 + 2,
        );
        change(&kq, ch);
        assert_eq!(expect_timer(&kq, 1, Duration::from_secs(1)).data, 1);
        // Far future, every unit, up to i64::MAX: accepted, never soon.
        for unit in UNITS {
            accepted_and_silent(&kq, add(2, Flags::empty(), abs(unit), i64::MAX));
        }
        let year_3000_s = 32_503_680_000i64;
        accepted_and_silent(&kq, add(3, Flags::empty(), abs(note::SECONDS), year_3000_s));
    }
}

#[test]
fn undefined_fflags_bits_are_einval() {
    for kq in queues() {
        let defined = 0x1F | POLICY_MASK | CATCHUP_CAP_MASK;
        for bit in 0..32 {
            let f = 1u32 << bit;
            if f & defined != 0 {
                continue;
            }
            let ch = add(1, Flags::empty(), f, 10);
            assert_eq!(change_errno(&kq, ch), EINVAL, "bit {bit}");
        }
        // Unassigned policy values, two units, a cap without Catchup.
        for f in [
            0x0400_0000,
            0x0F00_0000,
            note::SECONDS | note::MSECONDS,
            note::USECONDS | note::NSECONDS,
            catchup_cap_fflags(1),
            POLICY_DELAY | catchup_cap_fflags(9),
        ] {
            let ch = add(1, Flags::empty(), f, 10);
            assert_eq!(change_errno(&kq, ch), EINVAL, "fflags {f:#x}");
        }
        // All garbage at once, on a re-ADD of a live timer: EINVAL, and
        // the timer runs on.
        change(&kq, add(1, Flags::empty(), 0, 5));
        let ch = add(1, Flags::empty(), u32::MAX, 10);
        assert_eq!(change_errno(&kq, ch), EINVAL);
        expect_timer(&kq, 1, Duration::from_secs(1));
    }
}

#[test]
fn extreme_idents_and_udata() {
    for kq in queues() {
        for ident in [0, u64::MAX, u64::MAX - 1, 1 << 63] {
            change(
                &kq,
                Kevent::new(
                    ident,
                    kevent_core::Filter::Timer,
                    Flags::ADD | Flags::ONESHOT,
                    note::USECONDS,
                    100,
                    u64::MAX,
                ),
            );
            let ev = expect_timer(&kq, ident, Duration::from_secs(1));
            assert_eq!((ev.udata, ev.data), (u64::MAX, 1));
        }
    }
}

#[test]
fn a_one_nanosecond_period_does_not_hang_the_queue() {
    // Every call finds ticks due; each delivery merges them and returns.
    for kq in queues() {
        change(&kq, add(1, Flags::empty(), note::NSECONDS, 1));
        let mut total = 0;
        for _ in 0..5 {
            total += expect_timer(&kq, 1, Duration::from_secs(1)).data;
        }
        assert!(total >= 5);
        change(&kq, ctl(1, Flags::DELETE));
        assert!(wait_one(&kq, Duration::from_millis(5)).is_none());
    }
}
