//! kevent-net network AIO (`Filter::Aio`) on both backends: accept, recv,
//! send and sendfile round trips with their data, EOF, errors, cancel with
//! the buffer handed back, many operations in flight, and op ids.

#[macro_use]
mod util;

use kevent::kevent_core::Kqueue as CoreQueue;
use kevent::kevent_net::aio::{Aio, Completion, PooledBuf};
use kevent::{Backend, Filter, Kevent};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

backends_complete_test!();

fn queue(b: Backend) -> (kevent::Kqueue, Aio) {
    util::aio_kq(b, Aio::new())
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
    // SO_LINGER {on, 0}: the close sends a RST.
    util::linger0(&c);
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
    let f = std::sync::Arc::new(std::fs::File::open(&dir).unwrap());
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
        .sendfile(&kq, s.as_raw_fd(), f.clone(), 1000, 299_500, 9)
        .unwrap();
    assert_eq!(wait_one(&kq, op), (299_000, 9));
    let got = reader.join().unwrap();
    assert_eq!(got, &data[1000..]);
    // At end of file: 0 bytes.
    let op = aio
        .sendfile(&kq, s.as_raw_fd(), f.clone(), 300_000, 10, 10)
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
    // SO_LINGER {on, 0}: the close sends a RST.
    util::linger0(&c);
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

// ---- multishot: accept_multi, recv_pooled ---------------------------------

fn pooled_queue(b: Backend, count: u16, size: u32) -> (kevent::Kqueue, Aio) {
    util::aio_kq(b, Aio::with_pool(count, size).unwrap())
}

/// One result of a multishot op, its bytes copied out; `buf` is kept
/// only when asked (a held buffer is not back in the pool).
#[derive(Debug)]
struct Got {
    result: i64,
    data: Vec<u8>,
    last: bool,
    /// Held for its drop (the buffer goes back then).
    _buf: Option<PooledBuf>,
}

/// Wait for events of multishot `op` and take its results until `done`
/// says stop (or the op's last result); returns every result taken and
/// whether an event carried EOF. Buffers go back to the pool at once
/// unless `keep`.
#[track_caller]
fn drain_multi(
    kq: &CoreQueue,
    aio: &Aio,
    op: u64,
    keep: bool,
    mut done: impl FnMut(&[Got]) -> bool,
) -> (Vec<Got>, bool) {
    let mut got: Vec<Got> = Vec::new();
    let mut eof = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = [Kevent::default(); 16];
    while !done(&got) && !got.last().is_some_and(|c| c.last) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            let bytes: usize = got.iter().map(|g| g.data.len()).sum();
            panic!(
                "timed out waiting for multishot results ({} taken, {bytes} bytes, last {:?}, {} buffers out)",
                got.len(),
                got.last(),
                aio.buffers_out()
            );
        };
        let n = kq.kevent(&[], &mut out, Some(left)).unwrap();
        for e in &out[..n] {
            assert_eq!((e.filter, e.ident), (Filter::Aio, op), "{e:?}");
            eof |= e.is_eof();
            assert!(e.data >= 0, "{e:?}");
        }
        while let Some(Completion { result, buf, last }) = aio.next_result(op) {
            let data = buf.as_ref().map_or(Vec::new(), |b| b.to_vec());
            if let Some(b) = &buf {
                assert_eq!(b.len() as i64, result);
            }
            got.push(Got {
                result,
                data,
                last,
                _buf: if keep { buf } else { None },
            });
        }
    }
    (got, eof)
}

