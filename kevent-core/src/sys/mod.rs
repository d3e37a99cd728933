//! Platform code: the one door for syscalls and the backends.
//!
//! # The backend contract
//!
//! Every backend (one file each) provides, through [`Sys`]:
//!
//! - `register(fd, token, interest)`: report readiness of `fd` with `token`,
//!   **edge-triggered**: an event each time the fd becomes ready for a
//!   direction in `interest` (and once at registration if it already is).
//!   The core turns edges into per-knote level/edge/oneshot semantics.
//! - `deregister(fd, interest)`: stop reporting the watch made with
//!   `interest`; never fails on an fd the kernel has already forgotten
//!   (closed). Epoll has one registration per fd and ignores `interest`.
//! - `per_knote()`: whether `register` keeps an independent watch per
//!   direction (`Read` and `Write` on one fd do not replace each other, and
//!   each reports only its own direction). True for io_uring; on epoll a
//!   second `register` of an fd replaces the first.
//! - `wait(bufs, timeout)`: collect ready `(token, readiness)` pairs; `None`
//!   blocks until an event or [`Sys::wake`]; the timeout is honoured to the
//!   nanosecond where the kernel allows. Never called concurrently with
//!   itself (the queue's leader protocol), so it needs no lock of its own.
//!   An `EINTR` from it is a signal's, except on epoll when io_uring task
//!   work of this thread interrupted the wait (see `sys/uring.rs`).
//! - `wake()`: make a concurrent or the next `wait` return; callable from
//!   any thread.
//! - `pollable()`: an fd readable while `wait` would return events.
//!
//! All methods take `&self`: a backend is internally synchronised so that
//! `wait` runs without the queue's lock held while other threads register.

pub(crate) mod epoll;
pub(crate) mod uring;

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Turn a `-1`/errno return into `io::Result`: the one door for syscalls.
/// `syscall!(errno f(..))` is the variant for the functions that return
/// the errno itself and 0 on success (`pthread_sigmask`, `pthread_kill`).
macro_rules! syscall {
    (errno $fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: as below; these functions report failure in their
        // return value and leave `errno` alone.
        let rc = unsafe { libc::$fn($($arg),*) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(rc))
        }
    }};
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: every caller passes valid fds and pointers to live,
        // correctly sized buffers, as the named libc function requires.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Readiness bits reported by a backend, in `epoll`'s encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Readiness(pub u32);

impl Readiness {
    /// Readable (`EPOLLIN`).
    pub const READABLE: Readiness = Readiness(libc::EPOLLIN as u32);
    /// Writable (`EPOLLOUT`).
    pub const WRITABLE: Readiness = Readiness(libc::EPOLLOUT as u32);
    /// Error condition (`EPOLLERR`).
    pub const ERROR: Readiness = Readiness(libc::EPOLLERR as u32);
    /// Hang-up (`EPOLLHUP`).
    pub const HUP: Readiness = Readiness(libc::EPOLLHUP as u32);
    /// Peer closed its writing half (`EPOLLRDHUP`).
    pub const RDHUP: Readiness = Readiness(libc::EPOLLRDHUP as u32);

    /// Whether any bit of `other` is set.
    #[inline]
    pub const fn any(self, other: Readiness) -> bool {
        self.0 & other.0 != 0
    }

    /// Build from `poll(2)` revents.
    #[inline]
    pub(crate) fn from_poll(revents: libc::c_short) -> Readiness {
        let r = revents;
        let mut bits = 0u32;
        if r & libc::POLLIN != 0 {
            bits |= libc::EPOLLIN as u32;
        }
        if r & libc::POLLOUT != 0 {
            bits |= libc::EPOLLOUT as u32;
        }
        if r & libc::POLLERR != 0 {
            bits |= libc::EPOLLERR as u32;
        }
        if r & libc::POLLHUP != 0 {
            bits |= libc::EPOLLHUP as u32;
        }
        if r & libc::POLLRDHUP != 0 {
            bits |= libc::EPOLLRDHUP as u32;
        }
        Readiness(bits)
    }
}

impl std::ops::BitOr for Readiness {
    type Output = Readiness;
    fn bitor(self, rhs: Readiness) -> Readiness {
        Readiness(self.0 | rhs.0)
    }
}

/// What to watch an fd for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Readability (and read hang-up).
    Read,
    /// Writability.
    Write,
    /// Both.
    Both,
}

/// One ready `(token, readiness)` pair from a backend, or (with
/// [`COMPLETION`] set in `ready`) the completion of a ring op a storage
/// submitted: `res` is its result, the rest of `ready` its CQE flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OsEvent {
    pub(crate) token: u64,
    pub(crate) ready: Readiness,
    pub(crate) res: i32,
}

/// The leader's buffers for one [`Sys::wait`]: the epoll backend leaves
/// its `epoll_event`s in `raw` (the waker's among them, `WAKE_TOKEN`), the
/// io_uring backend its events in `out`. Owned by the queue and lent to
/// the one thread that waits.
#[derive(Debug)]
pub(crate) struct WaitBufs {
    pub(crate) out: Vec<OsEvent>,
    pub(crate) raw: Vec<libc::epoll_event>,
}

