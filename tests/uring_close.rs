//! Closing an fd without `EV_DELETE` releases it at once, as FreeBSD drops
//! knotes on close: the io_uring backend keeps registrations in epoll,
//! which holds no file reference, and only the wait goes through the ring
//! (a `PollAdd` per knote would pin the socket: no FIN, the peer never
//! sees EOF). Run on both backends.

#[macro_use]
mod util;

use kevent::{Backend, Filter, Flags};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use util::*;

backends_complete_test!();

const R: Filter = Filter::Read;
const W: Filter = Filter::Write;

/// Read `peer` until EOF; how long it took, or `None` past `limit`.
fn time_to_eof(mut peer: &std::net::TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if t.elapsed() > limit {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("peer read: {e}"),
        }
    }
}

backend_test!(close_without_delete_releases_the_socket, |b: Backend| {
    let kq = kq(b);
    let (c, s) = tcp_pair();
    let n = s.as_raw_fd();
    change(
        &kq,
        &[
            ev(n as u64, R, Flags::ADD, 0, 0, 1),
            ev(n as u64, W, Flags::ADD | Flags::CLEAR, 0, 0, 2),
        ],
    );
    write_all(&c, b"ping");
    // Both knotes fire, so the backend's waits have run and are armed
    // again (on io_uring: EPOLL_WAITs in flight in the ring).
    expect_events(&kq, &[(n as u64, R), (n as u64, W)]);
    assert!(drain(&kq, Duration::ZERO)
        .iter()
        .any(|e| e.ident == n as u64));
    // Consume what came (a close with unread data would send RST, not FIN).
    assert_eq!(read_avail(&s), 4);
    // Close the socket without EV_DELETE: the number goes straight to a
    // Unix socket (dup2, so no other test thread can take it between).
    let (reused, p2) = reuse_by_socketpair(s);
    // The TCP socket is gone: the peer gets its FIN promptly.
    match time_to_eof(&c, Duration::from_secs(3)) {
        Some(took) => eprintln!("{b:?}: peer saw EOF after {took:?}"),
        None => panic!("{b:?}: the peer saw no EOF within 3 s: the closed socket is still alive"),
    }
    // No stale READ or WRITE event for the reused number.
    expect_none(&kq, n as u64, R);
    expect_none(&kq, n as u64, W);
    // A fresh ADD on the number works and reports the new file only.
    change(&kq, &[ev(n as u64, R, Flags::ADD, 0, 0, 3)]);
    write_all(&p2, b"xyz");
    let e = expect_data(&kq, n as u64, R, 3);
    assert_eq!(e.udata, 3);
    expect_none(&kq, n as u64, W);
    drop((reused, p2));
});

backend_test!(
    close_while_a_wait_is_blocked_releases_the_socket,
    |b: Backend| {
        // The same with another thread blocked in kevent() at the moment of
        // the close (on io_uring the EPOLL_WAITs are in flight all along).
        use std::sync::Arc;
        let kq = Arc::new(kq(b));
        let (c, s) = tcp_pair();
        let n = s.as_raw_fd();
        change(&kq, &[ev(n as u64, R, Flags::ADD | Flags::CLEAR, 0, 0, 1)]);
        change(
            &kq,
            &[ev(1, Filter::User, Flags::ADD | Flags::CLEAR, 0, 0, 0)],
        );
        let waiter = {
            let kq = Arc::clone(&kq);
            std::thread::spawn(move || {
                let mut out = [kevent::Kevent::default(); 8];
                loop {
                    let got = kq
                        .kevent(&[], &mut out, Some(Duration::from_secs(5)))
                        .unwrap();
                    if got == 0 || out[..got].iter().any(|e| e.filter == Filter::User) {
                        return got;
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let (reused, _p2) = reuse_by_socketpair(s);
        let took = time_to_eof(&c, Duration::from_secs(3));
        kq.trigger(1).unwrap();
        assert!(
            waiter.join().unwrap() > 0,
            "the waiter timed out instead of seeing the trigger"
        );
        assert!(took.is_some(), "{b:?}: the peer saw no EOF within 3 s");
        drop(reused);
    }
);
