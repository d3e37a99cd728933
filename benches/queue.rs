//! Queue benchmarks, each variant beside its peer in one group so the
//! report is a ratio:
//!
//! - `ready1_of_n`: one polling `kevent()` returning 1 ready level event
//!   while N idle fds are registered (N = 1, 1k, 10k, 100k) — must be flat
//!   (O(ready), not O(registered)); peers: raw level-triggered
//!   `epoll_wait` with the same N idle fds, alone (`raw-epoll-level`) and
//!   with the `FIONREAD` kevent makes for `data`
//!   (`raw-epoll-level-fionread`, the like-for-like peer). 100k fds need
//!   `RLIMIT_NOFILE` above 100k: the bench raises it, and if the hard limit
//!   cannot be raised (no `CAP_SYS_RESOURCE`) it says so and skips only
//!   that size, measuring instead the largest size the hard limit allows
//!   (in thousands, with 4096 fds of headroom). `ready1_of_n_knotes` carries it to 100k idle USER knotes,
//!   which need no fd (no raw peer: epoll has no fd-less registration).
//! - `pingpong_edge`: per-event cost of an edge-triggered (`CLEAR`) pipe
//!   ping-pong (write 1 byte, wait, read it). kevent's default READ `data`
//!   is the byte count, one `FIONREAD` per event, so its peer is the same
//!   loop on raw mio plus that ioctl (`raw-mio-fionread`); with
//!   `note::NODATA` kevent makes no ioctl and its peer is plain `raw-mio`.
//! - `pingpong_level`: the ping-pong with a level READ knote: the loop
//!   consumes each byte, so after each delivery the queue must find the
//!   condition gone (the re-check) before it waits for the next byte;
//!   peers: the same loop on raw level-triggered epoll (with `FIONREAD`
//!   for default data).
//! - `level_redelivery`: a level READ knote whose data is never consumed,
//!   collected again and again; peers: raw level-triggered epoll, alone and
//!   with the `FIONREAD` (`-nodata` variants are compared to the former,
//!   default-data ones to the latter).
//! - `add_delete`: `ADD` + `DELETE` of a READ knote (two `kevent()` calls)
//!   vs raw `epoll_ctl` `ADD` + `DEL`.
//! - `wake`: cross-thread wake-up: a thread blocked in `kevent()` is woken
//!   by a USER trigger from another thread, which waits for the reply on a
//!   second queue; peer: the same round trip over two eventfds and raw
//!   epoll. Per round trip = two wakes.
//!
//! Every kevent case runs on every backend that works here, side by side:
//! `epoll`, `uring` (the default ring, shareable between threads) and
//! `uring1` (`Builder::single_thread`: `SINGLE_ISSUER | DEFER_TASKRUN`,
//! the queue used from one thread only).
//!
//! After criterion, every group runs again interleaved (A B C … A B C …,
//! 7 rounds of ~20 ms each) and a summary prints per variant the median
//! wall and CPU time per iteration and the ratio to its peer
//! (`QUEUE_SUMMARY=0` skips it, `QUEUE_CRITERION=0` runs only it; a criterion filter given on the command
//! line, as a substring, selects groups for both).
//!
//! For exact instruction counts, `QUEUE_ITERS=N` runs only the variants
//! the filter selects, N iterations each inside `run_iters`, without
//! criterion:
//!
//! ```text
//! QUEUE_ITERS=100000 valgrind --tool=callgrind --toggle-collect='*run_iters*' \
//!     target/release/deps/queue-* pingpong_edge/kevent-epoll-nodata
//! ```

mod common;

use criterion::{BenchmarkId, Criterion};
use kevent::{note, Backend, Filter, Flags, Kevent, Kqueue};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Body = Box<dyn FnMut()>;

/// One measured loop body, built once and kept for criterion, the summary
/// and the instruction-count driver.
struct Variant {
    name: String,
    /// The variant of the same group this one's ratio is taken to.
    peer: Option<String>,
    body: Body,
}

/// One criterion group (at one parameter).
struct Group {
    name: &'static str,
    param: Option<usize>,
    variants: Vec<Variant>,
}

impl Group {
    fn new(name: &'static str, param: Option<usize>) -> Group {
        Group {
            name,
            param,
            variants: Vec::new(),
        }
    }

    fn add(&mut self, name: impl Into<String>, peer: Option<&str>, body: impl FnMut() + 'static) {
        self.variants.push(Variant {
            name: name.into(),
            peer: peer.map(str::to_string),
            body: Box::new(body),
        });
    }

