//! Queue benchmarks, each beside its peer in one group so the report is a
//! ratio:
//!
//! - `ready1_of_n`: one `kevent()` returning 1 ready event while N idle fds
//!   are registered (N = 1, 1k, 10k: the hard fd limit on these machines is
//!   20000) — must be flat (O(ready)); peer: raw level-triggered
//!   `epoll_wait` with the same N idle fds. `ready1_of_n_knotes` carries it
//!   to 100k idle knotes (USER knotes, which need no fd).
//! - `pingpong_edge`: per-event cost of an edge-triggered pipe ping-pong
//!   (write 1 byte, wait, read it) through `kevent()` vs the same loop on
//!   raw mio.
//! - `level_redelivery`: a level READ knote whose data is never consumed,
//!   collected again and again, vs raw level-triggered epoll.
//! - `add_delete`: `ADD` + `DELETE` of a READ knote vs raw `epoll_ctl`
//!   `ADD` + `DEL`.
//!
//! Every kevent case runs on every backend that works on this machine.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn backends() -> Vec<(&'static str, Backend)> {
    let mut v = vec![("epoll", Backend::Epoll)];
    match Kqueue::with_backend(Backend::IoUring) {
        Ok(_) => v.push(("uring", Backend::IoUring)),
        Err(e) => eprintln!("queue bench: io_uring backend not available: {e}"),
    }
    v
}

fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            // Root may raise the hard limit; others get what they have.
            let want = 220_000.max(r.rlim_max);
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
        }
    }
}

