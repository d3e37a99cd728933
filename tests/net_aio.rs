//! kevent-net network AIO (`Filter::Aio`) on both backends: accept, recv,
//! send and sendfile round trips with their data, EOF, errors, cancel with
//! the buffer handed back, many operations in flight, and op ids.

#[macro_use]
mod util;

use kevent::kevent_core::Kqueue as CoreQueue;
use kevent::kevent_net::aio::Aio;
use kevent::{Backend, Filter, Kevent};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

backends_complete_test!();

fn queue(b: Backend) -> (kevent::Kqueue, Aio) {
    let (aio, storage) = Aio::new();
    let kq = kevent::Kqueue::builder(b)
        .unwrap()
        .storage(storage)
        .build()
        .unwrap();
    assert_eq!(kq.backend(), b);
    (kq, aio)
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    (c, s)
}

/// Collect AIO completions until every op in `want` has one: op -> (data, udata).
#[track_caller]
fn wait_ops(kq: &CoreQueue, want: &[u64]) -> HashMap<u64, (i64, u64)> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = [Kevent::default(); 64];
    while want.iter().any(|op| !got.contains_key(op)) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("timed out waiting for AIO completions");
        let n = kq.kevent(&[], &mut out, Some(left)).unwrap();
        for e in &out[..n] {
            assert_eq!(e.filter, Filter::Aio);
            assert!(
                got.insert(e.ident, (e.data, e.udata)).is_none(),
                "two completions for op {}",
                e.ident
            );
        }
    }
    got
}

#[track_caller]
fn wait_one(kq: &CoreQueue, op: u64) -> (i64, u64) {
    wait_ops(kq, &[op])[&op]
}

/// No event arrives within `ms`.
#[track_caller]
fn quiet(kq: &CoreQueue, ms: u64) {
    let mut out = [Kevent::default(); 4];
    let n = kq
        .kevent(&[], &mut out, Some(Duration::from_millis(ms)))
        .unwrap();
    assert_eq!(n, 0, "unexpected event {:?}", &out[..n]);
}

backend_test!(recv_send_round_trip, |b| {
    let (kq, aio) = queue(b);
    let (mut c, s) = pair();
    let op = aio
        .recv(&kq, s.as_raw_fd(), Vec::with_capacity(128), 11)
        .unwrap();
    quiet(&kq, 20);
    assert!(aio.take_buffer(op).is_none(), "buffer handed out in flight");
    c.write_all(b"hello aio").unwrap();
    assert_eq!(wait_one(&kq, op), (9, 11));
    assert_eq!(aio.take_buffer(op).unwrap(), b"hello aio");
    assert!(aio.take_buffer(op).is_none(), "buffer taken twice");

    let msg: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let op = aio.send(&kq, s.as_raw_fd(), msg.clone(), 12).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 200_000];
        c.read_exact(&mut got).unwrap();
        got
    });
    assert_eq!(wait_one(&kq, op), (200_000, 12));
    assert_eq!(aio.take_buffer(op).unwrap(), msg);
    assert_eq!(reader.join().unwrap(), msg);
    assert_eq!(aio.in_flight(), 0);
});

backend_test!(recv_eof_is_zero, |b| {
    let (kq, aio) = queue(b);
    let (c, s) = pair();
    let op = aio
        .recv(&kq, s.as_raw_fd(), Vec::with_capacity(16), 1)
        .unwrap();
    drop(c);
    assert_eq!(wait_one(&kq, op), (0, 1));
    assert!(aio.take_buffer(op).unwrap().is_empty());
});

backend_test!(recv_connection_reset, |b| {
    let (kq, aio) = queue(b);
    let (c, s) = pair();
    let op = aio
        .recv(&kq, s.as_raw_fd(), Vec::with_capacity(16), 1)
        .unwrap();
    // SO_LINGER 0: close sends RST.
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a live `linger` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(c);
    assert_eq!(wait_one(&kq, op).0, -(libc::ECONNRESET as i64));
    assert!(aio.take_buffer(op).unwrap().is_empty());
});