    /// The id criterion gives the variant: `group/variant[/param]`.
    fn id(&self, v: &str) -> String {
        match self.param {
            Some(p) => format!("{}/{v}/{p}", self.name),
            None => format!("{}/{v}", self.name),
        }
    }

    /// The group's id without a variant, for the summary's headings.
    fn title(&self) -> String {
        title(self.name, self.param)
    }
}

/// A group's id without a variant: `group[/param]`.
fn title(name: &str, param: Option<usize>) -> String {
    match param {
        Some(p) => format!("{name}/{p}"),
        None => name.to_string(),
    }
}

/// A kevent backend to bench.
#[derive(Clone, Copy)]
struct Be {
    name: &'static str,
    make: fn() -> io::Result<Kqueue>,
}

impl Be {
    /// A new queue of this backend with `changes` applied (in calls of
    /// 4096 at most).
    fn queue(&self, changes: &[Kevent]) -> Result<Kqueue, String> {
        let kq = (self.make)().map_err(|e| format!("queue: {e}"))?;
        for chunk in changes.chunks(4096) {
            kq.kevent(chunk, &mut [], None)
                .map_err(|e| format!("register: {e}"))?;
        }
        Ok(kq)
    }
}

fn backends() -> Vec<Be> {
    let mut v = vec![Be {
        name: "epoll",
        make: || Kqueue::with_backend(Backend::Epoll),
    }];
    match Kqueue::with_backend(Backend::IoUring) {
        Ok(_) => {
            v.push(Be {
                name: "uring",
                make: || Kqueue::with_backend(Backend::IoUring),
            });
            v.push(Be {
                name: "uring1",
                make: || Kqueue::builder(Backend::IoUring)?.single_thread().build(),
            });
        }
        Err(e) => eprintln!("queue bench: io_uring backend not available: {e}"),
    }
    v
}

/// Raise `RLIMIT_NOFILE` to at least `want`; the reason if it cannot be.
fn raise_nofile(want: u64) -> Result<(), String> {
    // SAFETY: an all-zero rlimit is a valid value; getrlimit fills it.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(format!("getrlimit: {}", io::Error::last_os_error()));
    }
    if r.rlim_cur >= want {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: want.max(r.rlim_cur),
        rlim_max: want.max(r.rlim_max),
    };
    // SAFETY: plain setrlimit with a live struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // Take what the hard limit allows anyway.
    let soft = libc::rlimit {
        rlim_cur: r.rlim_max,
        rlim_max: r.rlim_max,
    };
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) };
    Err(format!(
        "RLIMIT_NOFILE is {} (hard {}) and raising it to {want} failed: {err} \
         (raising the hard limit needs CAP_SYS_RESOURCE; fs.nr_open bounds it too)",
        r.rlim_cur, r.rlim_max
    ))
}

/// The most idle fds [`ready1_of_n`] can open under the hard
/// `RLIMIT_NOFILE` (with its 4096 of headroom), in thousands.
fn largest_idle_fds() -> Option<usize> {
    // SAFETY: an all-zero rlimit is a valid value; getrlimit fills it.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    let hard = usize::try_from(r.rlim_max).ok()?;
    Some(hard.checked_sub(4096)? / 1000 * 1000)
}

fn eventfds(n: usize) -> io::Result<Vec<OwnedFd>> {
    (0..n)
        .map(|_| {
            // SAFETY: eventfd returns a new fd or -1 (checked).
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: fresh fd owned by nobody else.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        })
        .collect()
}

fn add(fd: RawFd, flags: Flags, fflags: u32) -> Kevent {
    Kevent::new(fd as u64, Filter::Read, Flags::ADD | flags, fflags, 0, 0)
}