backend_test!(accept_multi_takes_every_connection, |b| {
    let (kq, aio) = queue(b);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let op = aio.accept_multi(&kq, l.as_raw_fd(), 40).unwrap();
    quiet(&kq, 10);
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(l.local_addr().unwrap()).unwrap())
        .collect();
    let (got, eof) = drain_multi(&kq, &aio, op, false, |g| g.len() >= 5);
    assert!(!eof);
    assert_eq!(got.len(), 5, "{got:?}");
    let mut peers = HashSet::new();
    for c in &got {
        assert!(c.result >= 0 && c.data.is_empty() && !c.last, "{c:?}");
        // SAFETY: each result is a fresh fd handed to us.
        let s = TcpStream::from(unsafe { OwnedFd::from_raw_fd(c.result as i32) });
        peers.insert(s.peer_addr().unwrap());
    }
    let mine: HashSet<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    assert_eq!(peers, mine);
    // Still armed: a sixth connection comes too.
    let _c6 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (got, _) = drain_multi(&kq, &aio, op, false, |g| !g.is_empty());
    assert!(got[0].result >= 0);
    // SAFETY: as above.
    drop(unsafe { OwnedFd::from_raw_fd(got[0].result as i32) });
    assert!(aio.cancel(&kq, op).unwrap());
    let (got, eof) = drain_multi(&kq, &aio, op, false, |_| false);
    assert!(eof, "the last event carries EOF");
    let last = got.last().unwrap();
    assert_eq!((last.result, last.last), (-(libc::ECANCELED as i64), true));
    assert!(aio.next_result(op).is_none());
    assert_eq!(aio.in_flight(), 0);
    assert!(!aio.cancel(&kq, op).unwrap(), "cancel of an ended op");
});

backend_test!(recv_pooled_streams_in_order_until_eof, |b| {
    let (kq, aio) = pooled_queue(b, 8, 1024);
    let (mut c, s) = pair();
    let op = aio.recv_pooled(&kq, s.as_raw_fd(), 50).unwrap();
    quiet(&kq, 10);
    let msg: Vec<u8> = (0..100_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let m2 = msg.clone();
    let writer = std::thread::spawn(move || {
        for part in m2.chunks(3000) {
            c.write_all(part).unwrap();
        }
        // c dropped: EOF
    });
    let (got, eof) = drain_multi(&kq, &aio, op, false, |_| false);
    writer.join().unwrap();
    let mut data = Vec::new();
    for c in &got {
        assert!(c.data.len() <= 1024);
        data.extend_from_slice(&c.data);
    }
    assert!(eof);
    let last = got.last().unwrap();
    assert_eq!(
        (last.result, last.last),
        (0, true),
        "EOF is the last result"
    );
    assert!(last.data.is_empty());
    assert!(got[..got.len() - 1].iter().all(|c| c.result > 0 && !c.last));
    assert_eq!(data, msg);
    assert_eq!(aio.buffers_out(), 0);
    assert_eq!(aio.in_flight(), 0);
});

backend_test!(recv_pooled_pauses_when_the_pool_is_dry, |b| {
    // Two buffers of 64 bytes; the results are held, so the receive
    // starves (io_uring: ENOBUFS) and must resume once they come back.
    let (kq, aio) = pooled_queue(b, 2, 64);
    let (mut c, s) = pair();
    let op = aio.recv_pooled(&kq, s.as_raw_fd(), 51).unwrap();
    let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    c.write_all(&msg).unwrap();
    let (held, _) = drain_multi(&kq, &aio, op, true, |g| g.len() >= 2);
    assert_eq!(held.len(), 2);
    assert_eq!(aio.buffers_out(), 2);
    quiet(&kq, 30);
    assert!(aio.next_result(op).is_none(), "a result without a buffer");
    let mut data: Vec<u8> = held.iter().flat_map(|c| c.data.clone()).collect();
    drop(held);
    // Each chunk's buffer goes back at once: the receive resumes.
    let (got, _) = drain_multi(&kq, &aio, op, false, |g| {
        data.len() + g.iter().map(|c| c.data.len()).sum::<usize>() >= 1000
    });
    for c in &got {
        data.extend_from_slice(&c.data);
    }
    assert_eq!(data, msg);
    assert!(aio.cancel(&kq, op).unwrap());
    let (got, _) = drain_multi(&kq, &aio, op, false, |_| false);
    assert_eq!(got.last().unwrap().result, -(libc::ECANCELED as i64));
    drop(got);
    assert_eq!((aio.buffers_out(), aio.in_flight()), (0, 0));
});

backend_test!(recv_pooled_cancel_and_delete, |b| {
    let (kq, aio) = pooled_queue(b, 4, 256);
    let (mut c, s) = pair();
    let op = aio.recv_pooled(&kq, s.as_raw_fd(), 52).unwrap();
    quiet(&kq, 10);
    assert!(aio.cancel(&kq, op).unwrap());
    let (got, eof) = drain_multi(&kq, &aio, op, false, |_| false);
    assert!(eof);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].result, got[0].last),
        (-(libc::ECANCELED as i64), true)
    );
    assert_eq!((aio.buffers_out(), aio.in_flight()), (0, 0));
    // EV_DELETE of a live op's knote cancels it and discards its results.
    let op = aio.recv_pooled(&kq, s.as_raw_fd(), 53).unwrap();
    c.write_all(b"unread").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let del = Kevent::new(op, Filter::Aio, kevent::Flags::DELETE, 0, 0, 0);
    kq.kevent(&[del], &mut [], None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while aio.in_flight() > 0 {
        assert!(Instant::now() < deadline, "deleted op never ended");
        let mut out = [Kevent::default(); 4];
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_millis(10)))
            .unwrap();
        assert_eq!(n, 0, "event for a deleted op: {:?}", &out[..n]);
    }
    assert!(aio.next_result(op).is_none());
    assert_eq!(aio.buffers_out(), 0);
});

