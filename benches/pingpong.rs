//! TCP loopback ping-pong of 64-byte messages, one round trip per
//! iteration: (a) both ends in one event loop, (b) one thread per side.
//! Peers in one group so the report reads as a ratio (see [`variants`]):
//! kevent readiness (`kevent-ready-*`) and kevent network AIO
//! (`kevent-aio-*`: `Filter::Aio` completions, a pooled multishot recv
//! per end and a send op per message) on io_uring and on epoll, raw mio,
//! a bare io_uring ring (`raw-uring-*`, the completion path's ceiling),
//! tokio current-thread. kevent's READ knotes use `note::NODATA` (the
//! loops read until `EAGAIN`, as mio's do, so the `FIONREAD` for `data`
//! would be a syscall the peers do not make).
//!
//! ```text
//! cargo bench --bench pingpong -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! After criterion, a summary runs every variant interleaved and prints
//! medians of wall and process CPU time per round trip with ratios to mio
//! (`PINGPONG_SUMMARY=0` skips it; `cargo bench --bench pingpong --
//! zzznomatch` runs only the summary; `PINGPONG_ONLY=aio,/mio`,
//! `PINGPONG_ITERS`, `PINGPONG_ROUNDS` narrow it).

mod common;

use criterion::{criterion_group, Criterion};
use kevent::kevent_net::aio::Aio;
use kevent::{note, Backend, Filter, Flags, Kevent, Kqueue};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const MSG: usize = 64;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    for t in [&c, &s] {
        t.set_nodelay(true).unwrap();
        t.set_nonblocking(true).unwrap();
    }
    (c, s)
}