fn fionread(fd: RawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
    n
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
        assert_eq!(rc, 0, "epoll_ctl: {}", io::Error::last_os_error());
    }
    fn wait(&self, buf: &mut [libc::epoll_event], ms: i32) -> usize {
        // SAFETY: buf is valid for buf.len() events.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), buf.as_mut_ptr(), buf.len() as i32, ms) };
        assert!(n >= 0, "epoll_wait: {}", io::Error::last_os_error());
        n as usize
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

/// One `kevent()` with no changes, as the peers call theirs (`expect`):
/// no signal is sent here, and kevent's own rings leave no task work that
/// could interrupt a wait (see `Kqueue::kevent`), so an `EINTR` is a bug.
#[inline(always)]
fn wait(kq: &Kqueue, out: &mut [Kevent], timeout: Option<Duration>) -> usize {
    kq.kevent(&[], out, timeout).expect("kevent")
}

// ---- groups -------------------------------------------------------------

fn ready1_of_n(n: usize) -> Result<Group, String> {
    if n >= 10_000 {
        raise_nofile(n as u64 + 4096)?;
    }
    let idle = Rc::new(eventfds(n).map_err(|e| format!("cannot open {n} eventfds: {e}"))?);
    let mut g = Group::new("ready1_of_n", Some(n));
    let (rx, mut tx) = io::pipe().expect("pipe");
    tx.write_all(b"x").expect("write");
    let live = rx.as_raw_fd();
    let rx = Rc::new((rx, tx));
    for be in backends() {
        let changes: Vec<Kevent> = idle
            .iter()
            .map(|f| f.as_raw_fd())
            .chain([live])
            .map(|fd| add(fd, Flags::empty(), 0))
            .collect();
        let kq = be.queue(&changes)?;
        let mut out = [Kevent::default(); 1];
        let keep = (Rc::clone(&idle), Rc::clone(&rx));
        g.add(
            format!("kevent-{}", be.name),
            Some("raw-epoll-level-fionread"),
            move || {
                let _ = &keep;
                let got = wait(&kq, &mut out, Some(Duration::ZERO));
                assert_eq!(got, 1);
                black_box(out[0].data);
            },
        );
    }
    for fionread_too in [false, true] {
        let ep = RawEpoll::new();
        for f in idle.iter() {
            ep.ctl(libc::EPOLL_CTL_ADD, f.as_raw_fd(), libc::EPOLLIN as u32);
        }
        ep.ctl(libc::EPOLL_CTL_ADD, live, libc::EPOLLIN as u32);
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 1];
        let keep = (Rc::clone(&idle), Rc::clone(&rx));
        let name = if fionread_too {
            "raw-epoll-level-fionread"
        } else {
            "raw-epoll-level"
        };
        g.add(name, None, move || {
            let _ = &keep;
            assert_eq!(ep.wait(&mut buf, 0), 1);
            if fionread_too {
                black_box(fionread(buf[0].u64 as RawFd));
            }
            black_box(buf[0].u64);
        });
    }
    Ok(g)
}

fn ready1_of_n_knotes(n: usize) -> Result<Group, String> {
    let mut g = Group::new("ready1_of_n_knotes", Some(n));
    let (rx, mut tx) = io::pipe().expect("pipe");
    tx.write_all(b"x").expect("write");
    let live = rx.as_raw_fd();
    let rx = Rc::new((rx, tx));
    let changes: Vec<Kevent> = (0..n as u64)
        .map(|i| Kevent::new(i, Filter::User, Flags::ADD, 0, 0, 0))
        .chain([add(live, Flags::empty(), 0)])
        .collect();
    for be in backends() {
        let kq = be.queue(&changes)?;
        let mut out = [Kevent::default(); 1];
        let keep = Rc::clone(&rx);
        g.add(format!("kevent-{}", be.name), None, move || {
            let _ = &keep;
            assert_eq!(wait(&kq, &mut out, Some(Duration::ZERO)), 1);
            black_box(out[0].data);
        });
    }
    Ok(g)
}

/// The kevent variants of a pipe ping-pong (write 1 byte, wait, read it)
/// with a READ knote of `flags`, on every backend: default data, whose
/// peer is `{peer}-fionread`, and `-nodata`, whose peer is `peer`.
fn kevent_pingpong(g: &mut Group, flags: Flags, peer: &str) -> Result<(), String> {
    for be in backends() {
        for (suffix, fflags, peer) in [
            ("", 0, format!("{peer}-fionread")),
            ("-nodata", note::NODATA, peer.to_string()),
        ] {
            let (mut rx, mut tx) = io::pipe().expect("pipe");
            set_nonblocking(rx.as_raw_fd());
            let kq = be.queue(&[add(rx.as_raw_fd(), flags, fflags)])?;
            let mut out = [Kevent::default(); 8];
            let mut byte = [0u8; 1];
            g.add(
                format!("kevent-{}{suffix}", be.name),
                Some(&peer),
                move || {
                    tx.write_all(b"x").expect("write");
                    let n = wait(&kq, &mut out, None);
                    debug_assert_eq!(n, 1);
                    black_box(out[0].data);
                    rx.read_exact(&mut byte).expect("read");
                },
            );
        }
    }
    Ok(())
}

