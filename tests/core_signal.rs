//! SIGNAL: counting deliveries.
//!
//! Only thread-directed signals (`pthread_kill(pthread_self())`), blocked
//! first: a process-directed signal could be taken by any other test
//! thread, whose mask does not block it, and kill the test binary. The
//! thread that raises is the thread that calls `kevent()`, so its
//! `signalfd` read sees the signal.

#[macro_use]
mod util;

use kevent::{block_signals, Backend, Filter, Flags};
use util::*;

backends_complete_test!();

const S: Filter = Filter::Signal;

backend_test!(realtime_signal_counts_each_delivery, |b: Backend| {
    let kq = kq(b);
    let sig = rt(1);
    block_signals(&[sig]).unwrap();
    change(&kq, &[ev(sig as u64, S, Flags::ADD, 0, 0, 4)]);
    expect_none(&kq, sig as u64, S);
    // Real-time signals queue: three sends, count 3.
    raise(sig, 3);
    let e = expect_event(&kq, sig as u64, S);
    assert_eq!((e.data, e.udata), (3, 4));
    // Implicitly CLEAR: the count restarts after each report.
    assert!(e.flags.contains(Flags::CLEAR), "{e:?}");
    expect_none(&kq, sig as u64, S);
    raise(sig, 1);
    assert_eq!(expect_event(&kq, sig as u64, S).data, 1);
});

backend_test!(standard_signal_coalesces_while_pending, |b: Backend| {
    // Linux keeps one pending instance of a standard signal: three sends
    // before the queue reads give one delivery (FreeBSD would count 3;
    // the storage documents this).
    let kq = kq(b);
    let sig = libc::SIGUSR1;
    block_signals(&[sig]).unwrap();
    change(&kq, &[ev(sig as u64, S, Flags::ADD, 0, 0, 0)]);
    raise(sig, 3);
    assert_eq!(expect_event(&kq, sig as u64, S).data, 1);
    expect_none(&kq, sig as u64, S);
    // Sends the queue reads in between are each counted.
    let mut total = 0;
    for _ in 0..3 {
        raise(sig, 1);
        total += expect_event(&kq, sig as u64, S).data;
    }
    assert_eq!(total, 3);
});

backend_test!(count_accumulates_while_disabled, |b: Backend| {
    let kq = kq(b);
    let sig = rt(2);
    block_signals(&[sig]).unwrap();
    change(&kq, &[ev(sig as u64, S, Flags::ADD, 0, 0, 0)]);
    change(&kq, &[ev(sig as u64, S, Flags::DISABLE, 0, 0, 0)]);
    raise(sig, 2);
    expect_none(&kq, sig as u64, S);
    raise(sig, 1);
    expect_none(&kq, sig as u64, S);
    change(&kq, &[ev(sig as u64, S, Flags::ENABLE, 0, 0, 0)]);
    assert_eq!(expect_event(&kq, sig as u64, S).data, 3);
});

backend_test!(each_signal_has_its_own_count, |b: Backend| {
    let kq = kq(b);
    let (a, c) = (rt(3), libc::SIGUSR2);
    block_signals(&[a, c]).unwrap();
    change(
        &kq,
        &[
            ev(a as u64, S, Flags::ADD, 0, 0, 1),
            ev(c as u64, S, Flags::ADD, 0, 0, 2),
        ],
    );
    raise(a, 2);
    raise(c, 1);
    let evs = expect_events(&kq, &[(a as u64, S), (c as u64, S)]);
    assert_eq!((evs[0].data, evs[0].udata), (2, 1));
    assert_eq!((evs[1].data, evs[1].udata), (1, 2));
});

backend_test!(deleted_signal_is_not_reported, |b: Backend| {
    let kq = kq(b);
    let sig = rt(4);
    block_signals(&[sig]).unwrap();
    change(&kq, &[ev(sig as u64, S, Flags::ADD, 0, 0, 0)]);
    raise(sig, 1);
    assert_eq!(expect_event(&kq, sig as u64, S).data, 1);
    change(&kq, &[ev(sig as u64, S, Flags::DELETE, 0, 0, 0)]);
    // Stays blocked and pending in this thread, which ends with the test.
    raise(sig, 1);
    expect_none(&kq, sig as u64, S);
    assert_errno(
        try_change(&kq, &[ev(sig as u64, S, Flags::DELETE, 0, 0, 0)]),
        libc::ENOENT,
    );
});

backend_test!(invalid_signals_are_einval, |b: Backend| {
    let kq = kq(b);
    for sig in [0u64, 65, 1000, libc::SIGKILL as u64, libc::SIGSTOP as u64] {
        assert_errno(
            try_change(&kq, &[ev(sig, S, Flags::ADD, 0, 0, 0)]),
            libc::EINVAL,
        );
    }
    assert_errno(block_signals(&[0]), libc::EINVAL);
});
