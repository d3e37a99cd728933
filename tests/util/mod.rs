//! Helpers for the behaviour tests (mio `tests/util/mod.rs` style).
//!
//! Every helper is `#[track_caller]` so a failure points at the test line,
//! and the `expect_*` helpers tolerate spurious events: they look for the
//! `(ident, filter)` they are about and ignore the rest.
//!
//! [`backend_test!`] turns one test body into one `#[test]` per backend of
//! [`for_each_backend!`], the single list of backends the tests run on.

#![allow(dead_code, unused_macros, unreachable_pub)]

use kevent::kevent_core::Kqueue as CoreQueue;
use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// THE list of backends every behaviour test runs on: `test name => variant`.
///
/// Every concrete backend is here (`Backend::Auto` picks one of them);
/// io_uring needs Linux >= 6.15 (`EPOLL_WAIT`). The test
/// `util_backends_complete` in every test file fails if a backend that
/// works is missing from this list, or one listed cannot be created, so
/// none is skipped silently. On an older kernel, skip io_uring explicitly
/// with `KEVENT_TEST_SKIP=IoUring` (each skipped test says so on stderr).
macro_rules! for_each_backend {
    ($cb:ident ! ( $($args:tt)* )) => {
        $cb! { $($args)* ; epoll => Epoll, io_uring => IoUring }
    };
}

macro_rules! __backend_const {
    (; $($tname:ident => $variant:ident),* ) => {
        /// The backends the behaviour tests run on (from [`for_each_backend!`]).
        pub const BACKENDS: &[Backend] = &[$(Backend::$variant),*];
    };
}
for_each_backend!(__backend_const!());

