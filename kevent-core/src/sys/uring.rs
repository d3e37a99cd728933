//! The io_uring backend: epoll readiness driven through the ring.
//!
//! # Design
//!
//! Readiness of user fds comes from two private epoll instances, one per
//! direction (`epr` for READ watches and the storages' internal fds, `epw`
//! for WRITE watches), so every fd knote has a registration of its own and
//! its own mode: a READ `CLEAR` knote and a WRITE knote on one socket never
//! re-report each other (the epoll backend's per-fd caveat). The ring holds
//! one `IORING_OP_EPOLL_WAIT` per instance and a multishot `PollAdd` on the
//! waker eventfd; `wait` re-submits whichever ended and waits for a
//! completion in the same `io_uring_enter` (`submit_with_args` with the
//! timeout), so a steady edge-triggered loop costs one syscall per
//! `kevent()`.
//!
//! **Why not a `PollAdd` per knote.** A poll request holds a reference to
//! the file until it completes or is cancelled. A user who `close()`s a
//! socket without `EV_DELETE` (normal under kqueue, where close removes the
//! knotes) would keep it alive: no FIN is sent, the peer waits for EOF
//! forever, and the number is reused while the old file lives on. Epoll
//! holds no reference: the last close removes the registration, exactly as
//! FreeBSD removes knotes on close. So the registration lives in epoll and
//! only the *wait* goes through the ring.
//!
//! **Why registrations are synchronous `epoll_ctl`.** A change's error
//! (`EPERM` for an fd without poll support, `ENOMEM`, `ELOOP`) must come
//! back with that change, and an `EPOLL_CTL` SQE names an fd *number*: one
//! queued before a close and run after the number was reused and re-added
//! would hit the new file's registration (the kernel may also punt it to a
//! worker on lock contention, reordering it after a later synchronous
//! call). Steady-state loops make no changes, so this costs nothing there.
//!
//! # Sharing the ring between threads
//!
//! The queue lets one thread at a time (the leader) call `wait`; others may
//! call `register`/`deregister`/`wake` meanwhile. Those are plain syscalls
//! on the epoll fds and the eventfd and never touch the ring. Only `wait`
//! pushes SQEs and reaps CQEs, under `cq` (uncontended by construction).
//! The ring is therefore set up without `SINGLE_ISSUER`/`DEFER_TASKRUN`:
//! the leader changes from thread to thread, and a single issuer would
//! forbid that (`EEXIST` from `io_uring_enter`).
//!
//! # Storage ops
//!
//! A storage may submit ring ops of its own (network AIO) through
//! `submit_op` from any thread: they wait in `pending` and the leader
//! pushes them with its next wait, so they cost no syscall of their own.
//! If a leader is already blocked (`in_wait`), the submitter wakes it.
//! Their completions (`user_data` with a non-zero top byte, the queue's
//! token layout) come back as [`OsEvent`]s marked [`super::COMPLETION`].
//! A storage may also register a provided-buffer ring (`register_buf_ring`,
//! a synchronous `io_uring_register`) for ops that select buffers.
//!
//! # Buffers
//!
//! Each `EPOLL_WAIT` writes into a buffer owned by this struct; the kernel
//! owns it from submission until the op's completion. On drop, in-flight
//! ops are cancelled and their completions awaited; if that fails the
//! buffers are leaked rather than freed under the kernel.

use super::{syscall, Interest, OsEvent, Readiness, COMPLETION};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use parking_lot::Mutex;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const EVENTS: usize = 256;
const ENTRIES: u32 = 32;
/// Completion queue size: multishot storage ops (network AIO on many
/// connections) post several CQEs per op between waits; past the CQ the
/// kernel allocates overflow entries (and may end multishot requests).
const CQ_ENTRIES: u32 = 1024;

/// `user_data` of the ring's requests.
const UD_EPR: u64 = 0;
const UD_EPW: u64 = 1;
const UD_WAKE: u64 = 2;
pub(crate) const UD_CANCEL: u64 = 3;