/// Wait until `s` has `n` bytes queued (and what the peer sent with
/// them, a FIN included, has arrived too: loopback delivers in order).
#[track_caller]
fn wait_readable(s: &TcpStream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; n];
    while s.peek(&mut buf).map_or(0, |k| k) < n {
        assert!(Instant::now() < deadline, "{n} bytes never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(5));
}

backend_test!(recv_pooled_started_on_data_and_eof_reports_both, |b| {
    // A new pooled receive that stops at a short read registers the
    // socket afterwards: the EOF already there must still be reported.
    let (kq, aio) = pooled_queue(b, 8, 1024);
    let (mut c, s) = pair();
    c.write_all(b"request").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    wait_readable(&s, 7);
    let op = aio.recv_pooled(&kq, s.as_raw_fd(), 54).unwrap();
    let (got, eof) = drain_multi(&kq, &aio, op, false, |_| false);
    assert!(eof);
    let data: Vec<u8> = got.iter().flat_map(|g| g.data.clone()).collect();
    assert_eq!(data, b"request");
    let last = got.last().unwrap();
    assert_eq!((last.result, last.last), (0, true), "{got:?}");
    assert_eq!((aio.buffers_out(), aio.in_flight()), (0, 0));
});

backend_test!(recv_pooled_started_on_data_then_more_arrives, |b| {
    let (kq, aio) = pooled_queue(b, 8, 1024);
    let (mut c, s) = pair();
    c.write_all(b"first").unwrap();
    wait_readable(&s, 5);
    let op = aio.recv_pooled(&kq, s.as_raw_fd(), 55).unwrap();
    let (got, _) = drain_multi(&kq, &aio, op, false, |g| {
        g.iter().map(|c| c.data.len()).sum::<usize>() >= 5
    });
    let data: Vec<u8> = got.iter().flat_map(|g| g.data.clone()).collect();
    assert_eq!(data, b"first");
    quiet(&kq, 10);
    c.write_all(b"second").unwrap();
    let (got, _) = drain_multi(&kq, &aio, op, false, |g| {
        g.iter().map(|c| c.data.len()).sum::<usize>() >= 6
    });
    let data: Vec<u8> = got.iter().flat_map(|g| g.data.clone()).collect();
    assert_eq!(data, b"second");
    assert!(aio.cancel(&kq, op).unwrap());
    drain_multi(&kq, &aio, op, false, |_| false);
    assert_eq!((aio.buffers_out(), aio.in_flight()), (0, 0));
});

backend_test!(pooled_receives_on_a_reused_number_after_reset, |b| {
    // A server's connections: each pooled receive ends with the peer's
    // reset, the socket is closed, and the next connection lands on the
    // same number (the storage registers it afresh). The number is held
    // by a placeholder between rounds, and each socket is dup2'ed onto it
    // (dup2 closes what the number held): tests running in parallel open
    // fds too, so a number freed by close(2) could be taken before the
    // next accept.
    let (kq, aio) = pooled_queue(b, 8, 1024);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let placeholder = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: dup(2) of our own open fd; the result is owned below.
    let number = unsafe { libc::dup(placeholder.as_raw_fd()) };
    assert!(number >= 0);
    // Closed at the end (the last socket was replaced by a placeholder).
    // SAFETY: `number` is a fresh fd of ours, owned only here.
    let _number_owner = unsafe { OwnedFd::from_raw_fd(number) };
    for i in 0..20u64 {
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        // SAFETY: dup2(2) onto our own reserved number.
        assert_eq!(unsafe { libc::dup2(accepted.as_raw_fd(), number) }, number);
        drop(accepted);
        // SAFETY: `number` now holds the socket. Not owned by `s`: the
        // number's owner closes it at the end.
        let s = std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(number) });
        s.set_nonblocking(true).unwrap();
        c.write_all(b"GET").unwrap();
        if i % 2 == 0 {
            wait_readable(&s, 3);
        }
        let op = aio.recv_pooled(&kq, s.as_raw_fd(), 100 + i).unwrap();
        let (got, _) = drain_multi(&kq, &aio, op, false, |g| {
            g.iter().map(|c| c.data.len()).sum::<usize>() >= 3
        });
        let data: Vec<u8> = got.iter().flat_map(|g| g.data.clone()).collect();
        assert_eq!(data, b"GET", "round {i}");
        // SO_LINGER {on, 0}: the close sends a RST.
        util::linger0(&c);
        drop(c);
        let (got, eof) = drain_multi(&kq, &aio, op, false, |_| false);
        assert!(eof, "round {i}");
        let last = got.last().unwrap();
        assert_eq!(
            (last.result, last.last),
            (-(libc::ECONNRESET as i64), true),
            "round {i}: {got:?}"
        );
        // Close the socket, keeping the number: the placeholder goes onto it.
        // SAFETY: dup2(2) of our own fds.
        let rc = unsafe { libc::dup2(placeholder.as_raw_fd(), number) };
        assert_eq!(rc, number);
    }
    assert_eq!((aio.buffers_out(), aio.in_flight()), (0, 0));
});