backend_test!(bad_fd_is_an_error_event, |b| {
    let (kq, aio) = queue(b);
    // A number no fd has (a closed one could be reused by a test running
    // in parallel).
    let fd = 1 << 30;
    let op = aio.recv(&kq, fd, Vec::with_capacity(8), 3).unwrap();
    assert_eq!(wait_one(&kq, op), (-(libc::EBADF as i64), 3));
    assert!(aio.take_buffer(op).is_some());
    let op = aio.send(&kq, -1, vec![1, 2, 3], 4).unwrap();
    assert_eq!(wait_one(&kq, op), (-(libc::EBADF as i64), 4));
    assert_eq!(aio.take_buffer(op).unwrap(), [1, 2, 3]);
});

backend_test!(accept_round_trip, |b| {
    let (kq, aio) = queue(b);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let op = aio.accept(&kq, l.as_raw_fd(), 5).unwrap();
    quiet(&kq, 20);
    let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (fd, udata) = wait_one(&kq, op);
    assert_eq!(udata, 5);
    assert!(fd >= 0, "accept failed: {fd}");
    // SAFETY: the completion handed us this fd.
    let s = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let s = TcpStream::from(s);
    assert!(aio.take_buffer(op).is_none(), "accept has no buffer");
    assert_eq!(aio.in_flight(), 0);
    // The accepted socket is non-blocking and works with AIO.
    let op = aio
        .send(&kq, s.as_raw_fd(), b"welcome".to_vec(), 6)
        .unwrap();
    assert_eq!(wait_one(&kq, op), (7, 6));
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"welcome");
});

backend_test!(sendfile_round_trip, |b| {
    let (kq, aio) = queue(b);
    let dir = std::env::temp_dir().join(format!("kevent-aio-{}-{b:?}", std::process::id()));
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&dir, &data).unwrap();
    let f = std::fs::File::open(&dir).unwrap();
    let (mut c, s) = pair();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while got.len() < 299_000 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    // Skip the first 1000 bytes; ask for more than is left after 500 short.
    let op = aio
        .sendfile(&kq, s.as_raw_fd(), f.as_raw_fd(), 1000, 299_500, 9)
        .unwrap();
    assert_eq!(wait_one(&kq, op), (299_000, 9));
    let got = reader.join().unwrap();
    assert_eq!(got, &data[1000..]);
    // At end of file: 0 bytes.
    let op = aio
        .sendfile(&kq, s.as_raw_fd(), f.as_raw_fd(), 300_000, 10, 10)
        .unwrap();
    assert_eq!(wait_one(&kq, op), (0, 10));
    std::fs::remove_file(&dir).unwrap();
});

backend_test!(cancel_returns_the_buffer, |b| {
    let (kq, aio) = queue(b);
    let (_c, s) = pair();
    let buf = Vec::with_capacity(4096);
    let ptr = buf.as_ptr();
    let op = aio.recv(&kq, s.as_raw_fd(), buf, 21).unwrap();
    quiet(&kq, 10);
    assert!(aio.take_buffer(op).is_none());
    assert!(aio.cancel(&kq, op).unwrap());
    assert_eq!(wait_one(&kq, op), (-(libc::ECANCELED as i64), 21));
    let back = aio.take_buffer(op).unwrap();
    assert_eq!((back.as_ptr(), back.len(), back.capacity()), (ptr, 0, 4096));
    // Cancelling a finished op says so.
    assert!(!aio.cancel(&kq, op).unwrap());
    assert_eq!(aio.in_flight(), 0);
    // The socket still works after the cancel.
    let (mut c, s) = pair();
    let op = aio.recv(&kq, s.as_raw_fd(), back, 22).unwrap();
    c.write_all(b"after").unwrap();
    assert_eq!(wait_one(&kq, op), (5, 22));
    assert_eq!(aio.take_buffer(op).unwrap(), b"after");
});

