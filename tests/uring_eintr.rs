//! `EINTR` from `kevent()`: a real signal still interrupts a blocked wait
//! (FreeBSD's behaviour), and a dropped io_uring queue leaves no task work
//! behind that would interrupt a later wait of the same thread without any
//! signal (epoll_wait is never restarted by the kernel). Both backends.

#[macro_use]
mod util;

use kevent::{Backend, Filter, Flags, Kevent};
use std::time::{Duration, Instant};
use util::*;

backends_complete_test!();

extern "C" fn on_usr1(_: libc::c_int) {}

/// SIGUSR1 with a handler and without `SA_RESTART`.
fn install_handler() {
    // SAFETY: an all-zero sigaction is valid; the handler is async-signal
    // safe (it does nothing).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

/// Use an io_uring queue on this thread and drop it (the thread is then a
/// ring user: the case the epoll backend's restartable wait is for).
fn use_and_drop_a_uring_queue() {
    let u = kq(Backend::IoUring);
    let (rx, tx) = pipe();
    change(
        &u,
        &[ev(
            id(&rx),
            Filter::Read,
            Flags::ADD | Flags::CLEAR,
            0,
            0,
            0,
        )],
    );
    write_all(&tx, b"x");
    expect_event(&u, id(&rx), Filter::Read);
    assert!(drain(&u, Duration::from_millis(5)).is_empty());
}

backend_test!(a_real_signal_interrupts_a_blocked_wait, |b: Backend| {
    install_handler();
    // First on a thread that never drove a ring, then on one that did.
    for ring_user in [false, true] {
        if ring_user {
            use_and_drop_a_uring_queue();
            // Let the ring's exit work come and go.
            std::thread::sleep(Duration::from_millis(100));
        }
        let kq = kq(b);
        change(
            &kq,
            &[ev(1, Filter::User, Flags::ADD | Flags::CLEAR, 0, 0, 0)],
        );
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: `me` is a live thread (it joins us below).
            unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
        });
        let t = Instant::now();
        let mut out = [Kevent::default(); 4];
        let res = kq.kevent(&[], &mut out, Some(Duration::from_secs(10)));
        killer.join().unwrap();
        match res {
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINTR), "{b:?}: {e}"),
            Ok(n) => panic!(
                "{b:?} (ring user: {ring_user}): expected EINTR, got {n} events after {:?}",
                t.elapsed()
            ),
        }
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(
            t.elapsed() < Duration::from_secs(9),
            "the signal did not end the wait"
        );
    }
});

backend_test!(
    a_dropped_uring_queue_leaves_no_spurious_eintr,
    |b: Backend| {
        // An io_uring queue on this thread with requests in flight (its
        // EPOLL_WAITs and waker read, armed by a first wait), dropped; then a
        // blocked wait on this thread must end by its timeout, not in EINTR.
        for round in 0..5 {
            use_and_drop_a_uring_queue();
            let kq = kq(b);
            let t = Instant::now();
            let mut out = [Kevent::default(); 4];
            match kq.kevent(&[], &mut out, Some(Duration::from_millis(200))) {
                Ok(n) => assert_eq!(n, 0),
                Err(e) => panic!(
                    "{b:?} round {round}: {e} after {:?} with no signal sent",
                    t.elapsed()
                ),
            }
            assert!(t.elapsed() >= Duration::from_millis(200));
        }
    }
);