// ---- ops outliving the thread that submitted them -------------------------

/// A thread leads one wait of `kq` (on io_uring the ring ops pending are
/// submitted in its io_uring_enter: they become its requests), then exits;
/// `join` (pthread_join) returns once the kernel has torn it down.
fn lead_once_and_exit(kq: &CoreQueue) {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut out = [Kevent::default(); 4];
            let n = kq
                .kevent(&[], &mut out, Some(Duration::from_millis(30)))
                .unwrap();
            assert_eq!(n, 0, "{:?}", &out[..n]);
        })
        .join()
        .unwrap();
    });
}

backend_test!(
    ops_survive_the_exit_of_the_thread_that_submitted_them,
    |b| {
        let (kq, aio) = queue(b);
        let (mut c, s) = pair();
        let (mut c2, s2) = pair();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let recv = aio
            .recv(&kq, s.as_raw_fd(), Vec::with_capacity(64), 61)
            .unwrap();
        let pooled = aio.recv_pooled(&kq, s2.as_raw_fd(), 62).unwrap();
        let multi = aio.accept_multi(&kq, l.as_raw_fd(), 63).unwrap();
        // This thread leads one wait: on io_uring the ring ops are submitted
        // in its io_uring_enter, so they are its requests. Then it exits.
        lead_once_and_exit(&kq);
        let single = aio.accept(&kq, l.as_raw_fd(), 64).unwrap();
        lead_once_and_exit(&kq);
        quiet(&kq, 20);
        c.write_all(b"after exit").unwrap();
        c2.write_all(b"pooled").unwrap();
        let _k1 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _k2 = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut pooled_data = Vec::new();
        let mut accepted = 0;
        let mut recv_done = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = [Kevent::default(); 8];
        while recv_done.is_none() || pooled_data.len() < 6 || accepted < 2 {
            assert!(Instant::now() < deadline, "ops lost with their thread");
            let n = kq
                .kevent(&[], &mut out, Some(Duration::from_secs(1)))
                .unwrap();
            for e in &out[..n] {
                match e.udata {
                    61 => recv_done = Some(e.data),
                    64 => {
                        assert!(e.data >= 0, "single accept: {}", e.data);
                        // SAFETY: the completion handed us this fd.
                        drop(unsafe { OwnedFd::from_raw_fd(e.data as i32) });
                        accepted += 1;
                    }
                    62 | 63 => {}
                    u => panic!("udata {u}"),
                }
            }
            while let Some(r) = aio.next_result(pooled) {
                assert!(r.result > 0, "pooled recv: {r:?}");
                pooled_data.extend_from_slice(r.buf.as_ref().unwrap());
            }
            while let Some(r) = aio.next_result(multi) {
                assert!(r.result >= 0, "accept_multi: {r:?}");
                // SAFETY: a fresh fd handed to us.
                drop(unsafe { OwnedFd::from_raw_fd(r.result as i32) });
                accepted += 1;
            }
        }
        assert_eq!(recv_done, Some(10), "recv after its thread exited");
        assert_eq!(aio.take_buffer(recv).unwrap(), b"after exit");
        assert_eq!(pooled_data, b"pooled");
        assert_eq!(accepted, 2);
        // Both connections may have gone to the multishot accept.
        if aio.cancel(&kq, single).unwrap() {
            let (r, _) = wait_one(&kq, single);
            assert_eq!(r, -(libc::ECANCELED as i64));
        }
        for op in [pooled, multi] {
            assert!(aio.cancel(&kq, op).unwrap());
            let (got, _) = drain_multi(&kq, &aio, op, false, |_| false);
            assert_eq!(got.last().unwrap().result, -(libc::ECANCELED as i64));
        }
        assert_eq!(aio.in_flight(), 0);
    }
);

