//! Network AIO's syscalls per short-lived connection, counted by `strace
//! -f -c` around a child run of this same test binary on each backend
//! (`.ci/run` installs strace; the test fails, never skips, without it).
//!
//! The loop is a server's connection: the request is already there when
//! the pooled receive starts, the client resets the connection, the
//! server closes it, and the next connection lands on the same number. On
//! epoll: one `recv` for the request (a short read means drained: no
//! `EAGAIN` call), one for the reset, one `EPOLL_CTL_ADD` (not MOD,
//! `ENOENT`, ADD: the storage forgot the registration when the stream
//! ended). On io_uring: no `recv` and no `epoll_ctl` at all (ring ops).

mod util;

use kevent::kevent_net::aio::Aio;
use kevent::{Backend, Kevent};
use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const ROUNDS: u64 = 300;
const CHILD: &str = "KEVENT_AIO_SYSCALL_CHILD";
/// Setup and teardown: the queue, its backend, the pool, the harness.
const SLACK: u64 = 40;

/// Take the results of multishot `op` until its last one; returns
/// (bytes received, last result).
fn drain(kq: &kevent::Kqueue, aio: &Aio, op: u64, want: usize) -> (usize, Option<i64>) {
    let mut out = [Kevent::default(); 8];
    let mut bytes = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(r) = aio.next_result(op) {
            if r.last {
                return (bytes, Some(r.result));
            }
            bytes += r.buf.map_or(0, |b| b.len());
        }
        if want > 0 && bytes >= want {
            return (bytes, None);
        }
        assert!(
            Instant::now() < deadline,
            "op {op} stalled at {bytes} bytes"
        );
        kq.kevent(&[], &mut out, Some(Duration::from_secs(1)))
            .unwrap();
    }
}

fn connection_loop(backend: Backend) {
    let (kq, aio) = util::aio_kq(backend, Aio::with_pool(64, 2048).unwrap());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut numbers = std::collections::HashSet::new();
    for i in 0..ROUNDS {
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        numbers.insert(s.as_raw_fd());
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // FIONREAD: no `recv` of its own to count.
        while util::fionread(&s) < 18 {
            assert!(Instant::now() < deadline, "request never arrived");
            std::thread::yield_now();
        }
        let op = aio.recv_pooled(&kq, s.as_raw_fd(), i).unwrap();
        assert_eq!(drain(&kq, &aio, op, 18), (18, None));
        // SO_LINGER {on, 0}: the close sends a RST.
        util::linger0(&c);
        drop(c);
        assert_eq!(
            drain(&kq, &aio, op, 0),
            (0, Some(-i64::from(libc::ECONNRESET)))
        );
        drop(s);
    }
    assert!(numbers.len() < 4, "fd numbers were not reused: {numbers:?}");
    assert_eq!((aio.buffers_out(), aio.in_flight()), (0, 0));
}

fn count(tag: &str) -> HashMap<String, u64> {
    util::strace_child("pooled_receive_syscalls_per_connection", CHILD, tag)
}

#[test]
fn pooled_receive_syscalls_per_connection() {
    match std::env::var(CHILD).as_deref() {
        Ok("uring") => return connection_loop(Backend::IoUring),
        Ok("epoll") => return connection_loop(Backend::Epoll),
        _ => {}
    }
    for tag in ["epoll", "uring"] {
        let m = count(tag);
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        let (recv, ctl) = (get("recvfrom"), get("epoll_ctl"));
        eprintln!("{tag}, {ROUNDS} connections: recvfrom={recv} epoll_ctl={ctl}");
        let (want_recv, want_ctl) = if tag == "epoll" {
            (2 * ROUNDS, ROUNDS)
        } else {
            (0, 0)
        };
        assert!(
            (want_recv..=want_recv + SLACK).contains(&recv),
            "{tag}: expected {want_recv} recvfrom (+ setup): {recv} ({m:?})"
        );
        assert!(
            (want_ctl..=want_ctl + SLACK).contains(&ctl),
            "{tag}: expected {want_ctl} epoll_ctl (+ setup): {ctl} ({m:?})"
        );
    }
}