/// An epoll event buffer the kernel writes while an `EPOLL_WAIT` is in
/// flight.
#[derive(Debug)]
struct EvBuf(NonNull<libc::epoll_event>);

// SAFETY: the buffer is a plain heap allocation owned by the backend; it is
// only read under `Uring::cq` after the op that wrote it completed.
unsafe impl Send for EvBuf {}

impl EvBuf {
    fn new() -> EvBuf {
        let b: Box<[libc::epoll_event]> = (0..EVENTS)
            .map(|_| libc::epoll_event { events: 0, u64: 0 })
            .collect();
        // SAFETY: `Box::into_raw` never returns null.
        EvBuf(unsafe { NonNull::new_unchecked(Box::into_raw(b) as *mut libc::epoll_event) })
    }

    /// # Safety
    /// No op may be in flight on the buffer.
    unsafe fn free(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.0.as_ptr(), EVENTS);
        // SAFETY: allocated by `new` as a boxed slice of EVENTS entries;
        // the caller guarantees the kernel no longer owns it.
        drop(unsafe { Box::from_raw(slice) });
    }
}

#[derive(Debug)]
struct Reaper {
    bufs: [EvBuf; 2],
    inflight: [bool; 2],
    wake_armed: bool,
}

/// The io_uring backend (see the module docs).
pub(crate) struct Uring {
    ring: IoUring,
    /// `[epr, epw]`.
    eps: [OwnedFd; 2],
    waker: OwnedFd,
    /// Leader-only: SQ pushes, CQ reaping, the event buffers.
    cq: Mutex<Reaper>,
    /// Storage ops waiting for the leader's next wait.
    pending: Mutex<Vec<squeue::Entry>>,
    /// A leader is between taking `pending` and returning from the kernel.
    in_wait: AtomicBool,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("ring", &self.ring.as_raw_fd())
            .field("eps", &self.eps)
            .finish_non_exhaustive()
    }
}

fn epoll_create() -> io::Result<OwnedFd> {
    let ep = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
    // SAFETY: `ep` was just created and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(ep) })
}

