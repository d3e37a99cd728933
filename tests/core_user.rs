//! USER: triggers, fflags arithmetic, level vs CLEAR, data passing, and
//! triggers from another thread.

#[macro_use]
mod util;

use kevent::{note, Backend, Filter, Flags, Kevent};
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::*;

backends_complete_test!();

const U: Filter = Filter::User;

fn trigger(kq: &kevent::kevent_core::Kqueue, ident: u64, fflags: u32, data: i64, udata: u64) {
    change(
        kq,
        &[ev(
            ident,
            U,
            Flags::empty(),
            note::TRIGGER | fflags,
            data,
            udata,
        )],
    );
}

backend_test!(untriggered_is_quiet_trigger_delivers, |b: Backend| {
    let kq = kq(b);
    change(&kq, &[ev(1, U, Flags::ADD | Flags::CLEAR, 0, 0, 11)]);
    expect_none(&kq, 1, U);
    trigger(&kq, 1, 0, 0, 12);
    let e = expect_event(&kq, 1, U);
    // Every change replaces udata, the trigger too (FreeBSD).
    assert_eq!((e.udata, e.fflags, e.data), (12, 0, 0));
    assert!(!e.flags.intersects(Flags::ERROR | Flags::EOF));
    expect_none(&kq, 1, U);
});

backend_test!(trigger_of_missing_is_enoent, |b: Backend| {
    let kq = kq(b);
    assert_errno(
        try_change(&kq, &[ev(5, U, Flags::empty(), note::TRIGGER, 0, 0)]),
        libc::ENOENT,
    );
    assert_errno(kq.trigger(5), libc::ENOENT);
});

backend_test!(trigger_with_add_fires_at_once, |b: Backend| {
    let kq = kq(b);
    change(
        &kq,
        &[ev(2, U, Flags::ADD | Flags::ONESHOT, note::TRIGGER, 0, 3)],
    );
    let e = expect_event(&kq, 2, U);
    assert_eq!(e.udata, 3);
    // ONESHOT: gone after delivery.
    expect_none(&kq, 2, U);
    assert_errno(
        try_change(&kq, &[ev(2, U, Flags::DELETE, 0, 0, 0)]),
        libc::ENOENT,
    );
});

backend_test!(level_stays_triggered_clear_does_not, |b: Backend| {
    let kq = kq(b);
    change(
        &kq,
        &[
            ev(1, U, Flags::ADD, 0, 0, 0),
            ev(2, U, Flags::ADD | Flags::CLEAR, 0, 0, 0),
        ],
    );
    trigger(&kq, 1, 0, 0, 0);
    trigger(&kq, 2, 0, 0, 0);
    expect_events(&kq, &[(1, U), (2, U)]);
    // Without CLEAR a triggered USER knote is returned by every call.
    for _ in 0..3 {
        let evs = poll_now(&kq);
        assert_eq!(evs.iter().filter(|e| e.ident == 1).count(), 1, "{evs:?}");
        assert!(!evs.iter().any(|e| e.ident == 2), "{evs:?}");
    }
    // A change with CLEAR resets the level knote (FreeBSD filt_usertouch).
    change(&kq, &[ev(1, U, Flags::CLEAR, 0, 0, 0)]);
    expect_none(&kq, 1, U);
    trigger(&kq, 1, 0, 0, 0);
    expect_event(&kq, 1, U);
});