backend_test!(cancel_of_accept, |b| {
    let (kq, aio) = queue(b);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let op = aio.accept(&kq, l.as_raw_fd(), 1).unwrap();
    quiet(&kq, 10);
    assert!(aio.cancel(&kq, op).unwrap());
    assert_eq!(wait_one(&kq, op), (-(libc::ECANCELED as i64), 1));
});

backend_test!(many_ops_in_flight_ids_unique, |b| {
    let (kq, aio) = queue(b);
    const N: usize = 200;
    let pairs: Vec<(TcpStream, TcpStream)> = (0..N).map(|_| pair()).collect();
    let mut ids = Vec::new();
    for (i, (_, s)) in pairs.iter().enumerate() {
        ids.push(
            aio.recv(&kq, s.as_raw_fd(), Vec::with_capacity(16), i as u64)
                .unwrap(),
        );
    }
    let unique: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), N, "op ids reused while in flight");
    assert_eq!(aio.in_flight(), N);
    for (i, (c, _)) in pairs.iter().enumerate() {
        (&*c).write_all(format!("m{i}").as_bytes()).unwrap();
    }
    let got = wait_ops(&kq, &ids);
    let mut next = Vec::new();
    for (i, op) in ids.iter().enumerate() {
        let want = format!("m{i}");
        assert_eq!(got[op], (want.len() as i64, i as u64));
        let buf = aio.take_buffer(*op).unwrap();
        assert_eq!(buf, want.as_bytes());
        // Recycle the buffer: a new op gets a new id.
        let (_, s) = &pairs[i];
        next.push(aio.recv(&kq, s.as_raw_fd(), buf, 0).unwrap());
    }
    for op in &next {
        assert!(!unique.contains(op), "op id {op} reused");
        assert!(aio.cancel(&kq, *op).unwrap());
    }
    let got = wait_ops(&kq, &next);
    assert!(
        got.values().all(|&(d, _)| d == -(libc::ECANCELED as i64)),
        "{:?}",
        got.values()
            .filter(|v| v.0 != -(libc::ECANCELED as i64))
            .collect::<Vec<_>>()
    );
    for op in &next {
        assert!(aio.take_buffer(*op).is_some());
    }
    assert_eq!(aio.in_flight(), 0);
});

backend_test!(ping_pong_in_one_loop, |b| {
    let (kq, aio) = queue(b);
    let (c, s) = pair();
    c.set_nonblocking(true).unwrap();
    let (cfd, sfd) = (c.as_raw_fd(), s.as_raw_fd());
    let mut srecv = aio.recv(&kq, sfd, Vec::with_capacity(64), 1).unwrap();
    let mut crecv = aio.recv(&kq, cfd, Vec::with_capacity(64), 2).unwrap();
    aio.send(&kq, cfd, vec![0u8; 8], 3).unwrap();
    let mut out = [Kevent::default(); 8];
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while rounds < 100 {
        assert!(Instant::now() < deadline);
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(5)))
            .unwrap();
        for e in &out[..n] {
            match e.udata {
                1 => {
                    let buf = aio.take_buffer(e.ident).unwrap();
                    assert_eq!(buf.len(), 8);
                    aio.send(&kq, sfd, buf, 4).unwrap();
                    srecv = aio.recv(&kq, sfd, Vec::with_capacity(64), 1).unwrap();
                }
                2 => {
                    let mut buf = aio.take_buffer(e.ident).unwrap();
                    assert_eq!(buf.len(), 8);
                    assert_eq!(buf[0] as usize, rounds % 256);
                    rounds += 1;
                    buf[0] = (rounds % 256) as u8;
                    aio.send(&kq, cfd, buf, 3).unwrap();
                    crecv = aio.recv(&kq, cfd, Vec::with_capacity(64), 2).unwrap();
                }
                3 | 4 => {
                    assert_eq!(e.data, 8);
                    aio.take_buffer(e.ident).unwrap();
                }
                u => panic!("udata {u}"),
            }
        }
    }
    for op in [srecv, crecv] {
        aio.cancel(&kq, op).unwrap();
    }
});

