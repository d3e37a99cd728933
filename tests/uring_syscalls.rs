//! io_uring: one `io_uring_enter` per `kevent()` in a steady edge-triggered
//! loop, counted by `strace -f -c` around a child run of this same test
//! binary (`.ci/run` installs strace). Fails, never skips, when strace or
//! io_uring is missing.

mod util;

use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const ROUNDS: usize = 2000;
const CHILD: &str = "KEVENT_SYSCALL_CHILD";

/// The measured loop: write a byte, `kevent()` returns the CLEAR READ
/// event, read the byte.
fn edge_loop(backend: Backend) {
    let kq = Kqueue::with_backend(backend).expect("queue");
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let fd = b.as_raw_fd() as u64;
    let mut out = [Kevent::default(); 4];
    kq.kevent(
        &[Kevent::new(
            fd,
            Filter::Read,
            Flags::ADD | Flags::CLEAR,
            0,
            0,
            1,
        )],
        &mut out,
        Some(Duration::ZERO),
    )
    .unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..ROUNDS {
        assert_eq!((&a).write(b"x").unwrap(), 1);
        let n = kq.kevent(&[], &mut out, None).unwrap();
        assert_eq!(n, 1);
        assert_eq!(out[0].ident, fd);
        assert_eq!((&b).read(&mut buf).unwrap(), 1);
    }
}

fn count(_backend: Backend, tag: &str) -> std::collections::HashMap<String, u64> {
    util::strace_child("one_enter_per_kevent", CHILD, tag)
}

#[test]
fn one_enter_per_kevent() {
    match std::env::var(CHILD).as_deref() {
        Ok("uring") => return edge_loop(Backend::IoUring),
        Ok("epoll") => return edge_loop(Backend::Epoll),
        _ => {}
    }
    let uring = count(Backend::IoUring, "uring");
    let enters = uring.get("io_uring_enter").copied().unwrap_or(0);
    eprintln!(
        "io_uring, {ROUNDS} rounds: io_uring_enter={enters} read={} write={} ioctl={} epoll_ctl={} epoll_wait={}",
        uring.get("read").copied().unwrap_or(0),
        uring.get("write").copied().unwrap_or(0),
        uring.get("ioctl").copied().unwrap_or(0),
        uring.get("epoll_ctl").copied().unwrap_or(0),
        uring.get("epoll_pwait2").copied().unwrap_or(0) + uring.get("epoll_wait").copied().unwrap_or(0),
    );
    // One per kevent() plus a few for setup and the registration call.
    assert!(
        (ROUNDS as u64..=ROUNDS as u64 + 10).contains(&enters),
        "expected one io_uring_enter per kevent(): {enters} for {ROUNDS} rounds ({uring:?})"
    );
    // Readiness is collected in the ring, not by epoll_wait syscalls.
    let waits = uring.get("epoll_pwait2").copied().unwrap_or(0)
        + uring.get("epoll_wait").copied().unwrap_or(0);
    assert!(waits < 10, "io_uring loop called epoll_wait {waits} times");

    let epoll = count(Backend::Epoll, "epoll");
    eprintln!(
        "epoll, {ROUNDS} rounds: epoll_pwait2={} io_uring_enter={}",
        epoll.get("epoll_pwait2").copied().unwrap_or(0),
        epoll.get("io_uring_enter").copied().unwrap_or(0)
    );
}