fn pingpong_edge() -> Result<Group, String> {
    let mut g = Group::new("pingpong_edge", None);
    // FreeBSD's `data` (a FIONREAD per event) against mio + FIONREAD, and
    // the NODATA extension (no ioctl) against plain mio.
    kevent_pingpong(&mut g, Flags::CLEAR, "raw-mio")?;
    for fionread_too in [false, true] {
        use mio::{Events, Interest, Poll, Token};
        let mut poll = Poll::new().expect("poll");
        let (mut tx, mut rx) = mio::unix::pipe::new().expect("pipe");
        poll.registry()
            .register(&mut rx, Token(0), Interest::READABLE)
            .expect("register");
        let mut events = Events::with_capacity(8);
        let mut byte = [0u8; 1];
        let name = if fionread_too {
            "raw-mio-fionread"
        } else {
            "raw-mio"
        };
        g.add(name, None, move || {
            tx.write_all(b"x").expect("write");
            poll.poll(&mut events, None).expect("poll");
            let t = events.iter().next().map(|e| e.token());
            if fionread_too {
                black_box(fionread(rx.as_raw_fd()));
            }
            black_box(t);
            rx.read_exact(&mut byte).expect("read");
        });
    }
    Ok(g)
}

fn pingpong_level() -> Result<Group, String> {
    let mut g = Group::new("pingpong_level", None);
    // A level READ knote whose data the loop consumes every time: after
    // each delivery the queue must find out that the condition went away
    // (FreeBSD's re-check), then wait for the next byte.
    kevent_pingpong(&mut g, Flags::empty(), "raw-epoll-level")?;
    for fionread_too in [false, true] {
        let ep = RawEpoll::new();
        let (mut rx, mut tx) = io::pipe().expect("pipe");
        set_nonblocking(rx.as_raw_fd());
        ep.ctl(libc::EPOLL_CTL_ADD, rx.as_raw_fd(), libc::EPOLLIN as u32);
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let mut byte = [0u8; 1];
        let name = if fionread_too {
            "raw-epoll-level-fionread"
        } else {
            "raw-epoll-level"
        };
        g.add(name, None, move || {
            tx.write_all(b"x").expect("write");
            assert_eq!(ep.wait(&mut buf, -1), 1);
            if fionread_too {
                black_box(fionread(buf[0].u64 as RawFd));
            }
            rx.read_exact(&mut byte).expect("read");
        });
    }
    Ok(g)
}

fn level_redelivery() -> Result<Group, String> {
    let mut g = Group::new("level_redelivery", None);
    let (rx, mut tx) = io::pipe().expect("pipe");
    tx.write_all(b"level").expect("write");
    let fd = rx.as_raw_fd();
    let keep = Rc::new((rx, tx));
    for be in backends() {
        for (suffix, fflags, peer, data) in [
            ("", 0, "raw-epoll-level-fionread", 5),
            ("-nodata", note::NODATA, "raw-epoll-level", 1),
        ] {
            let kq = be.queue(&[add(fd, Flags::empty(), fflags)])?;
            let mut out = [Kevent::default(); 8];
            let keep = Rc::clone(&keep);
            g.add(
                format!("kevent-{}{suffix}", be.name),
                Some(peer),
                move || {
                    let _ = &keep;
                    let n = wait(&kq, &mut out, None);
                    debug_assert_eq!((n, out[0].data), (1, data));
                    black_box(out[0].data);
                },
            );
        }
    }
    for fionread_too in [false, true] {
        let ep = RawEpoll::new();
        ep.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32);
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 8];
        let keep = Rc::clone(&keep);
        let name = if fionread_too {
            "raw-epoll-level-fionread"
        } else {
            "raw-epoll-level"
        };
        g.add(name, None, move || {
            let _ = &keep;
            assert_eq!(ep.wait(&mut buf, -1), 1);
            if fionread_too {
                black_box(fionread(buf[0].u64 as RawFd));
            }
            black_box(buf[0].u64);
        });
    }
    Ok(g)
}