/// Events one wait takes at most.
pub(crate) const WAIT_EVENTS: usize = 256;

impl Default for WaitBufs {
    fn default() -> WaitBufs {
        WaitBufs {
            out: Vec::with_capacity(WAIT_EVENTS),
            raw: Vec::with_capacity(WAIT_EVENTS),
        }
    }
}

/// Marks an [`OsEvent`] as an op completion (`EPOLLET`'s bit, which epoll
/// never reports).
pub(crate) const COMPLETION: u32 = 1 << 31;

/// The backend in use, chosen at run time.
#[derive(Debug)]
// One per queue, never in a collection: boxing would only add a pointer
// chase to every call.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sys {
    Epoll(epoll::Epoll),
    IoUring(uring::Uring),
}

impl Sys {
    #[inline]
    pub(crate) fn register(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match self {
            Sys::Epoll(ep) => ep.register(fd, token, interest),
            Sys::IoUring(u) => u.register(fd, token, interest),
        }
    }

    /// As `register`, for an fd most likely registered already: on epoll
    /// `EPOLL_CTL_MOD` first (one syscall instead of ADD, EEXIST, MOD).
    #[inline]
    pub(crate) fn reregister(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match self {
            Sys::Epoll(ep) => ep.reregister(fd, token, interest),
            Sys::IoUring(u) => u.register(fd, token, interest),
        }
    }

    /// Stop the watch of `fd` made with `interest` (on epoll the fd's one
    /// registration); an fd already closed is not an error.
    #[inline]
    pub(crate) fn deregister(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        let r = match self {
            Sys::Epoll(ep) => ep.delete(fd),
            Sys::IoUring(u) => u.delete(fd, interest),
        };
        match r {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF)) => Ok(()),
            r => r,
        }
    }

    /// Narrow the watch of `fd` to `keep` (`None`: remove it; with
    /// per-knote watches, remove the `drop` direction's), reporting the
    /// kernel's error as is: `ENOENT` if `fd` no longer names the file that
    /// was registered (closed, its number reused), `EBADF` if it is closed.
    pub(crate) fn unwatch_checked(
        &self,
        fd: RawFd,
        token: u64,
        drop: Interest,
        keep: Option<Interest>,
    ) -> io::Result<()> {
        match self {
            Sys::Epoll(ep) => match keep {
                Some(k) => ep.modify(fd, token, k),
                None => ep.delete(fd),
            },
            Sys::IoUring(u) => u.delete(fd, drop),
        }
    }

    /// Whether `fd`'s watch with `interest` is registered for the file
    /// `fd` names now (`EPOLL_CTL_ADD` answering `EEXIST`, which changes
    /// nothing); if the add succeeds, `Ok(false)` is returned and the new
    /// registration (for the file `fd` names now, with `token`) is kept if
    /// `keep`, else undone.
    pub(crate) fn probe(
        &self,
        fd: RawFd,
        token: u64,
        interest: Interest,
        keep: bool,
    ) -> io::Result<bool> {
        let epfd = match self {
            Sys::Epoll(ep) => ep.pollable(),
            Sys::IoUring(u) => u.epoll_for(interest),
        };
        let mut ev = edge_event(interest, token);
        // SAFETY: a live epoll_event for the kernel to read.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } == 0 {
            if !keep {
                let _ = self.deregister(fd, interest);
            }
            return Ok(false);
        }
        // Read errno without building an `io::Error` for the usual EEXIST.
        // SAFETY: `__errno_location` returns this thread's errno.
        match unsafe { *libc::__errno_location() } {
            libc::EEXIST => Ok(true),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    #[inline]
    pub(crate) fn per_knote(&self) -> bool {
        matches!(self, Sys::IoUring(_))
    }

    /// Wait for events into `bufs` (see the contract above).
    ///
    /// # Safety
    /// Never called concurrently with itself (the queue's leader protocol).
    #[inline]
    pub(crate) unsafe fn wait(
        &self,
        bufs: &mut WaitBufs,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        match self {
            Sys::Epoll(ep) => ep.wait(bufs, timeout),
            // SAFETY: forwarded from the caller.
            Sys::IoUring(u) => unsafe { u.wait(&mut bufs.out, timeout) },
        }
    }

    /// Before the queue goes: end every ring request still in flight,
    /// handing storage ops' final completions to `out` (io_uring; nothing
    /// to do on epoll).
    pub(crate) fn shutdown(&mut self, out: &mut Vec<OsEvent>) {
        if let Sys::IoUring(u) = self {
            u.shutdown(out);
        }
    }

    #[inline]
    pub(crate) fn wake(&self) -> io::Result<()> {
        match self {
            Sys::Epoll(ep) => ep.wake(),
            Sys::IoUring(u) => u.wake(),
        }
    }

    /// Queue a storage's ring op (its `user_data` already set); it is
    /// submitted with the next wait. `Unsupported` on epoll.
    pub(crate) fn submit_op(&self, sqe: io_uring::squeue::Entry) -> io::Result<()> {
        match self {
            Sys::Epoll(_) => Err(io::ErrorKind::Unsupported.into()),
            Sys::IoUring(u) => u.submit_op(sqe),
        }
    }

    /// Register a provided-buffer ring (io_uring); `Unsupported` on epoll.
    ///
    /// # Safety
    /// As [`uring::Uring::register_buf_ring`].
    pub(crate) unsafe fn register_buf_ring(
        &self,
        addr: u64,
        entries: u16,
        bgid: u16,
    ) -> io::Result<()> {
        match self {
            Sys::Epoll(_) => Err(io::ErrorKind::Unsupported.into()),
            // SAFETY: forwarded from the caller.
            Sys::IoUring(u) => unsafe { u.register_buf_ring(addr, entries, bgid) },
        }
    }

    /// Unregister buffer group `bgid` (io_uring); `Unsupported` on epoll.
    pub(crate) fn unregister_buf_ring(&self, bgid: u16) -> io::Result<()> {
        match self {
            Sys::Epoll(_) => Err(io::ErrorKind::Unsupported.into()),
            Sys::IoUring(u) => u.unregister_buf_ring(bgid),
        }
    }

    #[inline]
    pub(crate) fn pollable(&self) -> RawFd {
        match self {
            Sys::Epoll(ep) => ep.pollable(),
            Sys::IoUring(u) => u.pollable(),
        }
    }

    /// The fds readable while the backend holds readiness events (what a
    /// queue's own pollable fd must watch); `-1` for none.
    pub(crate) fn readiness_fds(&self) -> [RawFd; 3] {
        match self {
            Sys::Epoll(ep) => [ep.pollable(), -1, -1],
            Sys::IoUring(u) => u.readiness_fds(),
        }
    }
}