fn eventfds(n: usize) -> Option<Vec<OwnedFd>> {
    (0..n)
        .map(|_| {
            // SAFETY: eventfd returns a new fd or -1 (checked).
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            // SAFETY: fresh fd owned by nobody else.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

fn add(fd: RawFd, flags: Flags) -> Kevent {
    Kevent::new(fd as u64, Filter::Read, Flags::ADD | flags, 0, 0, 0)
}

struct RawEpoll(OwnedFd);

impl RawEpoll {
    fn new() -> RawEpoll {
        // SAFETY: epoll_create1 returns a new fd or -1 (checked).
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd.
        RawEpoll(unsafe { OwnedFd::from_raw_fd(fd) })
    }
    fn ctl(&self, op: i32, fd: RawFd, events: u32) {
        let mut ev = libc::epoll_event {
            events,
            u64: fd as u64,
        };
        // SAFETY: valid epoll fd and event struct.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    }
    fn wait(&self, buf: &mut [libc::epoll_event], ms: i32) -> usize {
        // SAFETY: buf is valid for buf.len() events.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), buf.as_mut_ptr(), buf.len() as i32, ms) };
        assert!(n >= 0);
        n as usize
    }
}

/// Register `idle` changes and one ready level READ knote on `live`, then
/// measure one `kevent()` returning that single event.
fn bench_ready1(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    backend: Backend,
    n: usize,
    idle: &[Kevent],
    live: RawFd,
) {
    let kq = Kqueue::with_backend(backend).expect("kqueue");
    for chunk in idle.chunks(4096) {
        kq.kevent(chunk, &mut [], None).expect("register idle");
    }
    kq.kevent(&[add(live, Flags::empty())], &mut [], None)
        .expect("register live");
    let mut out = [Kevent::default(); 1];
    g.bench_with_input(BenchmarkId::new(format!("kevent-{name}"), n), &n, |b, _| {
        b.iter(|| {
            let got = kq
                .kevent(&[], &mut out, Some(Duration::ZERO))
                .expect("kevent");
            assert_eq!(got, 1);
            black_box(out[0].data);
        })
    });
}

fn ready1_of_n(c: &mut Criterion) {
    raise_nofile();
    let mut g = c.benchmark_group("ready1_of_n");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for &n in &[1usize, 1_000, 10_000] {
        let Some(idle) = eventfds(n) else {
            eprintln!("ready1_of_n: cannot open {n} fds here (RLIMIT_NOFILE); skipping N={n}");
            continue;
        };
        let (rx, mut tx) = std::io::pipe().expect("pipe");
        tx.write_all(b"x").expect("write");
        let changes: Vec<Kevent> = idle
            .iter()
            .map(|f| add(f.as_raw_fd(), Flags::empty()))
            .collect();
        for (name, backend) in backends() {
            bench_ready1(&mut g, name, backend, n, &changes, rx.as_raw_fd());
        }
        let ep = RawEpoll::new();
        for f in &idle {
            ep.ctl(libc::EPOLL_CTL_ADD, f.as_raw_fd(), libc::EPOLLIN as u32);
        }
        ep.ctl(libc::EPOLL_CTL_ADD, rx.as_raw_fd(), libc::EPOLLIN as u32);
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 1];
        g.bench_with_input(BenchmarkId::new("raw-epoll-level", n), &n, |b, _| {
            b.iter(|| {
                assert_eq!(ep.wait(&mut buf, 0), 1);
                black_box(buf[0].u64);
            })
        });
    }
    g.finish();

    // Idle knotes beyond what the fd limit allows (the hard RLIMIT_NOFILE
    // here is 20000): N idle USER knotes, never triggered, plus one ready
    // level knote. Epoll has no fd-less registrations, so no raw peer.
    let mut g = c.benchmark_group("ready1_of_n_knotes");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let (rx, mut tx) = std::io::pipe().expect("pipe");
    tx.write_all(b"x").expect("write");
    for &n in &[1usize, 1_000, 10_000, 100_000] {
        let changes: Vec<Kevent> = (0..n as u64)
            .map(|i| Kevent::new(i, Filter::User, Flags::ADD, 0, 0, 0))
            .collect();
        for (name, backend) in backends() {
            bench_ready1(&mut g, name, backend, n, &changes, rx.as_raw_fd());
        }
    }
    g.finish();
}

fn pingpong_edge(c: &mut Criterion) {
    let mut g = c.benchmark_group("pingpong_edge");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    // FreeBSD's `data` (a FIONREAD per event), and the NODATA extension:
    // no byte count, so no ioctl — the work raw mio does.
    for (name, backend) in backends() {
        for (suffix, fflags) in [("", 0), ("-nodata", kevent::note::NODATA)] {
            let kq = Kqueue::with_backend(backend).expect("kqueue");
            let (mut rx, mut tx) = std::io::pipe().expect("pipe");
            set_nonblocking(rx.as_raw_fd());
            let ch = Kevent::new(
                rx.as_raw_fd() as u64,
                Filter::Read,
                Flags::ADD | Flags::CLEAR,
                fflags,
                0,
                0,
            );
            kq.kevent(&[ch], &mut [], None).expect("add");
            let mut out = [Kevent::default(); 8];
            let mut byte = [0u8; 1];
            g.bench_function(format!("kevent-{name}{suffix}"), |b| {
                b.iter(|| {
                    tx.write_all(b"x").expect("write");
                    let n = kq.kevent(&[], &mut out, None).expect("kevent");
                    debug_assert_eq!(n, 1);
                    black_box(out[0].data);
                    rx.read_exact(&mut byte).expect("read");
                })
            });
        }
    }
    {
        use mio::{Events, Interest, Poll, Token};
        let mut poll = Poll::new().expect("poll");
        let (mut tx, mut rx) = mio::unix::pipe::new().expect("pipe");
        poll.registry()
            .register(&mut rx, Token(0), Interest::READABLE)
            .expect("register");
        let mut events = Events::with_capacity(8);
        let mut byte = [0u8; 1];
        g.bench_function("raw-mio", |b| {
            b.iter(|| {
                tx.write_all(b"x").expect("write");
                poll.poll(&mut events, None).expect("poll");
                black_box(events.iter().next().map(|e| e.token()));
                rx.read_exact(&mut byte).expect("read");
            })
        });
    }
    g.finish();
}

fn level_redelivery(c: &mut Criterion) {
    let mut g = c.benchmark_group("level_redelivery");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let (rx, mut tx) = std::io::pipe().expect("pipe");
    tx.write_all(b"level").expect("write");
    for (name, backend) in backends() {
        let kq = Kqueue::with_backend(backend).expect("kqueue");
        kq.kevent(&[add(rx.as_raw_fd(), Flags::empty())], &mut [], None)
            .expect("add");
        let mut out = [Kevent::default(); 8];
        g.bench_function(format!("kevent-{name}"), |b| {
            b.iter(|| {
                let n = kq.kevent(&[], &mut out, None).expect("kevent");
                debug_assert_eq!((n, out[0].data), (1, 5));
                black_box(out[0].data);
            })
        });
    }
    let ep = RawEpoll::new();
    ep.ctl(libc::EPOLL_CTL_ADD, rx.as_raw_fd(), libc::EPOLLIN as u32);
    let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 8];
    g.bench_function("raw-epoll-level", |b| {
        b.iter(|| {
            assert_eq!(ep.wait(&mut buf, -1), 1);
            black_box(buf[0].u64);
        })
    });
    g.finish();
}

fn add_delete(c: &mut Criterion) {
    let mut g = c.benchmark_group("add_delete");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let (rx, _tx) = std::io::pipe().expect("pipe");
    let fd = rx.as_raw_fd();
    for (name, backend) in backends() {
        let kq = Kqueue::with_backend(backend).expect("kqueue");
        let add = [add(fd, Flags::empty())];
        let del = [Kevent::new(fd as u64, Filter::Read, Flags::DELETE, 0, 0, 0)];
        g.bench_function(format!("kevent-{name}"), |b| {
            b.iter(|| {
                kq.kevent(&add, &mut [], None).expect("add");
                kq.kevent(&del, &mut [], None).expect("delete");
            })
        });
    }
    let ep = RawEpoll::new();
    g.bench_function("raw-epoll_ctl", |b| {
        b.iter(|| {
            ep.ctl(
                libc::EPOLL_CTL_ADD,
                fd,
                (libc::EPOLLIN | libc::EPOLLET) as u32,
            );
            ep.ctl(libc::EPOLL_CTL_DEL, fd, 0);
        })
    });
    g.finish();
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

criterion_group!(
    benches,
    ready1_of_n,
    pingpong_edge,
    level_redelivery,
    add_delete
);
criterion_main!(benches);