macro_rules! __backend_tests {
    ([$(#[$m:meta])*] $body:expr ; ) => {};
    ([$(#[$m:meta])*] $body:expr ; $tname:ident => $variant:ident $(, $rn:ident => $rv:ident)* ) => {
        #[test]
        $(#[$m])*
        fn $tname() {
            $crate::util::run(::kevent::Backend::$variant, $body)
        }
        __backend_tests!([$(#[$m])*] $body ; $($rn => $rv),*);
    };
}

/// `backend_test!(name, |b: Backend| { ... })`: a module `name` with one
/// `#[test]` per backend of [`for_each_backend!`], each calling the body
/// with its backend. Attributes before the name (`#[ignore = "why"]`) go
/// on every generated test.
macro_rules! backend_test {
    ($(#[$m:meta])* $name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            for_each_backend!(__backend_tests!([$(#[$m])*] $body));
        }
    };
}

/// Adds, to the test file that invokes it, the test that no working
/// backend is missing from [`BACKENDS`].
macro_rules! backends_complete_test {
    () => {
        #[test]
        fn util_backends_complete() {
            $crate::util::assert_backends_complete();
        }
    };
}

/// Whether the user asked to skip backend `b` (`KEVENT_TEST_SKIP=IoUring`,
/// comma-separated `Debug` names). Never under CI (`CI` set): there every
/// backend runs, and a skip request fails the test.
#[track_caller]
pub fn skipped(b: Backend) -> bool {
    let asked = std::env::var("KEVENT_TEST_SKIP")
        .is_ok_and(|v| v.split(',').any(|n| n.trim() == format!("{b:?}")));
    if asked && std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("KEVENT_TEST_SKIP={b:?} under CI: every backend must run here");
    }
    asked
}

/// Run a test body for one backend.
#[track_caller]
pub fn run(b: Backend, body: impl FnOnce(Backend)) {
    if skipped(b) {
        eprintln!("SKIPPED on {b:?}: KEVENT_TEST_SKIP");
        return;
    }
    body(b)
}

/// Fail if a concrete backend can be created but is not in [`BACKENDS`].
#[track_caller]
pub fn assert_backends_complete() {
    for b in [Backend::Epoll, Backend::IoUring] {
        match Kqueue::with_backend(b) {
            Ok(kq) => {
                assert_eq!(kq.backend(), b, "asked for {b:?}, got another backend");
                assert!(
                    BACKENDS.contains(&b),
                    "backend {b:?} works now: add it to for_each_backend! in tests/util/mod.rs"
                );
            }
            Err(_) if skipped(b) => eprintln!("SKIPPED {b:?}: KEVENT_TEST_SKIP"),
            Err(e) => {
                assert!(
                    !BACKENDS.contains(&b),
                    "backend {b:?} is in BACKENDS but cannot be created: {e}"
                );
                assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{b:?}: {e}");
            }
        }
    }
}

/// A queue (with every storage of the facade) on backend `b`.
#[track_caller]
pub fn kq(b: Backend) -> Kqueue {
    let kq = Kqueue::with_backend(b).unwrap_or_else(|e| panic!("Kqueue::with_backend({b:?}): {e}"));
    assert_eq!(kq.backend(), b);
    kq
}

/// A core queue (only the core's storages) on backend `b`.
#[track_caller]
pub fn core_kq(b: Backend) -> CoreQueue {
    let kq = CoreQueue::with_backend(b).unwrap_or_else(|e| panic!("core with_backend({b:?}): {e}"));
    assert_eq!(kq.backend(), b);
    kq
}

/// The default wait of the `expect_*` helpers.
pub const WAIT: Duration = Duration::from_secs(3);
/// How long `expect_none` watches.
pub const QUIET: Duration = Duration::from_millis(100);

/// `Kevent::new` shorthand.
pub const fn ev(
    ident: u64,
    filter: Filter,
    flags: Flags,
    fflags: u32,
    data: i64,
    udata: u64,
) -> Kevent {
    Kevent::new(ident, filter, flags, fflags, data, udata)
}

/// Apply changes with no room for events: any failing change fails the call.
#[track_caller]
pub fn change(kq: &CoreQueue, changes: &[Kevent]) {
    let n = kq
        .kevent(changes, &mut [], Some(Duration::ZERO))
        .unwrap_or_else(|e| panic!("changes {changes:?} failed: {e}"));
    assert_eq!(n, 0);
}

/// Apply changes with no room for events and return the call's result.
pub fn try_change(kq: &CoreQueue, changes: &[Kevent]) -> io::Result<usize> {
    kq.kevent(changes, &mut [], Some(Duration::ZERO))
}

/// One `kevent()` call with no changes and a 64-entry buffer: the events it
/// returned (none after `timeout`).
#[track_caller]
pub fn drain(kq: &CoreQueue, timeout: Duration) -> Vec<Kevent> {
    let mut out = [Kevent::default(); 64];
    let n = kq
        .kevent(&[], &mut out, Some(timeout))
        .unwrap_or_else(|e| panic!("kevent: {e}"));
    out[..n].to_vec()
}

/// One polling `kevent()` call (timeout zero).
#[track_caller]
pub fn poll_now(kq: &CoreQueue) -> Vec<Kevent> {
    drain(kq, Duration::ZERO)
}

/// Wait up to [`WAIT`] for an event matching `pred`, ignoring others.
#[track_caller]
pub fn expect_where(kq: &CoreQueue, what: &str, pred: impl Fn(&Kevent) -> bool) -> Kevent {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        for e in drain(kq, left.min(Duration::from_millis(200))) {
            if pred(&e) {
                return e;
            }
            if seen.len() < 16 {
                seen.push(e);
            }
        }
        if Instant::now() >= deadline {
            panic!("no event {what} within {WAIT:?}; other events seen: {seen:?}");
        }
    }
}

/// Wait up to [`WAIT`] for an event for `(ident, filter)`, ignoring others.
#[track_caller]
pub fn expect_event(kq: &CoreQueue, ident: u64, filter: Filter) -> Kevent {
    expect_where(kq, &format!("({ident}, {filter:?})"), |e| {
        e.ident == ident && e.filter == filter
    })
}

/// Wait up to [`WAIT`] for an event for `(ident, filter)` whose `data` is
/// `data` (data may grow in steps, e.g. bytes arriving on TCP).
#[track_caller]
pub fn expect_data(kq: &CoreQueue, ident: u64, filter: Filter, data: i64) -> Kevent {
    expect_where(
        kq,
        &format!("({ident}, {filter:?}) with data {data}"),
        |e| e.ident == ident && e.filter == filter && e.data == data,
    )
}

/// Wait up to [`WAIT`] until every `(ident, filter)` was reported at least
/// once (in any order, among any other events); returns them in the order
/// asked.
#[track_caller]
pub fn expect_events(kq: &CoreQueue, want: &[(u64, Filter)]) -> Vec<Kevent> {
    let deadline = Instant::now() + WAIT;
    let mut got: Vec<Option<Kevent>> = vec![None; want.len()];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        for e in drain(kq, left.min(Duration::from_millis(200))) {
            for (i, w) in want.iter().enumerate() {
                if got[i].is_none() && (e.ident, e.filter) == *w {
                    got[i] = Some(e);
                }
            }
        }
        if got.iter().all(Option::is_some) {
            return got.into_iter().map(Option::unwrap).collect();
        }
        if Instant::now() >= deadline {
            panic!("within {WAIT:?} expected {want:?}, got {got:?}");
        }
    }
}

/// Watch the queue for [`QUIET`] (at least two calls) and fail if an event
/// for `(ident, filter)` is reported.
#[track_caller]
pub fn expect_none(kq: &CoreQueue, ident: u64, filter: Filter) {
    let deadline = Instant::now() + QUIET;
    let mut calls = 0;
    while calls < 2 || Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        for e in drain(kq, left) {
            assert!(
                !(e.ident == ident && e.filter == filter),
                "unexpected event {e:?}"
            );
        }
        calls += 1;
    }
}

/// Fail if the queue reports anything within [`QUIET`].
#[track_caller]
pub fn expect_nothing(kq: &CoreQueue) {
    let evs = drain(kq, QUIET);
    assert!(evs.is_empty(), "unexpected events {evs:?}");
    let evs = poll_now(kq);
    assert!(evs.is_empty(), "unexpected events {evs:?}");
}

/// Assert an `io::Result` failed with `errno`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(res: io::Result<T>, errno: i32) {
    match res {
        Ok(v) => panic!("expected errno {errno}, got Ok({v:?})"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "expected errno {errno}, got {e}"
        ),
    }
}

/// Assert an event is an `EV_ERROR` entry for `ident` with `data == errno`.
#[track_caller]
pub fn assert_error_entry(e: &Kevent, ident: u64, errno: i32) {
    assert_eq!(e.ident, ident, "{e:?}");
    assert!(e.flags.contains(Flags::ERROR), "not an error entry: {e:?}");
    assert_eq!(e.data, errno as i64, "errno of {e:?}");
}

/// A fd's number as a kevent ident.
pub fn id(fd: &impl AsRawFd) -> u64 {
    fd.as_raw_fd() as u64
}

/// A non-blocking pipe: `(read end, write end)`.
#[track_caller]
pub fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by no one else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// A connected non-blocking Unix stream socket pair.
#[track_caller]
pub fn socketpair() -> (
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
) {
    let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// A listener on 127.0.0.1 (ephemeral port).
#[track_caller]
pub fn tcp_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

/// A connected non-blocking TCP pair on 127.0.0.1: `(client, server)`.
#[track_caller]
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = tcp_listener();
    let c = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
    let (s, _) = l.accept().expect("accept");
    c.set_nonblocking(true).unwrap();
    s.set_nonblocking(true).unwrap();
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// Write all of `buf` (the fd may be non-blocking but must have room).
#[track_caller]
pub fn write_all(mut w: impl Write, buf: &[u8]) {
    w.write_all(buf).expect("write");
}

/// Read exactly `n` bytes from a non-blocking fd that has them.
#[track_caller]
pub fn read_n(mut r: impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).expect("read");
    buf
}

/// Read everything available from a non-blocking fd; the byte count.
#[track_caller]
pub fn read_avail(mut r: impl Read) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 65536];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Write to a non-blocking fd until it is full; the byte count.
#[track_caller]
pub fn fill(mut w: impl Write) -> usize {
    let buf = [0x5au8; 65536];
    let mut total = 0;
    loop {
        match w.write(&buf) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// Bytes queued in a pipe or socket (`FIONREAD`).
#[track_caller]
pub fn fionread(fd: &impl AsRawFd) -> i64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
    n as i64
}

/// `SO_LINGER {on, 0}` on `s`: its close sends a RST (the peer sees
/// `ECONNRESET`).
#[track_caller]
pub fn linger0(s: &impl AsRawFd) {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a pointer to a live `linger` and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// Syscall counts of a child run of this same test binary under
/// `strace -f -c`: only `test` (exact name, one thread), with env `key` =
/// `tag` (the child's test body sees it and runs the loop measured).
/// Fails, never skips, without strace (`.ci/run` installs it).
#[track_caller]
pub fn strace_child(test: &str, key: &str, tag: &str) -> HashMap<String, u64> {
    let exe = std::env::current_exe().unwrap();
    let out = std::env::temp_dir().join(format!(
        "kevent-strace-{}-{test}-{tag}.txt",
        std::process::id()
    ));
    let status = std::process::Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&out)
        .arg(&exe)
        .args(["--exact", test, "--test-threads", "1"])
        .env(key, tag)
        .status()
        .expect("strace is needed for this test (.ci/run installs it)");
    assert!(status.success(), "child under strace failed: {status}");
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    parse_strace(&text)
}

/// `strace -c` summary rows: syscall name -> calls.
pub fn parse_strace(s: &str) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for line in s.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if cols.len() >= 5 && cols[0].parse::<f64>().is_ok() {
            if let Ok(calls) = cols[3].parse::<u64>() {
                m.insert(cols[cols.len() - 1].to_string(), calls);
            }
        }
    }
    m
}

/// Make `target` refer to the file of `src` (`dup2`): closes what `target`
/// was and reuses its number, race-free with other test threads.
#[track_caller]
pub fn dup_onto(src: &impl AsRawFd, target: RawFd) -> OwnedFd {
    // SAFETY: dup2 on two fds; the caller gives up its ownership of
    // `target`'s old file, which dup2 closes.
    let rc = unsafe { libc::dup2(src.as_raw_fd(), target) };
    assert_eq!(rc, target, "dup2: {}", io::Error::last_os_error());
    // SAFETY: `target` now holds a fresh reference owned by the result.
    unsafe { OwnedFd::from_raw_fd(target) }
}

/// Close `old` and put the file of `new` at its number (`dup2`: the close
/// and the reuse in one step, race-free with other test threads): a number
/// closed without `EV_DELETE` and reused. `new`'s own fd stays open.
#[track_caller]
pub fn reuse_number(old: impl IntoRawFd, new: &impl AsRawFd) -> OwnedFd {
    dup_onto(new, old.into_raw_fd())
}

/// [`reuse_number`] by a new Unix socket pair: `old`'s number now names
/// one end; returns it and the other end (the peer to write to).
#[track_caller]
pub fn reuse_by_socketpair(old: impl IntoRawFd) -> (OwnedFd, std::os::unix::net::UnixStream) {
    let (a, p) = socketpair();
    (reuse_number(old, &a), p)
}

/// A real-time signal of its own for each test (signals are per thread,
/// but distinct numbers keep a failure's leftovers out of other tests).
#[track_caller]
pub fn rt(n: i32) -> i32 {
    let s = libc::SIGRTMIN() + n;
    assert!(s <= libc::SIGRTMAX());
    s
}

/// Block `sig` in this thread, then send it to this thread `times` times.
#[track_caller]
pub fn raise(sig: i32, times: usize) {
    kevent::block_signals(&[sig]).unwrap();
    for _ in 0..times {
        // SAFETY: pthread_kill on the calling thread with a blocked signal.
        let rc = unsafe { libc::pthread_kill(libc::pthread_self(), sig) };
        assert_eq!(rc, 0);
    }
}

/// A queue on backend `b` with the network AIO storage `aio` (from
/// `Aio::new` or `Aio::with_pool`) added: the queue and its `Aio` handle.
#[track_caller]
pub fn aio_kq(
    b: Backend,
    (aio, storage): (kevent::kevent_net::aio::Aio, Box<dyn kevent::Storage>),
) -> (Kqueue, kevent::kevent_net::aio::Aio) {
    let kq = Kqueue::builder(b)
        .unwrap_or_else(|e| panic!("Kqueue::builder({b:?}): {e}"))
        .storage(storage)
        .build()
        .unwrap_or_else(|e| panic!("build on {b:?}: {e}"));
    assert_eq!(kq.backend(), b);
    (kq, aio)
}

/// A unique path under the temp dir, removed (file or directory tree) on
/// drop.
#[derive(Debug)]
pub struct TempPath(pub PathBuf);

impl TempPath {
    /// A fresh unique path (nothing created).
    pub fn new(tag: &str) -> TempPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempPath(std::env::temp_dir().join(format!("kevent-test-{}-{n}-{tag}", std::process::id())))
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A sibling path with a suffix (removed on drop too if a file).
    pub fn with_suffix(&self, s: &str) -> PathBuf {
        let mut p = self.0.clone().into_os_string();
        p.push(s);
        p.into()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
        for s in [".link", ".renamed"] {
            let _ = std::fs::remove_file(self.with_suffix(s));
        }
    }
}