/// Read what is there into `buf[*have..]`; `Ok(true)` once `MSG` bytes are in.
fn read_some(mut s: &TcpStream, buf: &mut [u8; MSG], have: &mut usize) -> io::Result<bool> {
    loop {
        match s.read(&mut buf[*have..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                *have += n;
                if *have == MSG {
                    *have = 0;
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn send(mut s: &TcpStream, buf: &[u8; MSG]) {
    // 64 bytes always fit an idle loopback socket's send buffer.
    assert_eq!(s.write(buf).unwrap(), MSG);
}

// ---- kevent -------------------------------------------------------------

/// Block for events. An io_uring wait can end in `EINTR` with no signal
/// sent (task work of a ring torn down earlier in the process): retry.
fn wait(kq: &kevent::kevent_core::Kqueue, out: &mut [Kevent]) -> usize {
    loop {
        match kq.kevent(&[], out, None) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("kevent: {e}"),
        }
    }
}

fn kq_register(kq: &Kqueue, socks: &[&TcpStream]) {
    let ch: Vec<Kevent> = socks
        .iter()
        .map(|s| {
            let fd = s.as_raw_fd() as u64;
            Kevent::new(
                fd,
                Filter::Read,
                Flags::ADD | Flags::CLEAR,
                note::NODATA,
                0,
                fd,
            )
        })
        .collect();
    let mut out = [Kevent::default(); 4];
    kq.kevent(&ch, &mut out, Some(Duration::ZERO)).unwrap();
}

/// Wait until `s` holds a full message (CLEAR READ knote registered).
fn kq_recv(kq: &Kqueue, s: &TcpStream, buf: &mut [u8; MSG], out: &mut [Kevent]) {
    let mut have = 0;
    while !read_some(s, buf, &mut have).unwrap() {
        wait(kq, out);
    }
}

fn kevent_one_loop(b: Backend, iters: u64) -> Duration {
    let kq = Kqueue::with_backend(b).unwrap();
    assert_eq!(kq.backend(), b);
    let (c, s) = pair();
    kq_register(&kq, &[&c, &s]);
    let mut buf = [7u8; MSG];
    let mut out = [Kevent::default(); 8];
    let (cfd, sfd) = (c.as_raw_fd() as u64, s.as_raw_fd() as u64);
    let (mut chave, mut shave) = (0, 0);
    let start = Instant::now();
    for _ in 0..iters {
        send(&c, &buf);
        // Drive both ends from the one loop until the client has its echo.
        let mut done = false;
        while !done {
            let n = wait(&kq, &mut out);
            for e in &out[..n] {
                if e.ident == sfd && read_some(&s, &mut buf, &mut shave).unwrap() {
                    send(&s, &buf);
                } else if e.ident == cfd && read_some(&c, &mut buf, &mut chave).unwrap() {
                    done = true;
                }
            }
        }
    }
    start.elapsed()
}

fn kevent_two_threads(b: Backend, iters: u64) -> Duration {
    let (c, s) = pair();
    let server = std::thread::spawn(move || {
        let kq = Kqueue::with_backend(b).unwrap();
        kq_register(&kq, &[&s]);
        let mut buf = [0u8; MSG];
        let mut out = [Kevent::default(); 4];
        let mut have = 0;
        loop {
            match read_some(&s, &mut buf, &mut have) {
                Ok(true) => send(&s, &buf),
                Ok(false) => {
                    wait(&kq, &mut out);
                }
                Err(_) => return,
            }
        }
    });
    let kq = Kqueue::with_backend(b).unwrap();
    kq_register(&kq, &[&c]);
    let mut buf = [7u8; MSG];
    let mut out = [Kevent::default(); 4];
    let start = Instant::now();
    for _ in 0..iters {
        send(&c, &buf);
        kq_recv(&kq, &c, &mut buf, &mut out);
    }
    let t = start.elapsed();
    drop(c);
    server.join().unwrap();
    t
}

// ---- kevent network AIO (Filter::Aio: recv/send ops) ----------------------

fn aio_queue(b: Backend) -> (Kqueue, Aio) {
    let (aio, storage) = Aio::with_pool(16, 4096).unwrap();
    let kq = Kqueue::builder(b)
        .unwrap()
        .storage(storage)
        .build()
        .unwrap();
    assert_eq!(kq.backend(), b);
    (kq, aio)
}

const RECV: u64 = 1;
const SENT: u64 = 2;

/// One echoing end: a pooled multishot recv (`Aio::recv_pooled`) armed
/// once; each full message is sent back with `Aio::send` (send buffers
/// recycled through `take_buffer`, receive buffers back to the pool as
/// each chunk is counted).
struct AioEnd {
    fd: i32,
    recv: u64,
    have: usize,
    spare: Vec<Vec<u8>>,
}

impl AioEnd {
    fn new(kq: &kevent::kevent_core::Kqueue, aio: &Aio, fd: i32, tag: u64) -> AioEnd {
        let recv = aio.recv_pooled(kq, fd, RECV | tag).unwrap();
        AioEnd {
            fd,
            recv,
            have: 0,
            spare: (0..4).map(|_| vec![7u8; MSG]).collect(),
        }
    }

    fn send(&mut self, kq: &kevent::kevent_core::Kqueue, aio: &Aio, tag: u64) {
        let b = self.spare.pop().unwrap_or_else(|| vec![7u8; MSG]);
        aio.send(kq, self.fd, b, SENT | tag).unwrap();
    }

    /// An event of this end; returns whether a full message arrived, or
    /// `None` at end of file.
    fn done(&mut self, aio: &Aio, e: &Kevent) -> Option<bool> {
        if e.udata & SENT != 0 {
            assert_eq!(e.data, MSG as i64);
            self.spare.push(aio.take_buffer(e.ident).unwrap());
            return Some(false);
        }
        while let Some(r) = aio.next_result(self.recv) {
            if r.result <= 0 {
                return None;
            }
            self.have += r.result as usize;
        }
        if self.have >= MSG {
            self.have -= MSG;
            return Some(true);
        }
        Some(false)
    }
}

fn aio_one_loop(b: Backend, iters: u64) -> Duration {
    let (kq, aio) = aio_queue(b);
    let (c, s) = pair();
    const C: u64 = 0;
    const S: u64 = 4;
    let mut ce = AioEnd::new(&kq, &aio, c.as_raw_fd(), C);
    let mut se = AioEnd::new(&kq, &aio, s.as_raw_fd(), S);
    let mut out = [Kevent::default(); 8];
    let start = Instant::now();
    for _ in 0..iters {
        ce.send(&kq, &aio, C);
        let mut done = false;
        while !done {
            let n = wait(&kq, &mut out);
            for e in &out[..n] {
                if e.udata & S != 0 {
                    if se.done(&aio, e).unwrap() {
                        se.send(&kq, &aio, S);
                    }
                } else if ce.done(&aio, e).unwrap() {
                    done = true;
                }
            }
        }
    }
    let t = start.elapsed();
    drop(kq);
    t
}

fn aio_two_threads(b: Backend, iters: u64) -> Duration {
    let (c, s) = pair();
    let server = std::thread::spawn(move || {
        let (kq, aio) = aio_queue(b);
        let mut se = AioEnd::new(&kq, &aio, s.as_raw_fd(), 0);
        let mut out = [Kevent::default(); 4];
        loop {
            let n = wait(&kq, &mut out);
            for e in &out[..n] {
                match se.done(&aio, e) {
                    None => return,
                    Some(true) => se.send(&kq, &aio, 0),
                    Some(false) => {}
                }
            }
        }
    });
    let (kq, aio) = aio_queue(b);
    let mut ce = AioEnd::new(&kq, &aio, c.as_raw_fd(), 0);
    let mut out = [Kevent::default(); 4];
    let start = Instant::now();
    for _ in 0..iters {
        ce.send(&kq, &aio, 0);
        let mut done = false;
        while !done {
            let n = wait(&kq, &mut out);
            for e in &out[..n] {
                done |= ce.done(&aio, e).unwrap();
            }
        }
    }
    let t = start.elapsed();
    // EOF ends the server; this queue's recv completes (or is cancelled
    // with the queue) after the shutdown.
    c.shutdown(std::net::Shutdown::Both).unwrap();
    server.join().unwrap();
    drop(kq);
    t
}

// ---- raw io_uring (no kevent): the ceiling of the completion path ---------

/// Both ends in one loop on a bare ring: a multishot recv from a
/// provided-buffer ring on each socket, a `SEND` per message, one
/// `io_uring_enter` per step. `defer`: SINGLE_ISSUER + DEFER_TASKRUN.
fn raw_uring_one_loop(iters: u64, mode: u8) -> Duration {
    use kevent::kevent_core::io_uring::{cqueue, opcode, types, IoUring};
    let (c, s) = pair();
    let mut b = IoUring::<kevent::kevent_core::io_uring::squeue::Entry>::builder();
    if mode == 2 {
        b.setup_single_issuer().setup_defer_taskrun();
    } else if mode == 1 {
        b.setup_coop_taskrun();
    }
    let mut ring = b.build(64).unwrap();
    const N: u16 = 16;
    let bufs = vec![0u8; N as usize * 256];
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: non-zero size.
    let br = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
    for i in 0..N {
        // SAFETY: `i < N`, inside the 4096-byte ring (16 bytes per entry).
        let e = unsafe { &mut *br.add(i as usize) };
        e.set_addr(bufs.as_ptr() as u64 + u64::from(i) * 256);
        e.set_len(256);
        e.set_bid(i);
    }
    // SAFETY: the tail lies in entry 0 of the ring.
    let tail = unsafe { &*(types::BufRingEntry::tail(br) as *const std::sync::atomic::AtomicU16) };
    let mut t = N;
    tail.store(t, std::sync::atomic::Ordering::Release);
    // SAFETY: the ring memory outlives the registration (freed after the ring).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(br as u64, N, 0, 0)
    }
    .unwrap();
    let (cfd, sfd) = (c.as_raw_fd(), s.as_raw_fd());
    let recv = |fd: i32| {
        opcode::RecvMulti::new(types::Fd(fd), 0)
            .build()
            .user_data(fd as u64)
    };
    let msg = [7u8; MSG];
    let send = |fd: i32| {
        opcode::Send::new(types::Fd(fd), msg.as_ptr(), MSG as u32)
            .build()
            .user_data(1 << 32 | fd as u64)
    };
    // SAFETY: the SQEs reference `msg` and the buffer ring, alive throughout.
    unsafe {
        ring.submission().push(&recv(cfd)).unwrap();
        ring.submission().push(&recv(sfd)).unwrap();
    }
    let (mut chave, mut shave) = (0usize, 0usize);
    // The SQEs a step's completions call for, pushed after the CQ is read
    // (reused: no allocation per step, as the kevent variants make none).
    let mut sq_push = Vec::<i32>::with_capacity(8);
    let start = Instant::now();
    for _ in 0..iters {
        // SAFETY: as above.
        unsafe { ring.submission().push(&send(cfd)).unwrap() };
        let mut done = false;
        while !done {
            ring.submit_and_wait(1).unwrap();
            for cqe in ring.completion() {
                let ud = cqe.user_data();
                if ud >> 32 == 1 {
                    assert_eq!(cqe.result(), MSG as i32);
                    continue;
                }
                let fd = ud as i32;
                if !cqueue::more(cqe.flags()) {
                    sq_push.push(-fd - 1);
                }
                let Some(bid) = cqueue::buffer_select(cqe.flags()) else {
                    assert_eq!(cqe.result(), -libc::ENOBUFS);
                    continue;
                };
                assert!(cqe.result() > 0);
                let have = if fd == cfd { &mut chave } else { &mut shave };
                *have += cqe.result() as usize;
                // Give the buffer back.
                // SAFETY: slot `t % N` is not published (the kernel owns
                // at most N - 1 others).
                let e = unsafe { &mut *br.add((t % N) as usize) };
                e.set_addr(bufs.as_ptr() as u64 + u64::from(bid) * 256);
                e.set_len(256);
                e.set_bid(bid);
                t = t.wrapping_add(1);
                tail.store(t, std::sync::atomic::Ordering::Release);
                if *have >= MSG {
                    *have -= MSG;
                    if fd == sfd {
                        sq_push.push(sfd);
                    } else {
                        done = true;
                    }
                }
            }
            for x in sq_push.drain(..) {
                // SAFETY: as above.
                unsafe {
                    if x < 0 {
                        ring.submission().push(&recv(-x - 1)).unwrap();
                    } else {
                        ring.submission().push(&send(x)).unwrap();
                    }
                }
            }
        }
    }
    let el = start.elapsed();
    drop(ring);
    // SAFETY: allocated above with this layout; the ring is gone.
    unsafe { std::alloc::dealloc(br.cast(), layout) };
    el
}

// ---- mio ----------------------------------------------------------------

fn mio_one_loop(iters: u64) -> Duration {
    use mio::{Events, Interest, Poll, Token};
    let (c, s) = pair();
    let mut poll = Poll::new().unwrap();
    let mut mc = mio::net::TcpStream::from_std(c);
    let mut ms = mio::net::TcpStream::from_std(s);
    poll.registry()
        .register(&mut mc, Token(0), Interest::READABLE)
        .unwrap();
    poll.registry()
        .register(&mut ms, Token(1), Interest::READABLE)
        .unwrap();
    let c = as_std(&mc);
    let s = as_std(&ms);
    let mut events = Events::with_capacity(8);
    let mut buf = [7u8; MSG];
    let (mut chave, mut shave) = (0, 0);
    let start = Instant::now();
    for _ in 0..iters {
        send(&c, &buf);
        let mut done = false;
        while !done {
            poll.poll(&mut events, None).unwrap();
            for e in events.iter() {
                if e.token() == Token(1) && read_some(&s, &mut buf, &mut shave).unwrap() {
                    send(&s, &buf);
                } else if e.token() == Token(0) && read_some(&c, &mut buf, &mut chave).unwrap() {
                    done = true;
                }
            }
        }
    }
    start.elapsed()
}

/// A `TcpStream` sharing `m`'s fd; the caller forgets it so the fd is
/// closed once, by `m`.
fn as_std(m: &mio::net::TcpStream) -> std::mem::ManuallyDrop<TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: the fd is live while `m` is; ManuallyDrop never closes it.
    std::mem::ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(m.as_raw_fd()) })
}