impl Uring {
    /// Set up the ring and probe every opcode used. The error says why
    /// io_uring cannot be used here (for the fallback's log line).
    pub(crate) fn new() -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_clamp()
            .setup_cqsize(CQ_ENTRIES)
            .build(ENTRIES)
            .map_err(|e| annotate(e, "io_uring_setup"))?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| annotate(e, "IORING_REGISTER_PROBE"))?;
        for (code, name) in [
            (opcode::EpollWait::CODE, "EPOLL_WAIT"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks IORING_OP_{name} (kernel too old?)"),
                ));
            }
        }
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (timed waits)",
            ));
        }
        let this = Uring {
            ring,
            eps: [epoll_create()?, epoll_create()?],
            waker: super::eventfd()?,
            cq: Mutex::new(Reaper {
                bufs: [EvBuf::new(), EvBuf::new()],
                inflight: [false; 2],
                wake_armed: false,
            }),
            pending: Mutex::new(Vec::new()),
            in_wait: AtomicBool::new(false),
        };
        // A first round proves the ops work here (seccomp filters may allow
        // setup yet fail the ops).
        this.wait(&mut Vec::new(), Some(Duration::ZERO))
            .map_err(|e| annotate(e, "first io_uring_enter"))?;
        Ok(this)
    }

    pub(crate) fn register(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let (ep, dir) = match interest {
            Interest::Read => (0, libc::EPOLLIN | libc::EPOLLRDHUP),
            Interest::Write => (1, libc::EPOLLOUT),
            Interest::Both => (0, libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLOUT),
        };
        let epfd = self.eps[ep].as_raw_fd();
        let mut ev = libc::epoll_event {
            events: (dir | libc::EPOLLET) as u32,
            u64: token,
        };
        match syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev)) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev)).map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// Stop the watch made with `interest` (`Read` and `Both` share `epr`).
    pub(crate) fn deregister(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        let ep = match interest {
            Interest::Read | Interest::Both => 0,
            Interest::Write => 1,
        };
        match syscall!(epoll_ctl(
            self.eps[ep].as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut()
        )) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn wait(&self, out: &mut Vec<OsEvent>, timeout: Option<Duration>) -> io::Result<()> {
        let mut r = self.cq.lock();
        self.in_wait.store(true, Ordering::SeqCst);
        let pushed = match self.arm(&mut r) {
            Ok(p) => p,
            Err(e) => {
                self.in_wait.store(false, Ordering::SeqCst);
                return Err(e);
            }
        };
        let res = match timeout {
            Some(t) if t.is_zero() => {
                if pushed {
                    self.ring.submitter().submit().map(drop)
                } else {
                    Ok(())
                }
            }
            None => self.ring.submitter().submit_and_wait(1).map(drop),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args).map(drop)
            }
        };
        self.in_wait.store(false, Ordering::SeqCst);
        let res = match res {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EBUSY)) => Ok(()),
            r => r,
        };
        let reaped = self.reap(&mut r, out);
        res.and(reaped)
    }

    /// Queue an `EPOLL_WAIT` per instance and the waker poll where none is
    /// in flight. Returns whether anything was pushed.
    fn arm(&self, r: &mut Reaper) -> io::Result<bool> {
        let mut pushed = false;
        for i in 0..2 {
            if !r.inflight[i] {
                let sqe = opcode::EpollWait::new(
                    types::Fd(self.eps[i].as_raw_fd()),
                    r.bufs[i].0.as_ptr().cast::<types::epoll_event>(),
                    EVENTS as u32,
                )
                .build()
                .user_data(if i == 0 { UD_EPR } else { UD_EPW });
                // SAFETY: the buffer lives until this op's completion (see
                // `Drop`); the epoll fd outlives the ring's use of it.
                unsafe { self.push(&sqe)? };
                r.inflight[i] = true;
                pushed = true;
            }
        }
        if !r.wake_armed {
            let sqe = opcode::PollAdd::new(types::Fd(self.waker.as_raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(UD_WAKE);
            // SAFETY: a poll references no user memory.
            unsafe { self.push(&sqe)? };
            r.wake_armed = true;
            pushed = true;
        }
        let mut pending = self.pending.lock();
        for i in 0..pending.len() {
            // SAFETY: `submit_op`'s contract: the storage keeps the memory
            // the op references valid until its final completion.
            if let Err(e) = unsafe { self.push(&pending[i]) } {
                // Keep the ops not yet pushed for the next wait.
                pending.drain(..i);
                return Err(e);
            }
            pushed = true;
        }
        pending.clear();
        Ok(pushed)
    }

    /// Queue a storage's op for the next wait; wake a blocked leader.
    pub(crate) fn submit_op(&self, sqe: squeue::Entry) -> io::Result<()> {
        self.pending.lock().push(sqe);
        if self.in_wait.load(Ordering::SeqCst) {
            self.wake()?;
        }
        Ok(())
    }

    /// Push one SQE, flushing the SQ first if it is full.
    ///
    /// # Safety
    /// Memory the SQE references must stay valid until its completion; the
    /// caller holds `cq` (the only place SQEs are pushed).
    unsafe fn push(&self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: SQ access is serialised by `cq`, which the caller holds.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: forwarded from the caller.
            if unsafe { sq.push(sqe) }.is_ok() {
                return Ok(());
            }
            drop(sq);
            self.ring.submitter().submit()?;
        }
    }

    fn reap(&self, r: &mut Reaper, out: &mut Vec<OsEvent>) -> io::Result<()> {
        let mut err = None;
        // SAFETY: CQ access is serialised by `cq`, which `r` proves held.
        let cq = unsafe { self.ring.completion_shared() };
        for cqe in cq {
            let res = cqe.result();
            match cqe.user_data() {
                ud @ (UD_EPR | UD_EPW) => {
                    let i = ud as usize;
                    r.inflight[i] = false;
                    if res > 0 {
                        let n = (res as usize).min(EVENTS);
                        // SAFETY: the op completed, so the kernel is done
                        // with the buffer and initialised its first `n`
                        // entries.
                        let evs = unsafe { std::slice::from_raw_parts(r.bufs[i].0.as_ptr(), n) };
                        for ev in evs {
                            out.push(OsEvent {
                                token: ev.u64,
                                ready: Readiness(ev.events),
                                res: 0,
                            });
                        }
                    } else if res < 0
                        && !matches!(-res, libc::EAGAIN | libc::EINTR | libc::ECANCELED)
                    {
                        err = Some(io::Error::from_raw_os_error(-res));
                    }
                }
                // A multishot poll that ended (cancelled with its task, or
                // an error): re-armed by the next `arm`.
                UD_WAKE if !cqueue::more(cqe.flags()) => r.wake_armed = false,
                // A storage's op (the queue's token layout).
                ud if ud >> 56 != 0 => out.push(OsEvent {
                    token: ud,
                    ready: Readiness(COMPLETION | cqe.flags()),
                    res,
                }),
                _ => {}
            }
        }
        err.map_or(Ok(()), Err)
    }

    pub(crate) fn wake(&self) -> io::Result<()> {
        super::eventfd_signal(self.waker.as_raw_fd())
    }

    /// Register a storage's provided-buffer ring as group `bgid`. A plain
    /// `io_uring_register`: callable from any thread, never touches the SQ.
    ///
    /// # Safety
    /// `addr` is a page-aligned mapping of `entries` `io_uring_buf` slots
    /// that stays valid until unregistered or the ring is dropped.
    pub(crate) unsafe fn register_buf_ring(
        &self,
        addr: u64,
        entries: u16,
        bgid: u16,
    ) -> io::Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, bgid, 0)
        }
    }

    pub(crate) fn unregister_buf_ring(&self, bgid: u16) -> io::Result<()> {
        self.ring.submitter().unregister_buf_ring(bgid)
    }

    /// The fds a queue's pollable face watches. Between calls an epoll's
    /// `EPOLL_WAIT` may be in flight (new readiness then completes it: the
    /// ring turns readable) or not (reaped ops are re-armed only at the
    /// next `wait`: the epoll itself turns readable), so all three.
    pub(crate) fn readiness_fds(&self) -> [RawFd; 3] {
        [
            self.ring.as_raw_fd(),
            self.eps[0].as_raw_fd(),
            self.eps[1].as_raw_fd(),
        ]
    }

    pub(crate) fn pollable(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let r = self.cq.get_mut();
        let mut ok = true;
        for i in 0..2 {
            if !r.inflight[i] {
                continue;
            }
            let sqe = opcode::AsyncCancel::new(i as u64)
                .build()
                .user_data(UD_CANCEL);
            // SAFETY: SQ access is exclusive (`&mut self`); a cancel
            // references no user memory.
            let pushed = unsafe { self.ring.submission_shared().push(&sqe) }.is_ok();
            ok &= pushed;
        }
        // Wait (bounded) for both EPOLL_WAITs to complete.
        let mut rounds = 0;
        while ok && (r.inflight[0] || r.inflight[1]) && rounds < 100 {
            rounds += 1;
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
                Err(_) => ok = false,
            }
            // SAFETY: exclusive access (`&mut self`).
            for cqe in unsafe { self.ring.completion_shared() } {
                if let ud @ (UD_EPR | UD_EPW) = cqe.user_data() {
                    r.inflight[ud as usize] = false;
                }
            }
        }
        for i in 0..2 {
            if r.inflight[i] {
                // The kernel may still write into it: leak, never free.
                continue;
            }
            // SAFETY: no op is in flight on this buffer.
            unsafe { r.bufs[i].free() };
        }
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