// ---- cancel of big transfers in flight --------------------------------------

/// Read what the peer sent until it has been quiet for 300 ms.
fn read_all_quiet(mut c: TcpStream) -> usize {
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match c.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(_) => return total,
        }
    }
}

backend_test!(cancel_of_a_large_send_in_flight, |b| {
    let (kq, aio) = queue(b);
    let (c, s) = pair();
    const LEN: usize = 64 << 20;
    let buf = vec![0x5au8; LEN];
    let ptr = buf.as_ptr();
    // The peer does not read: the send fills the socket buffers and waits.
    let op = aio.send(&kq, s.as_raw_fd(), buf, 71).unwrap();
    quiet(&kq, 50);
    assert!(
        aio.take_buffer(op).is_none(),
        "buffer handed back in flight"
    );
    assert!(aio.cancel(&kq, op).unwrap());
    assert!(
        aio.take_buffer(op).is_none(),
        "buffer back before the event"
    );
    let (data, udata) = wait_one(&kq, op);
    assert_eq!(udata, 71);
    assert!(data > 0 && (data as usize) < LEN, "partial send: {data}");
    let back = aio.take_buffer(op).unwrap();
    assert_eq!((back.as_ptr(), back.len()), (ptr, LEN));
    assert_eq!(aio.in_flight(), 0);
    // Exactly the bytes reported went out, and nothing after the cancel.
    drop(s);
    assert_eq!(read_all_quiet(c), data as usize);
});

