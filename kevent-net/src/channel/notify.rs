//! The wake-up path: an eventfd the consumer blocks on and the producer
//! writes to, only when the need-wakeup flag says the consumer may sleep.
//!
//! The eventfd is the seam to kevent's queue: a consumer that waits in its
//! `Kqueue` registers [`Notifier::as_fd`] for READ there instead of
//! calling [`Notifier::wait`] (a `Filter::User` trigger was measured as
//! the alternative and costs the producer more; see the channel module's
//! docs).
//!
//! Under `--cfg loom` the eventfd is replaced by a loom `Mutex` + `Condvar`
//! counter with the same semantics, so a lost wake-up shows up as a loom
//! deadlock.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
    /// Sum of the counts read back from the eventfd (see
    /// [`Notifier::read_total`]).
    read_total: AtomicU64,
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
        Ok(Self {
            read_total: AtomicU64::new(0),
            fd,
        })
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
        #[cfg(miri)]
        return self.wait_polling(timeout);
        #[cfg(not(miri))]
        self.wait_ppoll(timeout)
    }

    /// The real wait: one `ppoll(2)` on the eventfd, then a `read(2)`.
    #[cfg(not(miri))]
    fn wait_ppoll(&self, timeout: Option<Duration>) -> io::Result<bool> {
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

    /// Miri has no `ppoll(2)` (it does model the eventfd itself): poll the
    /// count with non-blocking reads, sleeping 100 µs of Miri's virtual
    /// clock between them. Same contract as the real wait, so the
    /// need-wakeup protocol and the unsafe ring code above it run
    /// unchanged under Miri.
    #[cfg(miri)]
    fn wait_polling(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let start = std::time::Instant::now();
        loop {
            if self.drain()? > 0 {
                return Ok(true);
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
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
            Ok(_) => {
                self.read_total.fetch_add(count, Relaxed);
                Ok(count)
            }
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

impl Notifier {
    /// The sum of the counts [`wait`](Self::wait) and
    /// [`drain`](Self::drain) have read back from the eventfd so far.
    ///
    /// Each [`notify`](Self::notify) adds one to the kernel's counter and
    /// each read returns and zeroes it, so `read_total()` plus one last
    /// `drain()` is the number of notifications the kernel counted: an
    /// account of the wake-up syscalls that does not trust the producer's
    /// own tally ([`Producer::wake_syscalls`](crate::Producer::wake_syscalls)).
    /// A count the kernel saturated (2^64 - 2) would be the only gap.
    #[must_use]
    pub fn read_total(&self) -> u64 {
        self.read_total.load(Relaxed)
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
            read_total: AtomicU64::new(0),
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
        let n = std::mem::take(&mut *c);
        self.read_total.fetch_add(n, Relaxed);
        Ok(n > 0)
    }

    /// Model of the non-blocking drain.
    pub fn drain(&self) -> io::Result<u64> {
        let mut c = self.count.lock().unwrap();
        let n = std::mem::take(&mut *c);
        self.read_total.fetch_add(n, Relaxed);
        Ok(n)
    }
}