fn mio_wait_readable(poll: &mut mio::Poll, events: &mut mio::Events) {
    poll.poll(events, None).unwrap();
}

fn mio_two_threads(iters: u64) -> Duration {
    use mio::{Events, Interest, Poll, Token};
    let (c, s) = pair();
    let server = std::thread::spawn(move || {
        let mut poll = Poll::new().unwrap();
        let mut ms = mio::net::TcpStream::from_std(s);
        poll.registry()
            .register(&mut ms, Token(1), Interest::READABLE)
            .unwrap();
        let s = as_std(&ms);
        let mut events = Events::with_capacity(4);
        let mut buf = [0u8; MSG];
        let mut have = 0;
        loop {
            match read_some(&s, &mut buf, &mut have) {
                Ok(true) => send(&s, &buf),
                Ok(false) => mio_wait_readable(&mut poll, &mut events),
                Err(_) => return,
            }
        }
    });
    let mut poll = Poll::new().unwrap();
    let mut mc = mio::net::TcpStream::from_std(c);
    poll.registry()
        .register(&mut mc, Token(0), Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(4);
    let mut buf = [7u8; MSG];
    let start = Instant::now();
    {
        let c = as_std(&mc);
        for _ in 0..iters {
            send(&c, &buf);
            let mut have = 0;
            while !read_some(&c, &mut buf, &mut have).unwrap() {
                mio_wait_readable(&mut poll, &mut events);
            }
        }
    }
    let t = start.elapsed();
    drop(mc);
    server.join().unwrap();
    t
}

// ---- tokio current-thread -------------------------------------------------

async fn tokio_echo(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; MSG];
    while s.read_exact(&mut buf).await.is_ok() {
        if s.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn tokio_client(mut c: tokio::net::TcpStream, iters: u64) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [7u8; MSG];
    let start = Instant::now();
    for _ in 0..iters {
        c.write_all(&buf).await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
    }
    start.elapsed()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tokio_one_loop(iters: u64) -> Duration {
    let (c, s) = pair();
    rt().block_on(async move {
        let c = tokio::net::TcpStream::from_std(c).unwrap();
        let s = tokio::net::TcpStream::from_std(s).unwrap();
        let server = tokio::spawn(tokio_echo(s));
        let t = tokio_client(c, iters).await;
        server.abort();
        t
    })
}

fn tokio_two_threads(iters: u64) -> Duration {
    let (c, s) = pair();
    let server = std::thread::spawn(move || {
        rt().block_on(async move { tokio_echo(tokio::net::TcpStream::from_std(s).unwrap()).await })
    });
    let t = rt().block_on(async move {
        tokio_client(tokio::net::TcpStream::from_std(c).unwrap(), iters).await
    });
    server.join().unwrap();
    t
}

type Run = Box<dyn Fn(u64) -> Duration>;

/// Every variant, in report order: `mode/peer` names. `kevent-ready-*`
/// is readiness (CLEAR READ knotes, the loop reads and writes itself, as
/// mio does); `kevent-aio-*` is network AIO (completions: a pooled
/// multishot recv per end and a send op per message); `raw-uring-*` is a
/// bare io_uring ring doing what the AIO variant does (multishot recv from
/// a buffer ring, a SEND per message) with no queue around it — the
/// completion path's ceiling here: plain setup (what a ring shared by
/// several threads can use, as kevent's), `COOP_TASKRUN`, and
/// `SINGLE_ISSUER | DEFER_TASKRUN` (one thread only).
fn variants() -> Vec<(&'static str, Run)> {
    let uring = Kqueue::with_backend(Backend::IoUring).is_ok();
    let mut v: Vec<(&'static str, Run)> = Vec::new();
    if uring {
        v.push((
            "one_loop/kevent-ready-uring",
            Box::new(|n| kevent_one_loop(Backend::IoUring, n)),
        ));
        v.push((
            "one_loop/kevent-aio-uring",
            Box::new(|n| aio_one_loop(Backend::IoUring, n)),
        ));
    }
    v.push((
        "one_loop/kevent-ready-epoll",
        Box::new(|n| kevent_one_loop(Backend::Epoll, n)),
    ));
    v.push((
        "one_loop/kevent-aio-epoll",
        Box::new(|n| aio_one_loop(Backend::Epoll, n)),
    ));
    v.push(("one_loop/mio", Box::new(mio_one_loop)));
    if uring {
        v.push((
            "one_loop/raw-uring-plain",
            Box::new(|n| raw_uring_one_loop(n, 0)),
        ));
        v.push((
            "one_loop/raw-uring-coop",
            Box::new(|n| raw_uring_one_loop(n, 1)),
        ));
        v.push((
            "one_loop/raw-uring-defer",
            Box::new(|n| raw_uring_one_loop(n, 2)),
        ));
    }
    v.push(("one_loop/tokio", Box::new(tokio_one_loop)));
    if uring {
        v.push((
            "two_threads/kevent-ready-uring",
            Box::new(|n| kevent_two_threads(Backend::IoUring, n)),
        ));
        v.push((
            "two_threads/kevent-aio-uring",
            Box::new(|n| aio_two_threads(Backend::IoUring, n)),
        ));
    }
    v.push((
        "two_threads/kevent-ready-epoll",
        Box::new(|n| kevent_two_threads(Backend::Epoll, n)),
    ));
    v.push((
        "two_threads/kevent-aio-epoll",
        Box::new(|n| aio_two_threads(Backend::Epoll, n)),
    ));
    v.push(("two_threads/mio", Box::new(mio_two_threads)));
    v.push(("two_threads/tokio", Box::new(tokio_two_threads)));
    // PINGPONG_ONLY=a,b keeps the variants whose names contain one of the
    // comma-separated parts (e.g. for strace or callgrind of one variant;
    // ratios need the mode's mio in the list).
    if let Ok(only) = std::env::var("PINGPONG_ONLY") {
        v.retain(|(n, _)| only.split(',').any(|o| n.contains(o)));
    }
    v
}

fn pingpong(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("pingpong");
    for (name, f) in variants() {
        g.bench_function(name, |b| b.iter_custom(&f));
    }
    g.finish();
}

/// After criterion: every variant run interleaved (A B C … A B C …), the
/// median wall time and process CPU time per round trip (CPU time is the
/// steadier figure on this shared machine), and the ratio to mio in the
/// same mode. `PINGPONG_SUMMARY=0` skips it.
fn summary() {
    let v = variants();
    let iters: u64 = std::env::var("PINGPONG_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let rounds: usize = std::env::var("PINGPONG_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut wall = vec![Vec::new(); v.len()];
    let mut cpu = vec![Vec::new(); v.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in v.iter().enumerate() {
            let c0 = common::process_cpu();
            let w = f(iters);
            let c = common::process_cpu() - c0;
            wall[i].push(w.as_secs_f64() * 1e6 / iters as f64);
            cpu[i].push(c.as_secs_f64() * 1e6 / iters as f64);
        }
    }
    let wall: Vec<f64> = wall.iter_mut().map(|x| common::median(x)).collect();
    let cpu: Vec<f64> = cpu.iter_mut().map(|x| common::median(x)).collect();
    println!("\npingpong summary: {rounds} interleaved rounds of {iters} round trips, medians per round trip");
    println!(
        "{:<30} {:>9} {:>9} {:>12} {:>12}",
        "variant", "wall µs", "CPU µs", "vs mio wall", "vs mio CPU"
    );
    for (i, (name, _)) in v.iter().enumerate() {
        let mode = name.split('/').next().unwrap_or("");
        let mio = v.iter().position(|(n, _)| *n == format!("{mode}/mio"));
        let (rw, rc) = mio.map_or((f64::NAN, f64::NAN), |m| {
            (wall[m] / wall[i], cpu[m] / cpu[i])
        });
        println!(
            "{name:<30} {:>9.2} {:>9.2} {:>11.2}x {:>11.2}x",
            wall[i], cpu[i], rw, rc
        );
    }
}

criterion_group!(benches, pingpong);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test" || a == "--list");
    if !test_mode && std::env::var("PINGPONG_SUMMARY").map_or(true, |v| v != "0") {
        summary();
    }
}