backend_test!(cancel_of_a_sendfile_in_flight, |b| {
    let (kq, aio) = queue(b);
    let path = std::env::temp_dir().join(format!("kevent-aio-big-{}-{b:?}", std::process::id()));
    const LEN: usize = 48 << 20;
    std::fs::write(&path, vec![0xa5u8; LEN]).unwrap();
    let file = std::sync::Arc::new(std::fs::File::open(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    let (c, s) = pair();
    let op = aio
        .sendfile(&kq, s.as_raw_fd(), file.clone(), 0, LEN, 72)
        .unwrap();
    quiet(&kq, 50);
    assert_eq!(
        std::sync::Arc::strong_count(&file),
        2,
        "the op holds the file"
    );
    assert!(aio.cancel(&kq, op).unwrap());
    assert_eq!(
        std::sync::Arc::strong_count(&file),
        2,
        "file released before the final event"
    );
    let (data, udata) = wait_one(&kq, op);
    assert_eq!(udata, 72);
    assert!(
        data == -(libc::ECANCELED as i64) || (data > 0 && (data as usize) < LEN),
        "cancelled sendfile: {data}"
    );
    assert_eq!(std::sync::Arc::strong_count(&file), 1, "file not released");
    assert_eq!(aio.in_flight(), 0);
    drop(s);
    assert_eq!(read_all_quiet(c), data.max(0) as usize);
});

// ---- user input that must not panic -----------------------------------------

backend_test!(bad_input_is_an_error_never_a_panic, |b| {
    let (kq, aio) = queue(b);
    // Not a socket: a regular file and a pipe.
    let f = std::fs::File::open("/proc/self/stat").unwrap();
    let op = aio
        .recv(&kq, f.as_raw_fd(), Vec::with_capacity(8), 1)
        .unwrap();
    assert_eq!(wait_one(&kq, op).0, -(libc::ENOTSOCK as i64));
    assert!(aio.take_buffer(op).unwrap().is_empty());
    let (r, _w) = std::io::pipe().unwrap();
    let op = aio.accept(&kq, r.as_raw_fd(), 2).unwrap();
    assert_eq!(wait_one(&kq, op).0, -(libc::ENOTSOCK as i64));
    let op = aio.accept_multi(&kq, f.as_raw_fd(), 3).unwrap();
    let (got, _) = drain_multi(&kq, &aio, op, false, |_| false);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].result, got[0].last),
        (-(libc::ENOTSOCK as i64), true)
    );
    // A socket that is not listening.
    let (_c, s) = pair();
    let op = aio.accept_multi(&kq, s.as_raw_fd(), 4).unwrap();
    let (got, _) = drain_multi(&kq, &aio, op, false, |_| false);
    assert_eq!(got.last().unwrap().result, -(libc::EINVAL as i64));
    // A bad fd for a pooled receive.
    let op = aio.recv_pooled(&kq, 1 << 30, 5).unwrap();
    let (got, _) = drain_multi(&kq, &aio, op, false, |_| false);
    assert_eq!(got.last().unwrap().result, -(libc::EBADF as i64));
    // Arguments out of range: refused at submission, buffer handed back.
    let e = aio.recv(&kq, s.as_raw_fd(), Vec::new(), 6).unwrap_err();
    assert_eq!(e.error.raw_os_error(), Some(libc::EINVAL));
    let file = std::sync::Arc::new(f);
    for (off, len) in [(u64::MAX, 1), (0, usize::MAX), (i64::MAX as u64, 1)] {
        let e = aio
            .sendfile(&kq, s.as_raw_fd(), file.clone(), off, len, 7)
            .unwrap_err();
        assert_eq!(e.error.raw_os_error(), Some(libc::EINVAL), "{off} {len}");
    }
    // A huge length on a short file: short at end of file.
    let small = std::env::temp_dir().join(format!("kevent-aio-small-{}-{b:?}", std::process::id()));
    std::fs::write(&small, [1u8; 1000]).unwrap();
    let sf = std::sync::Arc::new(std::fs::File::open(&small).unwrap());
    std::fs::remove_file(&small).unwrap();
    let op = aio.sendfile(&kq, s.as_raw_fd(), sf, 0, 1 << 40, 8).unwrap();
    assert_eq!(wait_one(&kq, op).0, 1000);
    // An empty send completes with 0.
    let op = aio.send(&kq, s.as_raw_fd(), Vec::new(), 9).unwrap();
    assert_eq!(wait_one(&kq, op).0, 0);
    assert!(aio.take_buffer(op).unwrap().is_empty());
    // Unknown and finished ids.
    assert!(!aio.cancel(&kq, 12345).unwrap());
    assert!(!aio.cancel(&kq, op).unwrap());
    assert!(aio.take_buffer(12345).is_none());
    assert!(aio.next_result(12345).is_none());
    // A hand-made AIO change for an id no handle gave out.
    let mut out = [Kevent::default(); 2];
    let ch = Kevent::new(
        99,
        Filter::Aio,
        kevent::Flags::ADD | kevent::Flags::RECEIPT,
        0,
        0,
        0,
    );
    let n = kq.kevent(&[ch], &mut out, None).unwrap();
    assert_eq!((n, out[0].data), (1, libc::ENOENT as i64));
    // A queue without an AIO storage: refused, buffer handed back.
    let plain = kevent::Kqueue::with_backend(b).unwrap();
    let e = aio.send(&plain, s.as_raw_fd(), vec![9; 3], 10).unwrap_err();
    assert_eq!(e.error.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(e.buf, [9, 9, 9]);
    assert!(aio.recv_pooled(&plain, s.as_raw_fd(), 11).is_err());
    // Pools out of range.
    for (count, size) in [(0, 64), (3, 64), (1024, 0), (64, 2 << 20), (u16::MAX, 64)] {
        let e = Aio::with_pool(count, size).unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::InvalidInput,
            "{count} x {size}"
        );
    }
    assert_eq!(aio.in_flight(), 0);
});

