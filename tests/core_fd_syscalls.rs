//! The fd storage's syscalls per short-lived socket, counted by `strace
//! -f -c` around a child run of this same test binary on each backend
//! (`.ci/run` installs strace; the test fails, never skips, without it).
//!
//! The loop is a server's connection in miniature: a new socket lands on
//! the number the previous one had (closed without `EV_DELETE`, as
//! FreeBSD programs do), gets a READ knote, one event, and is closed. The
//! ADD's identity probe (an `EPOLL_CTL_ADD`) doubles as the registration
//! (one `epoll_ctl`, not probe + undo + add), and the first event
//! classifies a connected socket with one `getsockopt(SO_ACCEPTCONN)`, no
//! `fstat` — or with no syscall at all when the change carries the
//! `note::SOCKET` hint (kevent-net's `TcpStream` does).

mod util;

use kevent::{note, Backend, Filter, Flags, Kevent, Kqueue};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const ROUNDS: u64 = 1000;
const CHILD: &str = "KEVENT_FD_SYSCALL_CHILD";
/// Setup and teardown: the queue, its backend, the test harness.
const SLACK: u64 = 40;

fn connection_loop(backend: Backend, hint: u32) {
    let kq = Kqueue::with_backend(backend).expect("queue");
    let mut out = [Kevent::default(); 4];
    let mut buf = [0u8; 16];
    let mut numbers = std::collections::HashSet::new();
    for i in 0..ROUNDS {
        let (a, p) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let fd = a.as_raw_fd() as u64;
        numbers.insert(fd);
        let add = Kevent::new(
            fd,
            Filter::Read,
            Flags::ADD | Flags::CLEAR,
            note::NODATA | hint,
            0,
            i,
        );
        kq.kevent(&[add], &mut [], Some(Duration::ZERO)).unwrap();
        (&p).write_all(b"x").unwrap();
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            (n, out[0].ident, out[0].udata),
            (1, fd, i),
            "{:?}",
            &out[..n]
        );
        assert_eq!((&a).read(&mut buf).unwrap(), 1);
        // Closed without EV_DELETE.
        drop(a);
        drop(p);
    }
    // The loop measures reuse: the numbers must repeat.
    assert!(numbers.len() < 4, "fd numbers were not reused: {numbers:?}");
}

fn count(tag: &str) -> HashMap<String, u64> {
    util::strace_child("one_epoll_ctl_per_reused_number", CHILD, tag)
}

#[test]
fn one_epoll_ctl_per_reused_number() {
    match std::env::var(CHILD).as_deref() {
        Ok("uring") => return connection_loop(Backend::IoUring, 0),
        Ok("epoll") => return connection_loop(Backend::Epoll, 0),
        Ok("uring-hint") => return connection_loop(Backend::IoUring, note::SOCKET),
        Ok("epoll-hint") => return connection_loop(Backend::Epoll, note::SOCKET),
        _ => {}
    }
    for tag in ["epoll", "uring", "epoll-hint", "uring-hint"] {
        let m = count(tag);
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        let ctl = get("epoll_ctl");
        let stats = get("newfstatat") + get("fstat") + get("statx") + get("fstatat64");
        let sockopts = get("getsockopt");
        eprintln!("{tag}, {ROUNDS} sockets: epoll_ctl={ctl} fstat={stats} getsockopt={sockopts}");
        assert!(
            (ROUNDS..=ROUNDS + SLACK).contains(&ctl),
            "{tag}: expected one epoll_ctl per socket: {ctl} for {ROUNDS} ({m:?})"
        );
        // The harness and the loader make some (about 70 here).
        assert!(
            stats < ROUNDS / 4,
            "{tag}: a connected socket needs no fstat: {stats} for {ROUNDS} ({m:?})"
        );
        let want = if tag.ends_with("hint") { 0 } else { ROUNDS };
        assert!(
            (want..=want + SLACK).contains(&sockopts),
            "{tag}: expected {want} getsockopt (SO_ACCEPTCONN, none with the hint): {sockopts} for {ROUNDS} ({m:?})"
        );
    }
}
