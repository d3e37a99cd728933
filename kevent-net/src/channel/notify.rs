//! The wake-up path: an eventfd the consumer blocks on and the producer
//! writes to, only when the need-wakeup flag says the consumer may sleep.
//!
//! The eventfd is the seam to kevent's queue: a consumer that waits in its
//! `Kqueue` registers [`Notifier::as_fd`] for READ there (or the wake
//! becomes a USER trigger) instead of calling [`Notifier::wait`].
//!
//! Under `--cfg loom` the eventfd is replaced by a loom `Mutex` + `Condvar`
//! counter with the same semantics, so a lost wake-up shows up as a loom
//! deadlock.

use std::io;
use std::time::Duration;

#[cfg(not(loom))]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

#[cfg(not(loom))]
use crate::sys::cvt;

/// An eventfd used as a counting wake-up: [`notify`](Self::notify) adds
/// one, [`wait`](Self::wait) blocks until the count is non-zero and resets
/// it to zero.
///
/// Several notifications before one wait collapse into one wake-up; a
/// notification nobody waited for makes the next wait return at once
/// (a spurious wake-up for the waiter, which must re-check its condition).
#[derive(Debug)]
pub struct Notifier {
    #[cfg(not(loom))]
    fd: OwnedFd,
    #[cfg(loom)]
    count: loom::sync::Mutex<u64>,
    #[cfg(loom)]
    cond: loom::sync::Condvar,
}

#[cfg(not(loom))]
impl Notifier {
    /// Creates a non-blocking, close-on-exec eventfd with count zero.
    ///
    /// # Errors
    ///
    /// The `eventfd(2)` error, e.g. `EMFILE` when out of descriptors.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; no pointers.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Adds one to the count: one `write(2)` syscall.
    ///
    /// # Errors
    ///
    /// Never in practice: `EAGAIN` (the count is already at its maximum,
    /// so a wake-up is pending anyway) is treated as success.
    pub fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an fd we own.
        let r = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        match cvt(r) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Blocks until the count is non-zero or `timeout` elapses, then
    /// resets the count. `None` waits without limit.
    ///
    /// Returns `true` if a notification was consumed, `false` on timeout
    /// or when a signal interrupted the wait (`EINTR` is not an error
    /// here: the caller re-checks its condition, as after any spurious
    /// wake-up). The timeout has `ppoll(2)`'s nanosecond resolution and
    /// is clamped to `i64::MAX` seconds.
    ///
    /// # Errors
    ///
    /// The `ppoll(2)` or `read(2)` error, other than `EINTR`/`EAGAIN`.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
            // Always < 1e9, fits every c_long.
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), std::ptr::from_ref);
        // SAFETY: `pfd` is one valid pollfd; `ts_ptr` is null or points to a
        // timespec that outlives the call; a null sigmask keeps the mask.
        let r = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
        match cvt(r) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        Ok(self.drain()? > 0)
    }

    /// Resets the count to zero without blocking; returns the count read.
    ///
    /// # Errors
    ///
    /// The `read(2)` error, other than `EAGAIN`/`EINTR` (count already 0).
    pub fn drain(&self) -> io::Result<u64> {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from an fd we own.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut count).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        match cvt(r) {
            Ok(_) => Ok(count),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(not(loom))]
impl AsFd for Notifier {
    /// The eventfd, to register for READ in a poller (a kevent `Kqueue`):
    /// it is readable while a notification is pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(loom)]
impl Notifier {
    /// Model of `eventfd(2)`: a counter under a loom mutex.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            count: loom::sync::Mutex::new(0),
            cond: loom::sync::Condvar::new(),
        })
    }

    /// Model of the eventfd write.
    pub fn notify(&self) -> io::Result<()> {
        let mut c = self.count.lock().unwrap();
        *c += 1;
        self.cond.notify_one();
        Ok(())
    }

    /// Model of the wait. A timeout is not modelled: `Some(_)` polls once.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut c = self.count.lock().unwrap();
        if timeout.is_none() {
            while *c == 0 {
                c = self.cond.wait(c).unwrap();
            }
        }
        let woke = *c > 0;
        *c = 0;
        Ok(woke)
    }

    /// Model of the non-blocking drain.
    pub fn drain(&self) -> io::Result<u64> {
        let mut c = self.count.lock().unwrap();
        Ok(std::mem::take(&mut *c))
    }
}
