//! kevent-net sockets: READ/WRITE `data` through the typed API (listener
//! backlog, bytes readable, send space, datagram size), EOF, LOWAT per
//! knote, per-knote modes, and deregistration on drop.

#[macro_use]
mod util;

use kevent::kevent_net::{Interest, KnoteOpts, TcpListener, TcpStream, UdpSocket};
use kevent::{Backend, Filter, Flags, Kevent};
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use util::*;

backends_complete_test!();

fn lo() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn connected(kq: &Arc<kevent::Kqueue>) -> (TcpStream, std::net::TcpStream, TcpListener) {
    let l = TcpListener::bind(lo()).unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let mut s = None;
    for _ in 0..500 {
        match l.accept() {
            Ok((x, _)) => {
                s = Some(x);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let _ = kq;
    (s.expect("accepted"), c, l)
}

backend_test!(listener_data_is_backlog_length, |b: Backend| {
    let kq = Arc::new(kq(b));
    let mut l = TcpListener::bind(lo()).unwrap();
    l.register(&kq, Interest::READ, KnoteOpts::level(7))
        .unwrap();
    let fd = l.as_raw_fd() as u64;
    let _c1 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let e = expect_data(&kq, fd, Filter::Read, 2);
    assert_eq!(e.udata, 7);
    let _ = l.accept().unwrap();
    expect_data(&kq, fd, Filter::Read, 1);
    let _ = l.accept().unwrap();
    expect_none(&kq, fd, Filter::Read);
});

backend_test!(stream_read_data_is_bytes_and_eof, |b: Backend| {
    let kq = Arc::new(kq(b));
    let (mut s, mut c, _l) = connected(&kq);
    s.register(&kq, Interest::READ, KnoteOpts::level(3))
        .unwrap();
    let fd = s.as_raw_fd() as u64;
    c.write_all(b"hello world").unwrap();
    let e = expect_data(&kq, fd, Filter::Read, 11);
    assert_eq!(e.udata, 3);
    assert!(!e.is_eof());
    c.shutdown(Shutdown::Write).unwrap();
    let e = expect_where(&kq, "READ with EOF", |e| e.ident == fd && e.is_eof());
    assert_eq!(e.data, 11);
    assert_eq!(read_avail(&mut s), 11);
    let e = expect_where(&kq, "READ EOF, empty", |e| e.ident == fd && e.is_eof());
    assert_eq!(e.data, 0);
});

backend_test!(stream_write_data_is_send_space, |b: Backend| {
    let kq = Arc::new(kq(b));
    let (mut s, _c, _l) = connected(&kq);
    s.register(&kq, Interest::WRITE, KnoteOpts::oneshot(9))
        .unwrap();
    let fd = s.as_raw_fd() as u64;
    let e = expect_event(&kq, fd, Filter::Write);
    assert!(e.data > 0, "send space {}", e.data);
    assert_eq!(e.udata, 9);
    // A level WRITE whose LOWAT is above the send space stays quiet...
    s.register(
        &kq,
        Interest::WRITE,
        KnoteOpts::level(9).with_lowat(1 << 30),
    )
    .unwrap();
    expect_none(&kq, fd, Filter::Write);
    // ...while the same knote with a LOWAT the space meets fires: the
    // silence was the LOWAT, not a dead knote.
    s.register(&kq, Interest::WRITE, KnoteOpts::level(9).with_lowat(1024))
        .unwrap();
    let e = expect_event(&kq, fd, Filter::Write);
    assert!(e.data >= 1024, "send space {} below the LOWAT", e.data);
    // Filled, a huge LOWAT is quiet again.
    let n = fill(&s);
    assert!(n > 0);
    s.register(
        &kq,
        Interest::WRITE,
        KnoteOpts::level(9).with_lowat(1 << 30),
    )
    .unwrap();
    expect_none(&kq, fd, Filter::Write);
});

backend_test!(read_lowat_per_knote, |b: Backend| {
    let kq = Arc::new(kq(b));
    let (mut s, mut c, _l) = connected(&kq);
    s.register(&kq, Interest::READ, KnoteOpts::level(1).with_lowat(10))
        .unwrap();
    let fd = s.as_raw_fd() as u64;
    c.write_all(b"12345").unwrap();
    expect_none(&kq, fd, Filter::Read);
    c.write_all(b"67890").unwrap();
    expect_data(&kq, fd, Filter::Read, 10);
});

backend_test!(per_knote_modes_and_both_interests, |b: Backend| {
    let kq = Arc::new(kq(b));
    let (mut s, mut c, _l) = connected(&kq);
    s.register(&kq, Interest::READ, KnoteOpts::edge(1)).unwrap();
    s.register(&kq, Interest::WRITE, KnoteOpts::level(2))
        .unwrap();
    let fd = s.as_raw_fd() as u64;
    c.write_all(b"x").unwrap();
    expect_data(&kq, fd, Filter::Read, 1);
    // CLEAR: not again without new data; the level WRITE keeps coming.
    expect_event(&kq, fd, Filter::Write);
    expect_event(&kq, fd, Filter::Write);
    s.deregister(Interest::WRITE).unwrap();
    assert_eq!(
        s.registration().and_then(|r| r.interest()),
        Some(Interest::READ)
    );
});

backend_test!(drop_deletes_knotes, |b: Backend| {
    let kq = Arc::new(kq(b));
    let (mut s, mut c, _l) = connected(&kq);
    s.register(&kq, Interest::BOTH, KnoteOpts::level(1))
        .unwrap();
    let raw = s.as_raw_fd();
    let fd = raw as u64;
    c.write_all(b"x").unwrap();
    expect_event(&kq, fd, Filter::Read);
    // Keep the socket's open file past the drop, then put it back on the
    // same number: had the drop left its knotes, they would still be
    // there for this (same file, same number) and DELETE would succeed.
    // SAFETY: dup of an open fd; the copy is closed below.
    let keep = unsafe { libc::dup(raw) };
    assert!(keep >= 0);
    drop(s);
    // SAFETY: `keep` is open; `raw` is free again (closed by the drop).
    assert_eq!(unsafe { libc::dup2(keep, raw) }, raw);
    for f in [Filter::Read, Filter::Write] {
        let e = kq
            .kevent(&[Kevent::new(fd, f, Flags::DELETE, 0, 0, 0)], &mut [], None)
            .expect_err("knote survived the drop");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{f:?}: {e}");
    }
    // And no stale event for the number either.
    c.write_all(b"y").unwrap();
    expect_none(&kq, fd, Filter::Read);
    // SAFETY: both are our fds, closed once.
    unsafe {
        libc::close(raw);
        libc::close(keep);
    }
});

backend_test!(register_in_two_queues_is_refused, |b: Backend| {
    let kq1 = Arc::new(kq(b));
    let kq2 = Arc::new(kq(b));
    let (mut s, _c, _l) = connected(&kq1);
    s.register(&kq1, Interest::READ, KnoteOpts::level(1))
        .unwrap();
    let e = s
        .register(&kq2, Interest::READ, KnoteOpts::level(1))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
});

backend_test!(nonblocking_connect_then_write_knote, |b: Backend| {
    let kq = Arc::new(kq(b));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    s.register(&kq, Interest::WRITE, KnoteOpts::oneshot(5))
        .unwrap();
    let e = expect_event(&kq, s.as_raw_fd() as u64, Filter::Write);
    assert_eq!(e.udata, 5);
    assert!(s.take_error().unwrap().is_none());
    assert!(s.peer_addr().is_ok());
});

backend_test!(udp_read_data_is_datagram_size, |b: Backend| {
    let kq = Arc::new(kq(b));
    let mut u = UdpSocket::bind(lo()).unwrap();
    u.register(&kq, Interest::READ, KnoteOpts::level(4))
        .unwrap();
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(&[0u8; 100], u.local_addr().unwrap()).unwrap();
    tx.send_to(&[0u8; 30], u.local_addr().unwrap()).unwrap();
    let fd = u.as_raw_fd() as u64;
    expect_data(&kq, fd, Filter::Read, 100);
    let mut buf = [0u8; 256];
    assert_eq!(u.recv_from(&mut buf).unwrap().0, 100);
    expect_data(&kq, fd, Filter::Read, 30);
});

backend_test!(nodata_knote_and_close_unregistered, |b: Backend| {
    let kq = Arc::new(kq(b));
    let (mut s, mut c, l) = connected(&kq);
    s.register(&kq, Interest::READ, KnoteOpts::edge(9).with_nodata())
        .unwrap();
    c.write_all(b"hello").unwrap();
    let fd = s.as_raw_fd() as u64;
    // NODATA: data is 1, not the 5 bytes readable.
    let e = expect_data(&kq, fd, Filter::Read, 1);
    assert_eq!(e.udata, 9);
    // Closed without EV_DELETE: a socket reusing the number registers
    // cleanly and only its own knote reports.
    s.close_unregistered();
    let mut c2 = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let mut s2 = None;
    for _ in 0..500 {
        match l.accept() {
            Ok((x, _)) => {
                s2 = Some(x);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let mut s2 = s2.expect("accepted");
    s2.register(&kq, Interest::READ, KnoteOpts::edge(10))
        .unwrap();
    let _ = c.write_all(b"x");
    c2.write_all(b"abc").unwrap();
    let fd2 = s2.as_raw_fd() as u64;
    let e = expect_data(&kq, fd2, Filter::Read, 3);
    assert_eq!(e.udata, 10);
});