thread_local! {
    /// Whether this thread has entered an io_uring ring of this crate (see
    /// `Epoll::restartable_wait`).
    static RING_USER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Note that this thread submits to an io_uring ring: from now on its
/// blocking epoll waits use the wait that task work cannot interrupt.
#[inline]
pub(crate) fn set_ring_user() {
    RING_USER.with(|r| r.set(true));
}

/// See [`set_ring_user`].
#[inline]
pub(crate) fn ring_user() -> bool {
    RING_USER.with(|r| r.get())
}

/// The edge-triggered `epoll_event` of a watch with `interest` (both
/// backends register their watches in epoll instances).
#[inline]
pub(crate) fn edge_event(interest: Interest, token: u64) -> libc::epoll_event {
    let dir = match interest {
        Interest::Read => libc::EPOLLIN | libc::EPOLLRDHUP,
        Interest::Write => libc::EPOLLOUT,
        Interest::Both => libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLOUT,
    };
    libc::epoll_event {
        events: (dir | libc::EPOLLET) as u32,
        u64: token,
    }
}

/// `EPOLL_CTL_ADD` of an edge-triggered watch in `epfd`, or `MOD` if `fd`
/// is registered there already (under another token; a stale registration
/// for a reused number cannot exist: epoll drops closed files).
pub(crate) fn add_or_modify(
    epfd: RawFd,
    fd: RawFd,
    interest: Interest,
    token: u64,
) -> io::Result<()> {
    let mut ev = edge_event(interest, token);
    match syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev)) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev)).map(drop)
        }
        r => r.map(drop),
    }
}

/// A `timespec` for a relative timeout (`None`: none).
#[inline]
pub(crate) fn timespec(timeout: Option<Duration>) -> Option<libc::timespec> {
    timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    })
}

/// Read an `i32` socket option.
pub(crate) fn getsockopt_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    syscall!(getsockopt(
        fd,
        level,
        name,
        (&mut val as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok(val)
}

/// `ioctl(fd, req, &int)` returning the int.
pub(crate) fn ioctl_int(fd: RawFd, req: libc::Ioctl) -> io::Result<i32> {
    let mut val: libc::c_int = 0;
    syscall!(ioctl(fd, req, &mut val as *mut libc::c_int))?;
    Ok(val)
}

/// `fstat(fd)`.
pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    syscall!(fstat(fd, &mut st))?;
    Ok(st)
}

/// Create an eventfd with `EFD_CLOEXEC | EFD_NONBLOCK`.
pub(crate) fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
    // SAFETY: `fd` was just returned by eventfd and is owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd; a full counter (EAGAIN) already means "signalled".
pub(crate) fn eventfd_signal(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    match syscall!(write(fd, (&one as *const u64).cast(), 8)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reset an eventfd to zero; an already-zero counter is fine.
pub(crate) fn eventfd_drain(fd: RawFd) -> io::Result<()> {
    let mut buf: u64 = 0;
    match syscall!(read(fd, (&mut buf as *mut u64).cast(), 8)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}
