//! The epoll backend.
//!
//! Every fd is registered once, edge-triggered, for the union of what the
//! core asks (mio's model). The core, not the kernel, keeps per-knote
//! level/edge/oneshot semantics, so one registration serves a READ knote
//! with `CLEAR` and a level WRITE knote at once.
//!
//! Why raw epoll rather than `mio::Poll`: several threads must be able to
//! register while one waits (mio's `poll` takes `&mut self`), and timer
//! deadlines need nanosecond timeouts (`epoll_pwait2`; mio rounds to whole
//! milliseconds).

use super::{edge_event, syscall, timespec, Interest, WaitBufs};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Token reserved for the waker eventfd.
pub(crate) const WAKE_TOKEN: u64 = u64::MAX;

#[derive(Debug)]
pub(crate) struct Epoll {
    ep: OwnedFd,
    waker: OwnedFd,
    /// Whether `epoll_pwait2` exists (kernel ≥ 5.11).
    pwait2: AtomicBool,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        let ep = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: `ep` was just created and is owned by no one else.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let waker = super::eventfd()?;
        let this = Epoll {
            ep,
            waker,
            pwait2: AtomicBool::new(true),
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: WAKE_TOKEN,
        };
        syscall!(epoll_ctl(
            this.ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            this.waker.as_raw_fd(),
            &mut ev
        ))?;
        Ok(this)
    }

    pub(crate) fn register(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        super::add_or_modify(self.ep.as_raw_fd(), fd, interest, token)
    }

    /// As `register`, trying `EPOLL_CTL_MOD` first: one syscall for an fd
    /// that is most likely registered already (re-arming after `EAGAIN`).
    pub(crate) fn reregister(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match self.modify(fd, token, interest) {
            // Not registered (closed since, or never): add it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.register(fd, token, interest),
            r => r,
        }
    }

    /// `EPOLL_CTL_MOD`, errors as the kernel gives them.
    pub(crate) fn modify(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = edge_event(interest, token);
        syscall!(epoll_ctl(
            self.ep.as_raw_fd(),
            libc::EPOLL_CTL_MOD,
            fd,
            &mut ev
        ))
        .map(drop)
    }

    /// `EPOLL_CTL_DEL`, errors as the kernel gives them.
    pub(crate) fn delete(&self, fd: RawFd) -> io::Result<()> {
        syscall!(epoll_ctl(
            self.ep.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut()
        ))
        .map(drop)
    }

    /// Wait into `bufs.raw` (the caller's, so no lock is needed here); the
    /// caller skips entries with [`WAKE_TOKEN`].
    pub(crate) fn wait(&self, bufs: &mut WaitBufs, timeout: Option<Duration>) -> io::Result<()> {
        let raw = &mut bufs.raw;
        raw.clear();
        let n = self.epoll_wait(raw, timeout)?;
        // SAFETY: the kernel initialised the first `n` entries (n ≤ capacity).
        unsafe { raw.set_len(n) };
        Ok(())
    }

    fn epoll_wait(
        &self,
        buf: &mut Vec<libc::epoll_event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let cap = buf.capacity() as i32;
        if timeout != Some(Duration::ZERO) && super::ring_user() {
            return self.restartable_wait(buf, timeout);
        }
        // A wait forever or a poll needs no nanoseconds: plain epoll_wait
        // (glibc's, mio's call).
        let whole_ms = match timeout {
            None => Some(-1),
            Some(d) if d.is_zero() => Some(0),
            Some(_) => None,
        };
        if let Some(ms) = whole_ms {
            let n = syscall!(epoll_wait(self.ep.as_raw_fd(), buf.as_mut_ptr(), cap, ms))?;
            return Ok(n as usize);
        }
        if self.pwait2.load(Ordering::Relaxed) {
            let ts = timespec(timeout);
            let tsp = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `buf` has room for `cap` events; `tsp` is null or
            // points to a live timespec; a null sigmask means "unchanged".
            let n = unsafe {
                libc::syscall(
                    libc::SYS_epoll_pwait2,
                    self.ep.as_raw_fd(),
                    buf.as_mut_ptr(),
                    cap,
                    tsp,
                    std::ptr::null::<libc::sigset_t>(),
                    0usize,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOSYS) {
                return Err(err);
            }
            self.pwait2.store(false, Ordering::Relaxed);
        }
        // Round sub-millisecond timeouts up, never down: waking early would
        // turn a timed wait into a busy loop.
        let ms = match timeout {
            None => -1,
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                ms.min(i32::MAX as u128) as i32
            }
        };
        let n = syscall!(epoll_wait(self.ep.as_raw_fd(), buf.as_mut_ptr(), cap, ms))?;
        Ok(n as usize)
    }

    /// A blocking wait that only a signal's handler interrupts, for a
    /// thread that has driven an io_uring ring: the ring's task work (a
    /// completion, or the ring's teardown, which queues work to every
    /// thread that ever submitted to it) sets `TIF_NOTIFY_SIGNAL`, which
    /// makes `epoll_wait` (never restarted) fail with `EINTR` although no
    /// signal was sent. `ppoll` fails with `ERESTARTNOHAND`, which the
    /// kernel restarts transparently unless a handler ran, so it tells the
    /// two apart: peek (events ready: one syscall, as usual), else block in
    /// `ppoll` on the epoll fd (nanosecond timeout), then fetch.
    fn restartable_wait(
        &self,
        buf: &mut Vec<libc::epoll_event>,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let cap = buf.capacity() as i32;
        let ep = self.ep.as_raw_fd();
        let n = syscall!(epoll_wait(ep, buf.as_mut_ptr(), cap, 0))?;
        if n > 0 {
            return Ok(n as usize);
        }
        let ts = timespec(timeout);
        let tsp = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        let mut p = libc::pollfd {
            fd: ep,
            events: libc::POLLIN,
            revents: 0,
        };
        if syscall!(ppoll(&mut p, 1, tsp, std::ptr::null()))? == 0 {
            return Ok(0);
        }
        let n = syscall!(epoll_wait(ep, buf.as_mut_ptr(), cap, 0))?;
        Ok(n as usize)
    }

    pub(crate) fn wake(&self) -> io::Result<()> {
        super::eventfd_signal(self.waker.as_raw_fd())
    }

    pub(crate) fn pollable(&self) -> RawFd {
        self.ep.as_raw_fd()
    }
}