fn add_delete() -> Result<Group, String> {
    let mut g = Group::new("add_delete", None);
    let (rx, tx) = io::pipe().expect("pipe");
    let fd = rx.as_raw_fd();
    let keep = Rc::new((rx, tx));
    for be in backends() {
        let kq = be.queue(&[])?;
        let add = [add(fd, Flags::empty(), 0)];
        let del = [Kevent::new(fd as u64, Filter::Read, Flags::DELETE, 0, 0, 0)];
        let keep = Rc::clone(&keep);
        g.add(
            format!("kevent-{}", be.name),
            Some("raw-epoll_ctl"),
            move || {
                let _ = &keep;
                kq.kevent(&add, &mut [], None).expect("add");
                kq.kevent(&del, &mut [], None).expect("delete");
            },
        );
    }
    let ep = RawEpoll::new();
    g.add("raw-epoll_ctl", None, move || {
        let _ = &keep;
        ep.ctl(
            libc::EPOLL_CTL_ADD,
            fd,
            (libc::EPOLLIN | libc::EPOLLET) as u32,
        );
        ep.ctl(libc::EPOLL_CTL_DEL, fd, 0);
    });
    Ok(g)
}

/// A thread that answers: blocked in `kevent()` on `a`, it triggers USER 1
/// on `b` for each USER 1 it collects (ident 2 ends it).
fn wake_variant(be: Be) -> Result<impl FnMut() + 'static, String> {
    let user = |id| Kevent::new(id, Filter::User, Flags::ADD | Flags::CLEAR, 0, 0, 0);
    let a = Arc::new(be.queue(&[user(1), user(2)])?);
    let b = Arc::new(be.queue(&[user(1), user(2)])?);
    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    let t = std::thread::spawn(move || {
        let mut out = [Kevent::default(); 4];
        loop {
            let n = wait(&a2, &mut out, None);
            if out[..n].iter().any(|e| e.ident == 2) {
                return;
            }
            b2.trigger(1).expect("trigger");
        }
    });
    struct Stop(Arc<Kqueue>, Option<std::thread::JoinHandle<()>>);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.trigger(2);
            if let Some(t) = self.1.take() {
                let _ = t.join();
            }
        }
    }
    let stop = Stop(Arc::clone(&a), Some(t));
    let mut out = [Kevent::default(); 4];
    Ok(move || {
        let _ = &stop;
        a.trigger(1).expect("trigger");
        let n = wait(&b, &mut out, None);
        debug_assert_eq!((n, out[0].ident), (1, 1));
    })
}

fn wake() -> Result<Group, String> {
    let mut g = Group::new("wake", None);
    for be in backends() {
        if be.name == "uring1" {
            // A single-issuer queue is used from one thread only.
            continue;
        }
        g.add(
            format!("kevent-{}", be.name),
            Some("raw-eventfd-epoll"),
            wake_variant(be)?,
        );
    }
    // Peer: eventfd + epoll each way.
    let efd = |()| -> OwnedFd { eventfds(1).expect("eventfd").pop().expect("one") };
    let (ea, eb) = (Arc::new(efd(())), Arc::new(efd(())));
    let (epa, epb) = (RawEpoll::new(), RawEpoll::new());
    epa.ctl(
        libc::EPOLL_CTL_ADD,
        ea.as_raw_fd(),
        (libc::EPOLLIN | libc::EPOLLET) as u32,
    );
    epb.ctl(
        libc::EPOLL_CTL_ADD,
        eb.as_raw_fd(),
        (libc::EPOLLIN | libc::EPOLLET) as u32,
    );
    let signal = |fd: RawFd, v: u64| {
        // SAFETY: an 8-byte write of a live u64 to an eventfd.
        let rc = unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
        assert_eq!(rc, 8);
    };
    let drain = |fd: RawFd| -> u64 {
        let mut v = 0u64;
        // SAFETY: an 8-byte read into a live u64.
        let rc = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        if rc == 8 {
            v
        } else {
            0
        }
    };
    let (ea2, eb2) = (Arc::clone(&ea), Arc::clone(&eb));
    let t = std::thread::spawn(move || {
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 4];
        loop {
            epa.wait(&mut buf, -1);
            let v = drain(ea2.as_raw_fd());
            if v >= 1 << 32 {
                return;
            }
            if v > 0 {
                signal(eb2.as_raw_fd(), 1);
            }
        }
    });
    struct Stop(Arc<OwnedFd>, Option<std::thread::JoinHandle<()>>);
    impl Drop for Stop {
        fn drop(&mut self) {
            let v: u64 = 1 << 32;
            // SAFETY: an 8-byte write of a live u64 to an eventfd.
            unsafe { libc::write(self.0.as_raw_fd(), (&v as *const u64).cast(), 8) };
            if let Some(t) = self.1.take() {
                let _ = t.join();
            }
        }
    }
    let stop = Stop(Arc::clone(&ea), Some(t));
    let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 4];
    g.add("raw-eventfd-epoll", None, move || {
        let _ = &stop;
        signal(ea.as_raw_fd(), 1);
        loop {
            epb.wait(&mut buf, -1);
            if drain(eb.as_raw_fd()) > 0 {
                break;
            }
        }
    });
    Ok(g)
}

