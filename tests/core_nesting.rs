//! A queue's fd is readable while events are pending: it nests in another
//! queue (`Filter::Read`) and in a raw epoll.

#[macro_use]
mod util;

use kevent::{note, Backend, Filter, Flags};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use util::*;

backends_complete_test!();

const R: Filter = Filter::Read;
const U: Filter = Filter::User;

backend_test!(queue_in_queue_user_event, |b: Backend| {
    let inner = kq(b);
    let outer = kq(b);
    change(&inner, &[ev(1, U, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    let fd = id(&inner);
    change(&outer, &[ev(fd, R, Flags::ADD, 0, 0, 42)]);
    expect_none(&outer, fd, R);
    change(&inner, &[ev(1, U, Flags::empty(), note::TRIGGER, 0, 0)]);
    assert_eq!(expect_event(&outer, fd, R).udata, 42);
    // Still pending in the inner queue: still readable.
    expect_event(&outer, fd, R);
    // Collected: the level READ knote is not reported again.
    expect_event(&inner, 1, U);
    expect_none(&outer, fd, R);
    // And back on the next event.
    change(&inner, &[ev(1, U, Flags::empty(), note::TRIGGER, 0, 0)]);
    expect_event(&outer, fd, R);
});

backend_test!(queue_in_queue_fd_event, |b: Backend| {
    let inner = kq(b);
    let outer = kq(b);
    let (rx, tx) = pipe();
    change(
        &inner,
        &[ev(id(&rx), R, Flags::ADD | Flags::CLEAR, 0, 0, 0)],
    );
    let fd = id(&inner);
    change(&outer, &[ev(fd, R, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    expect_none(&outer, fd, R);
    // The pipe's readiness reaches the outer queue with no call on the
    // inner one.
    write_all(&tx, b"x");
    expect_event(&outer, fd, R);
    assert_eq!(expect_event(&inner, id(&rx), R).data, 1);
});

backend_test!(queue_in_raw_epoll, |b: Backend| {
    let inner = kq(b);
    change(&inner, &[ev(9, U, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
    // SAFETY: plain syscall; the fd is owned below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    // SAFETY: `ep` is a fresh fd owned by no one else.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut e = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 7,
    };
    // SAFETY: valid epoll fd, valid fd, pointer to a live epoll_event.
    let rc = unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            inner.as_raw_fd(),
            &mut e,
        )
    };
    assert_eq!(rc, 0);
    let wait = |ms: i32| -> i32 {
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: `out` has room for 4 events.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 4, ms) };
        assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
        if n > 0 {
            assert_eq!({ out[0].u64 }, 7);
        }
        n
    };
    assert_eq!(wait(50), 0);
    change(&inner, &[ev(9, U, Flags::empty(), note::TRIGGER, 0, 0)]);
    assert_eq!(wait(3000), 1);
    // Level-triggered epoll: readable until the event is collected.
    assert_eq!(wait(0), 1);
    expect_event(&inner, 9, U);
    assert_eq!(wait(50), 0);
});

backend_test!(queue_in_tokio_async_fd, |b: Backend| {
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::unix::AsyncFd;
    let kq = Arc::new(kq(b));
    change(&kq, &[ev(5, U, Flags::ADD | Flags::CLEAR, 0, 0, 77)]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap();
    let trigger = Arc::clone(&kq);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        trigger.trigger(5).unwrap();
    });
    let got = rt.block_on(async {
        // SAFETY: the queue's fd is owned by the queue, which this Arc
        // keeps alive (and open) for the AsyncFd's whole life; as_raw_fd
        // returns the same fd every time.
        let afd = unsafe { AsyncFd::register(Arc::clone(&kq)) }.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut guard = tokio::time::timeout_at(deadline, afd.readable())
                .await
                .expect("the queue's fd never became readable")
                .unwrap();
            let mut out = [kevent::Kevent::default(); 4];
            let n = kq.kevent(&[], &mut out, Some(Duration::ZERO)).unwrap();
            if n > 0 {
                break out[0];
            }
            // Spurious readiness (the backend's own fd): wait again.
            guard.clear_ready();
        }
    });
    t.join().unwrap();
    assert_eq!((got.ident, got.filter, got.udata), (5, U, 77));
});

backend_test!(
    queue_fd_reports_fd_readiness_round_after_round,
    |b: Backend| {
        // Each round: fd readiness must make the queue's own fd readable again
        // (io_uring once stopped after the first drain).
        let kq = kq(b);
        let (rx, tx) = pipe();
        change(&kq, &[ev(id(&rx), R, Flags::ADD | Flags::CLEAR, 0, 0, 0)]);
        // SAFETY: plain syscall; the fd is owned below.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        // SAFETY: `ep` is a fresh fd owned by no one else.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut e = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        // SAFETY: valid fds and event struct.
        let rc =
            unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, kq.as_raw_fd(), &mut e) };
        assert_eq!(rc, 0);
        let mut rx = rx;
        for round in 0..4 {
            write_all(&tx, b"x");
            let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
            let n = loop {
                // SAFETY: `out` has room for 4 events.
                let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), out.as_mut_ptr(), 4, 2000) };
                if n >= 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    break n;
                }
            };
            assert_eq!(n, 1, "round {round}: the queue's fd did not turn readable");
            let evs = poll_now(&kq);
            assert!(
                evs.iter().any(|e| e.ident == id(&rx)),
                "round {round}: {evs:?}"
            );
            read_n(&mut rx, 1);
            // Every other round, one more call between rounds (it re-arms
            // the backend's internal waits): both states must work.
            if round % 2 == 1 {
                let _ = poll_now(&kq);
            }
        }
    }
);