backend_test!(triggers_merge_while_pending, |b: Backend| {
    let kq = kq(b);
    change(&kq, &[ev(1, U, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    for i in 0..5 {
        trigger(&kq, 1, 0, i, 0);
    }
    let evs = drain(&kq, WAIT);
    let mine: Vec<_> = evs.iter().filter(|e| e.ident == 1).collect();
    assert_eq!(mine.len(), 1, "{evs:?}");
    // data is the data of the last change.
    assert_eq!(mine[0].data, 4);
    expect_none(&kq, 1, U);
});

backend_test!(fflags_arithmetic, |b: Backend| {
    let kq = kq(b);
    change(&kq, &[ev(7, U, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    let step = |fflags: u32, want: u32| {
        trigger(&kq, 7, fflags, 0, 0);
        let e = expect_event(&kq, 7, U);
        assert_eq!(e.fflags, want, "after fflags {fflags:#x}: {e:?}");
    };
    step(note::FFCOPY | 0x00ff, 0x00ff);
    step(note::FFAND | 0x0f0f, 0x000f);
    step(note::FFOR | 0x3000, 0x300f);
    step(note::FFNOP | 0xabcd, 0x300f);
    step(note::FFCOPY | 0x00ab_cdef, 0x00ab_cdef);
    // Bits above FFLAGSMASK never enter the flag word.
    step(note::FFOR | 0x0f00_0000, 0x00ab_cdef);
    step(note::FFCOPY, 0);
    // A change without TRIGGER updates the word without firing.
    change(&kq, &[ev(7, U, Flags::empty(), note::FFOR | 0x5, 0, 0)]);
    expect_none(&kq, 7, U);
    step(note::FFNOP, 0x5);
});

backend_test!(fflags_given_at_add_are_kept, |b: Backend| {
    // FreeBSD stores the ADD's fflags as the knote's flag word.
    let kq = kq(b);
    change(
        &kq,
        &[ev(8, U, Flags::ADD | Flags::CLEAR, 0x0000_0042, 0, 0)],
    );
    trigger(&kq, 8, note::FFNOP, 0, 0);
    assert_eq!(expect_event(&kq, 8, U).fflags, 0x42);
    change(
        &kq,
        &[ev(
            9,
            U,
            Flags::ADD | Flags::CLEAR,
            note::FFCOPY | 0x11,
            0,
            0,
        )],
    );
    trigger(&kq, 9, note::FFOR | 0x2, 0, 0);
    assert_eq!(expect_event(&kq, 9, U).fflags, 0x13);
});

backend_test!(data_passing, |b: Backend| {
    let kq = kq(b);
    change(&kq, &[ev(3, U, Flags::ADD | Flags::CLEAR, 0, 5, 0)]);
    trigger(&kq, 3, 0, 42, 0);
    assert_eq!(expect_event(&kq, 3, U).data, 42);
    trigger(&kq, 3, 0, -7, 0);
    assert_eq!(expect_event(&kq, 3, U).data, -7);
    // Kqueue::trigger acts as a TRIGGER change with data 0 that keeps udata.
    change(&kq, &[ev(3, U, Flags::empty(), 0, 9, 55)]);
    kq.trigger(3).unwrap();
    let e = expect_event(&kq, 3, U);
    assert_eq!((e.data, e.udata), (0, 55));
});

backend_test!(dispatch_user_needs_enable, |b: Backend| {
    let kq = kq(b);
    change(
        &kq,
        &[ev(
            4,
            U,
            Flags::ADD | Flags::DISPATCH | Flags::CLEAR,
            0,
            0,
            0,
        )],
    );
    trigger(&kq, 4, 0, 0, 0);
    expect_event(&kq, 4, U);
    trigger(&kq, 4, 0, 0, 0);
    expect_none(&kq, 4, U);
    // The trigger made while disabled is reported on ENABLE.
    change(&kq, &[ev(4, U, Flags::ENABLE, 0, 0, 0)]);
    expect_event(&kq, 4, U);
    expect_none(&kq, 4, U);
});

backend_test!(disable_hides_a_triggered_knote, |b: Backend| {
    let kq = kq(b);
    change(&kq, &[ev(6, U, Flags::ADD, 0, 0, 0)]);
    trigger(&kq, 6, 0, 0, 0);
    expect_event(&kq, 6, U);
    change(&kq, &[ev(6, U, Flags::DISABLE, 0, 0, 0)]);
    expect_none(&kq, 6, U);
    change(&kq, &[ev(6, U, Flags::ENABLE, 0, 0, 0)]);
    expect_event(&kq, 6, U);
    change(&kq, &[ev(6, U, Flags::DELETE, 0, 0, 0)]);
    expect_none(&kq, 6, U);
});

backend_test!(trigger_from_another_thread_wakes_waiter, |b: Backend| {
    let kq = Arc::new(kq(b));
    change(&kq, &[ev(1, U, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    change(&kq, &[ev(2, U, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    let kq2 = kq.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        trigger(&kq2, 1, 0, 1, 0);
        std::thread::sleep(Duration::from_millis(100));
        kq2.trigger(2).unwrap();
    });
    let start = Instant::now();
    let mut out = [Kevent::default(); 4];
    // Blocks forever without the wake-up; the thread bounds the test.
    let n = kq.kevent(&[], &mut out, None).unwrap();
    assert_eq!((n, out[0].ident, out[0].data), (1, 1, 1));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "woke after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "woke after {waited:?}");
    let n = kq
        .kevent(&[], &mut out, Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!((n, out[0].ident), (1, 2));
    assert!(start.elapsed() < Duration::from_secs(4));
    t.join().unwrap();
});