backend_test!(dropping_the_queue_with_ops_in_flight, |b| {
    let (kq, aio) = queue(b);
    let (_c, s) = pair();
    let op = aio.recv(&kq, s.as_raw_fd(), vec![0u8; 1024], 1).unwrap();
    quiet(&kq, 5);
    drop(kq);
    // Never handed out while the kernel may still own it.
    let _ = aio.take_buffer(op);
    // Another queue cannot take an op of this handle.
    let (kq2, _other) = queue(b);
    let e = aio
        .recv(&kq2, s.as_raw_fd(), vec![1, 2], 1)
        .expect_err("op submitted to a queue with another AIO storage");
    assert_eq!(e.buf, [1, 2]);
});

backend_test!(submit_while_another_thread_waits, |b| {
    let (kq, aio) = queue(b);
    let (mut c, s) = pair();
    c.write_all(b"already here").unwrap();
    std::thread::scope(|sc| {
        let waiter = sc.spawn(|| {
            let mut out = [Kevent::default(); 4];
            let n = kq
                .kevent(&[], &mut out, Some(Duration::from_secs(10)))
                .unwrap();
            out[..n].to_vec()
        });
        // Let the waiter block in the backend first.
        std::thread::sleep(Duration::from_millis(100));
        let op = aio
            .recv(&kq, s.as_raw_fd(), Vec::with_capacity(64), 31)
            .unwrap();
        let t0 = Instant::now();
        let evs = waiter.join().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "waiter not woken");
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!((evs[0].ident, evs[0].data, evs[0].udata), (op, 12, 31));
        assert_eq!(aio.take_buffer(op).unwrap(), b"already here");
    });
});

backend_test!(send_to_a_reset_peer_is_an_error, |b| {
    let (kq, aio) = queue(b);
    let (c, s) = pair();
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a live `linger` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
    drop(c);
    std::thread::sleep(Duration::from_millis(20));
    // The first send may be accepted before the RST is seen; keep sending
    // until the error arrives (never a SIGPIPE: MSG_NOSIGNAL).
    let mut last = 0;
    for i in 0..10 {
        let op = aio.send(&kq, s.as_raw_fd(), vec![0u8; 1024], i).unwrap();
        let (data, udata) = wait_one(&kq, op);
        assert_eq!(udata, i);
        assert!(aio.take_buffer(op).is_some());
        last = data;
        if data < 0 {
            break;
        }
    }
    assert!(
        last == -(libc::ECONNRESET as i64) || last == -(libc::EPIPE as i64),
        "send to a reset peer: {last}"
    );
});

backend_test!(fd_number_reused_after_close, |b| {
    // epoll re-arms a seen fd with EPOLL_CTL_MOD first; after a close the
    // registration is gone and the number may name another socket.
    let (kq, aio) = queue(b);
    let (mut c, s) = pair();
    let op = aio
        .recv(&kq, s.as_raw_fd(), Vec::with_capacity(8), 1)
        .unwrap();
    quiet(&kq, 5);
    c.write_all(b"one").unwrap();
    assert_eq!(wait_one(&kq, op), (3, 1));
    aio.take_buffer(op).unwrap();
    let (mut c2, s2) = pair();
    let num = s.as_raw_fd();
    // SAFETY: dup2 atomically swaps the socket behind `num` (closing the
    // old one, which drops its epoll registration) for a second fd of
    // `s2`'s; `s` keeps owning the number and closes it at the end. No
    // other test can grab the number in between.
    assert_eq!(unsafe { libc::dup2(s2.as_raw_fd(), num) }, num);
    drop(s2);
    drop(c);
    let op = aio.recv(&kq, num, Vec::with_capacity(8), 2).unwrap();
    quiet(&kq, 5);
    c2.write_all(b"two").unwrap();
    assert_eq!(wait_one(&kq, op), (3, 2));
    assert_eq!(aio.take_buffer(op).unwrap(), b"two");
});