backend_test!(stale_op_id_never_takes_another_ops_results, |b| {
    let (kq, aio) = queue(b);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let old = aio.accept_multi(&kq, l.as_raw_fd(), 1).unwrap();
    assert!(aio.cancel(&kq, old).unwrap());
    let (got, _) = drain_multi(&kq, &aio, old, false, |_| false);
    assert!(got.last().unwrap().last);
    assert_eq!(aio.in_flight(), 0);
    // The next op reuses the freed slot under a new id.
    let new = aio.accept_multi(&kq, l.as_raw_fd(), 2).unwrap();
    assert_ne!(new, old);
    let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let e = {
        let mut out = [Kevent::default(); 4];
        let n = kq
            .kevent(&[], &mut out, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(n, 1);
        out[0]
    };
    assert_eq!((e.ident, e.udata, e.data), (new, 2, 1));
    assert!(aio.next_result(old).is_none(), "the stale id took a result");
    assert!(aio.take_buffer(old).is_none());
    assert!(!aio.cancel(&kq, old).unwrap());
    let r = aio.next_result(new).expect("the new op's result");
    assert!(r.result >= 0 && !r.last);
    // SAFETY: a fresh fd handed to us.
    drop(unsafe { OwnedFd::from_raw_fd(r.result as i32) });
    assert!(aio.cancel(&kq, new).unwrap());
    drain_multi(&kq, &aio, new, false, |_| false);
    assert_eq!(aio.in_flight(), 0);
});