// ---- driver -------------------------------------------------------------

/// The criterion filter from the command line (a substring here).
fn filter() -> Option<String> {
    let mut args = std::env::args().skip(1);
    let with_value = [
        "--warm-up-time",
        "--measurement-time",
        "--profile-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--noise-threshold",
        "--significance-level",
        "--confidence-level",
        "--nresamples",
        "--output-format",
        "--plotting-backend",
        "--color",
        "--format",
        "-c",
        "-s",
        "-b",
    ];
    while let Some(a) = args.next() {
        if with_value.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            return Some(a);
        }
    }
    None
}

/// Whether the filter (a substring; a trailing `$` anchors it at the end,
/// as in criterion's regex) selects the benchmark `id`.
fn selected(f: &Option<String>, id: &str) -> bool {
    f.as_ref().is_none_or(|f| match f.strip_suffix('$') {
        Some(tail) => id.ends_with(tail),
        None => id.contains(f.as_str()),
    })
}

/// Whether group `name` can hold a variant the filter selects: a filter
/// naming a group (the longest group name it contains) selects that group
/// only; any other filter may match variants of every group.
fn group_wanted(f: &Option<String>, name: &str) -> bool {
    let Some(f) = f else { return true };
    let named = groups()
        .into_iter()
        .map(|(n, _, _)| n)
        .filter(|n| f.contains(n))
        .max_by_key(|n| n.len());
    named.is_none_or(|n| n == name)
}

type Build = Box<dyn Fn() -> Result<Group, String>>;

