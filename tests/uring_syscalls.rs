//! io_uring: one `io_uring_enter` per `kevent()` in a steady edge-triggered
//! loop, counted by `strace -f -c` around a child run of this same test
//! binary (`.ci/run` installs strace). Fails, never skips, when strace or
//! io_uring is missing.

mod util;

use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

const ROUNDS: usize = 2000;
const CHILD: &str = "KEVENT_SYSCALL_CHILD";

/// The measured loop: write a byte, `kevent()` returns the CLEAR READ
/// event, read the byte.
fn edge_loop(backend: Backend) {
    let kq = Kqueue::with_backend(backend).expect("queue");
    let (a, b) = util::socketpair();
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

fn count(tag: &str) -> std::collections::HashMap<String, u64> {
    util::strace_child("one_enter_per_kevent", CHILD, tag)
}

#[test]
fn one_enter_per_kevent() {
    match std::env::var(CHILD).as_deref() {
        Ok("uring") => return edge_loop(Backend::IoUring),
        Ok("epoll") => return edge_loop(Backend::Epoll),
        _ => {}
    }
    let uring = count("uring");
    let get = |k: &str| uring.get(k).copied().unwrap_or(0);
    let enters = get("io_uring_enter");
    let waits = get("epoll_pwait2") + get("epoll_wait");
    eprintln!(
        "io_uring, {ROUNDS} rounds: io_uring_enter={enters} read={} write={} ioctl={} epoll_ctl={} epoll_wait={waits}",
        get("read"),
        get("write"),
        get("ioctl"),
        get("epoll_ctl"),
    );
    // One per kevent() plus a few for setup and the registration call.
    assert!(
        (ROUNDS as u64..=ROUNDS as u64 + 10).contains(&enters),
        "expected one io_uring_enter per kevent(): {enters} for {ROUNDS} rounds ({uring:?})"
    );
    // Readiness is collected in the ring, not by epoll_wait syscalls.
    assert!(waits < 10, "io_uring loop called epoll_wait {waits} times");

    let epoll = count("epoll");
    eprintln!(
        "epoll, {ROUNDS} rounds: epoll_pwait2={} io_uring_enter={}",
        epoll.get("epoll_pwait2").copied().unwrap_or(0),
        epoll.get("io_uring_enter").copied().unwrap_or(0)
    );
}