/// Every group, by name and parameter, built on demand.
fn groups() -> Vec<(&'static str, Option<usize>, Build)> {
    let mut v: Vec<(&'static str, Option<usize>, Build)> = Vec::new();
    let mut sizes = vec![1usize, 1_000, 10_000, 100_000];
    // Where 100k fds cannot be had (the hard RLIMIT_NOFILE), also the
    // largest size that fits, so the curve reaches as far as it can.
    if let Some(m) = largest_idle_fds().filter(|&m| m > 10_000 && m < 100_000) {
        sizes.insert(3, m);
    }
    for n in sizes {
        v.push(("ready1_of_n", Some(n), Box::new(move || ready1_of_n(n))));
    }
    for n in [1usize, 1_000, 10_000, 100_000] {
        v.push((
            "ready1_of_n_knotes",
            Some(n),
            Box::new(move || ready1_of_n_knotes(n)),
        ));
    }
    v.push(("pingpong_edge", None, Box::new(pingpong_edge)));
    v.push(("pingpong_level", None, Box::new(pingpong_level)));
    v.push(("level_redelivery", None, Box::new(level_redelivery)));
    v.push(("add_delete", None, Box::new(add_delete)));
    v.push(("wake", None, Box::new(wake)));
    v
}

/// The instruction-count driver's loop (callgrind's `--toggle-collect`).
#[inline(never)]
fn run_iters(body: &mut Body, n: u64) {
    for _ in 0..n {
        body();
    }
}

/// One summary row: variant, peer, median wall ns and CPU ns per iteration.
struct Row {
    name: String,
    peer: Option<String>,
    wall: f64,
    cpu: f64,
}

/// Interleaved rounds over the group's variants (A B C … A B C …).
fn interleave(g: &mut Group, f: &Option<String>) -> Vec<Row> {
    const ROUNDS: usize = 7;
    const ROUND: Duration = Duration::from_millis(20);
    let idx: Vec<usize> = (0..g.variants.len())
        .filter(|&i| selected(f, &g.id(&g.variants[i].name)) || g.variants[i].peer.is_none())
        .collect();
    // Calibrate each to ~ROUND per round.
    let mut iters = vec![1u64; g.variants.len()];
    for &i in &idx {
        let body = &mut g.variants[i].body;
        let mut n = 16u64;
        loop {
            let t = Instant::now();
            run_iters(body, n);
            let e = t.elapsed();
            if e >= ROUND / 4 || n >= 1 << 24 {
                iters[i] = ((n as f64 * ROUND.as_secs_f64() / e.as_secs_f64().max(1e-9)) as u64)
                    .clamp(16, 1 << 26);
                break;
            }
            n *= 4;
        }
    }
    let mut wall = vec![Vec::new(); g.variants.len()];
    let mut cpu = vec![Vec::new(); g.variants.len()];
    for _ in 0..ROUNDS {
        for &i in &idx {
            let n = iters[i];
            let (c0, t0) = (common::process_cpu(), Instant::now());
            run_iters(&mut g.variants[i].body, n);
            let (w, c) = (t0.elapsed(), common::process_cpu() - c0);
            wall[i].push(w.as_secs_f64() * 1e9 / n as f64);
            cpu[i].push(c.as_secs_f64() * 1e9 / n as f64);
        }
    }
    idx.iter()
        .map(|&i| Row {
            name: g.variants[i].name.clone(),
            peer: g.variants[i].peer.clone(),
            wall: common::median(&mut wall[i]),
            cpu: common::median(&mut cpu[i]),
        })
        .collect()
}

fn print_summary(all: &[(String, Vec<Row>)]) {
    println!(
        "\nqueue summary: 7 interleaved rounds of ~20 ms per variant, medians per iteration; \
         ratio = variant / peer (lower is better)"
    );
    for (title, rows) in all {
        println!("\n{title}");
        println!(
            "  {:<28} {:>10} {:>10} {:>26}",
            "variant", "wall ns", "CPU ns", "wall ratio (CPU) to peer"
        );
        for r in rows {
            let peer = r
                .peer
                .as_ref()
                .and_then(|p| rows.iter().find(|x| &x.name == p));
            let ratio = match peer {
                Some(p) => format!(
                    "{:.2}x ({:.2}x) {}",
                    r.wall / p.wall,
                    r.cpu / p.cpu.max(1e-9),
                    p.name
                ),
                None => String::new(),
            };
            println!(
                "  {:<28} {:>10.0} {:>10.0} {:>26}",
                r.name, r.wall, r.cpu, ratio
            );
        }
    }
}

fn main() {
    let f = filter();
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test" || a == "--list");
    if let Ok(n) = std::env::var("QUEUE_ITERS") {
        // Instruction-count driver: the selected variants only, no criterion.
        let n: u64 = n.parse().expect("QUEUE_ITERS: a count");
        for (name, param, build) in groups() {
            if !group_wanted(&f, name) {
                continue;
            }
            let mut g = match build() {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("{}: {e}; skipped", title(name, param));
                    continue;
                }
            };
            for i in 0..g.variants.len() {
                let id = g.id(&g.variants[i].name);
                if selected(&f, &id) {
                    let t = Instant::now();
                    run_iters(&mut g.variants[i].body, n);
                    eprintln!("{id}: {n} iterations in {:?}", t.elapsed());
                }
            }
        }
        return;
    }
    let summary = !test_mode && std::env::var("QUEUE_SUMMARY").map_or(true, |v| v != "0");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut all = Vec::new();
    for (name, param, build) in groups() {
        if !group_wanted(&f, name) {
            continue;
        }
        let mut g = match build() {
            Ok(g) => g,
            Err(e) => {
                eprintln!(
                    "queue bench: {}: {e}; skipping this size",
                    title(name, param)
                );
                continue;
            }
        };
        if !g.variants.iter().any(|v| selected(&f, &g.id(&v.name))) {
            continue;
        }
        if std::env::var("QUEUE_CRITERION").map_or(true, |v| v != "0") {
            let mut cg = c.benchmark_group(g.name);
            let param = g.param;
            for v in &mut g.variants {
                let body = &mut v.body;
                match param {
                    Some(p) => cg.bench_function(BenchmarkId::new(v.name.as_str(), p), |b| {
                        b.iter(&mut *body)
                    }),
                    None => cg.bench_function(v.name.as_str(), |b| b.iter(&mut *body)),
                };
            }
            cg.finish();
        }
        if summary {
            let rows = interleave(&mut g, &f);
            all.push((g.title(), rows));
        }
    }
    c.final_summary();
    if summary {
        print_summary(&all);
    }
}
