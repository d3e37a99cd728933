//! The io_uring backend: epoll readiness driven through the ring.
//!
//! # Design
//!
//! Readiness of user fds comes from two private epoll instances, one per
//! direction (`epr` for READ watches and the storages' internal fds, `epw`
//! for WRITE watches), so every fd knote has a registration of its own and
//! its own mode: a READ `CLEAR` knote and a WRITE knote on one socket never
//! re-report each other (the epoll backend's per-fd caveat). The ring holds
//! one `IORING_OP_EPOLL_WAIT` per instance and a multishot `PollAdd` on
//! the waker eventfd; `wait` re-submits whichever ended and waits for a
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
//! only the *wait* goes through the ring (`tests/uring_close.rs` closes a
//! connected socket with READ and WRITE knotes and checks the peer's EOF).
//!
//! **Why registrations are synchronous `epoll_ctl`.** A change's error
//! (`EPERM` for an fd without poll support, `ENOMEM`, `ELOOP`) must come
//! back with that change, and an `EPOLL_CTL` SQE names an fd *number*: one
//! queued before a close and run after the number was reused and re-added
//! would hit the new file's registration (the kernel may also punt it to a
//! worker on lock contention, reordering it after a later synchronous
//! call). Steady-state loops make no changes, so this costs nothing there.
//!
//! **The waker.** Another thread wakes a blocked leader by writing the
//! waker eventfd, watched by a multishot `PollAdd` in the ring, which
//! posts a completion per write whether or not the counter was drained.
//! So the counter is drained only when the poll is (re-)armed — after a
//! cancel or an error ended the multishot; before, an undrained eventfd
//! stayed readable and the re-armed poll fired at once — and a count found
//! then is a wake in its own right (that wait does not block). Measured
//! on the queue bench's `wake` group (a cross-thread USER trigger and its
//! answer: two wakes per round trip, process CPU time, interleaved runs):
//! drain at re-arm ~5.2-5.6 µs per round trip; a drain `read` per wake
//! ~5.9-6.4 µs; an `IORING_OP_READ` of a blocking eventfd kept in the ring
//! (drains without a syscall of its own, but each read parks as an
//! internal poll and is re-armed per wake) ~7.0-7.3 µs; raw eventfd +
//! epoll ~6.0 µs. The larger cost had been elsewhere: the queue woke the
//! leader while still holding its lock, so the leader woke only to sleep
//! on the lock (~14 µs per round trip before, on both backends).
//!
//! # Sharing the ring between threads (the default)
//!
//! The queue lets one thread at a time (the leader) call `wait`; others may
//! call `register`/`deregister`/`wake` meanwhile. Those are plain syscalls
//! on the epoll fds and the eventfd and never touch the ring. Only `wait`
//! pushes SQEs and reaps CQEs (the reaper state is the leader's alone, as
//! the queue's wait buffers are). The leader changes from thread to
//! thread, so the default ring is set up without `SINGLE_ISSUER` (which
//! would fail another thread's `io_uring_enter` with `EEXIST`) and without
//! `COOP_TASKRUN`: a request's completion runs as task work of the thread
//! that *submitted* it, and a thread that armed an `EPOLL_WAIT` and is now
//! parked as a follower must be woken (`TWA_SIGNAL`) for the current
//! leader to see that completion.
//!
//! That task work is also the source of spurious `EINTR`s: it sets
//! `TIF_NOTIFY_SIGNAL` on the submitting thread, which makes a blocking
//! `epoll_wait` of that thread (never restarted by the kernel) fail with
//! `EINTR` although no signal was sent. `io_uring_enter` itself does not
//! fail for it (it runs the task work and goes on waiting), and most other
//! blocking calls are restarted transparently; `epoll_wait` is the one
//! that surfaces it, so it hits the epoll backend (or any `epoll_wait`) of
//! a thread that also drives a ring. Even a ring with nothing in flight
//! causes it once more when it is torn down: the kernel's ring exit work
//! queues task work to every thread that ever submitted to it
//! (`io_ring_exit_work`, measured here: the `EINTR` came ~20 ms after the
//! drop). So a thread that has entered one of our rings is marked, and
//! its epoll backend blocks in `ppoll` on the epoll fd instead, which the
//! kernel restarts unless a signal handler ran (`Epoll::restartable_wait`;
//! `tests/uring_eintr.rs`). Dropping a queue also cancels every request
//! still in flight and reaps the completions before the ring closes, so
//! no completion runs later on some thread.
//!
//! # One thread only: `SINGLE_ISSUER | DEFER_TASKRUN`
//!
//! [`crate::Builder::single_thread`] sets the ring up for a queue whose
//! events are collected by one thread only, the one that built it:
//! `SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`. Completions are then
//! processed only inside that thread's own `io_uring_enter`, never by
//! interrupting it (so this ring can cause no spurious `EINTR` anywhere),
//! and the kernel skips the cross-task bookkeeping. Other threads may
//! still apply changes and trigger USER events (those never touch the
//! ring); a wait from another thread fails with a clear error instead of
//! the kernel's `EEXIST`. Measured here (2 cores shared with other jobs,
//! process CPU time, interleaved): the queue bench's `pingpong_edge` 2.28
//! vs 2.28 µs per event (`kevent-uring1` against `kevent-uring`; 919 vs
//! 915 user-space instructions), a one-loop 64-byte TCP ping-pong with
//! both ends on one queue 12.1 vs 12.1 µs per round trip: no measurable
//! gain in these readiness loops, where the waiting thread is the
//! submitter and already runs its completions inside its own enter. It is
//! kept opt-in, for its property (completions never interrupt the
//! thread), and the bench keeps both side by side for a quiet machine to
//! decide.
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
//! owns it from submission until the op's completion. [`Uring::shutdown`] (run when the queue is
//! dropped) cancels every request in flight and waits for the
//! completions; a buffer whose op could not be seen to complete is leaked
//! rather than freed under the kernel.

use super::{syscall, Interest, OsEvent, Readiness, COMPLETION};
use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use parking_lot::Mutex;
use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const EVENTS: usize = super::WAIT_EVENTS;
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

/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;

/// Every opcode the queue's ring may be asked to run: its own (the two
/// waits, the waker poll, cancellation) and the network AIO storage's
/// (`kevent-net/src/aio.rs`, through `submit_op`); `RECVMSG` is the packet
/// source's (on a ring of its own, but `Backend::Auto` choosing io_uring
/// promises it works too).
const OPCODES: &[(u8, &str)] = &[
    (opcode::EpollWait::CODE, "EPOLL_WAIT"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::Splice::CODE, "SPLICE"),
    (opcode::RecvMsg::CODE, "RECVMSG"),
];

/// An epoll event buffer the kernel writes while an `EPOLL_WAIT` is in
/// flight.
#[derive(Debug)]
struct EvBuf(NonNull<libc::epoll_event>);

// SAFETY: the buffer is a plain heap allocation owned by the backend; it is
// only read by the leader after the op that wrote it completed.
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

/// The leader's state: what is in flight, and the buffers it lends the
/// kernel.
#[derive(Debug)]
struct Reaper {
    bufs: [EvBuf; 2],
    inflight: [bool; 2],
    /// The waker's multishot poll is armed.
    wake_inflight: bool,
    /// Storage ops and cancel requests pushed and not yet final.
    ops: usize,
}

/// The io_uring backend (see the module docs).
pub(crate) struct Uring {
    ring: IoUring,
    /// `[epr, epw]`.
    eps: [OwnedFd; 2],
    waker: OwnedFd,
    /// Leader-only (see `wait`'s contract).
    reaper: UnsafeCell<Reaper>,
    /// Storage ops waiting for the leader's next wait.
    pending: Mutex<Vec<squeue::Entry>>,
    /// `pending` is not empty (spares the leader the lock when it is).
    has_pending: AtomicBool,
    /// A leader is between taking `pending` and returning from the kernel.
    in_wait: AtomicBool,
    /// For a single-issuer ring: the thread allowed to wait.
    owner: Option<usize>,
}

// SAFETY: every field is Sync but `reaper`, which only `wait` (whose
// contract makes its caller the one leader), `shutdown` and `drop` (both
// with `&mut self`) touch.
unsafe impl Sync for Uring {}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("ring", &self.ring.as_raw_fd())
            .field("eps", &self.eps)
            .field("single_issuer", &self.owner.is_some())
            .finish_non_exhaustive()
    }
}

fn epoll_create() -> io::Result<OwnedFd> {
    let ep = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
    // SAFETY: `ep` was just created and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(ep) })
}

/// An address unique to the calling thread (for the single-issuer check;
/// no syscall).
fn thread_marker() -> usize {
    thread_local!(static MARK: u8 = const { 0 });
    MARK.with(|m| m as *const u8 as usize)
}

/// Whether io_uring can run everything the queue needs here, checked once
/// per process: every opcode of [`OPCODES`], `IORING_FEAT_EXT_ARG` (timed
/// waits), and provided-buffer ring registration (the packet source's).
fn probe(ring: &IoUring) -> io::Result<()> {
    static RESULT: std::sync::OnceLock<Result<(), (io::ErrorKind, String)>> =
        std::sync::OnceLock::new();
    let r = RESULT.get_or_init(|| {
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| (e.kind(), format!("IORING_REGISTER_PROBE: {e}")))?;
        let missing: Vec<&str> = OPCODES
            .iter()
            .filter(|(code, _)| !probe.is_supported(*code))
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err((
                io::ErrorKind::Unsupported,
                format!(
                    "io_uring lacks IORING_OP_{} (kernel too old, or filtered)",
                    missing.join(", IORING_OP_")
                ),
            ));
        }
        if !ring.params().is_feature_ext_arg() {
            return Err((
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (timed waits)".into(),
            ));
        }
        probe_buf_ring(ring).map_err(|e| {
            (
                io::ErrorKind::Unsupported,
                format!("io_uring buffer rings (IORING_REGISTER_PBUF_RING): {e}"),
            )
        })
    });
    r.clone().map_err(|(k, m)| io::Error::new(k, m))
}

/// Register and unregister a one-entry provided-buffer ring.
fn probe_buf_ring(ring: &IoUring) -> io::Result<()> {
    // SAFETY: anonymous private mapping of one page, no fd, no hint.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the page is valid for one `io_uring_buf` and outlives the
    // registration, which is undone right below (or goes with the ring).
    let res = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(p as u64, 1, 0x7ff0, 0)
    };
    let res = res.and_then(|()| ring.submitter().unregister_buf_ring(0x7ff0));
    // SAFETY: our mapping, no longer registered (or its registration failed).
    unsafe { libc::munmap(p, 4096) };
    res
}

impl Uring {
    /// Set up the ring (shared between threads, or single-issuer for a
    /// queue waited on by this thread only) and check that everything the
    /// queue uses works. The error says why io_uring cannot be used here
    /// (for the fallback's log line).
    pub(crate) fn new(single: bool) -> io::Result<Uring> {
        let mut b = IoUring::builder();
        b.setup_clamp().setup_cqsize(CQ_ENTRIES);
        if single {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        }
        let ring = b
            .build(ENTRIES)
            .map_err(|e| annotate(e, "io_uring_setup"))?;
        probe(&ring)?;
        let waker = super::eventfd()?;
        let this = Uring {
            ring,
            eps: [epoll_create()?, epoll_create()?],
            waker,
            reaper: UnsafeCell::new(Reaper {
                bufs: [EvBuf::new(), EvBuf::new()],
                inflight: [false; 2],
                wake_inflight: false,
                ops: 0,
            }),
            pending: Mutex::new(Vec::new()),
            has_pending: AtomicBool::new(false),
            in_wait: AtomicBool::new(false),
            owner: single.then(thread_marker),
        };
        // A first round proves the ops work here (seccomp filters may allow
        // setup yet fail the ops).
        // SAFETY: no other thread knows `this` yet.
        unsafe { this.wait(&mut Vec::new(), Some(Duration::ZERO)) }
            .map_err(|e| annotate(e, "first io_uring_enter"))?;
        Ok(this)
    }

    pub(crate) fn register(&self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        super::add_or_modify(self.epoll_for(interest), fd, interest, token)
    }

    /// The epoll instance a watch with `interest` lives in (`Read` and
    /// `Both` share `epr`).
    pub(crate) fn epoll_for(&self, interest: Interest) -> RawFd {
        match interest {
            Interest::Read | Interest::Both => self.eps[0].as_raw_fd(),
            Interest::Write => self.eps[1].as_raw_fd(),
        }
    }

    /// `EPOLL_CTL_DEL` of the watch made with `interest`, errors as the
    /// kernel gives them.
    pub(crate) fn delete(&self, fd: RawFd, interest: Interest) -> io::Result<()> {
        syscall!(epoll_ctl(
            self.epoll_for(interest),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut()
        ))
        .map(drop)
    }

    /// Submit what is queued and wait for completions into `out`.
    ///
    /// # Safety
    /// Never called concurrently with itself: the caller is the queue's
    /// one leader (or the only owner of `self`).
    pub(crate) unsafe fn wait(
        &self,
        out: &mut Vec<OsEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        if self.owner.is_some_and(|o| o != thread_marker()) {
            return Err(io::Error::other(
                "a single_thread io_uring queue collects events only on the thread that built it",
            ));
        }
        // SAFETY: exclusive by this function's contract.
        let r = unsafe { &mut *self.reaper.get() };
        super::set_ring_user();
        // Only a wait that may block needs submitters to wake it (a poll
        // pushes what it finds and returns; later ops wait for the next).
        let blocking = timeout != Some(Duration::ZERO);
        if blocking {
            self.in_wait.store(true, Ordering::SeqCst);
        }
        let (pushed, woken) = match self.arm(r) {
            Ok(p) => p,
            Err(e) => {
                if blocking {
                    self.in_wait.store(false, Ordering::Release);
                }
                return Err(e);
            }
        };
        let timeout = if woken { Some(Duration::ZERO) } else { timeout };
        let res = match timeout {
            Some(t) if t.is_zero() => {
                if self.owner.is_some() {
                    // DEFER_TASKRUN: completions are posted only inside
                    // an enter with GETEVENTS; make one when the kernel
                    // says work is pending (or there is something to send).
                    // SAFETY: SQ access is ours (contract).
                    let taskrun = unsafe { self.ring.submission_shared() }.taskrun();
                    if pushed || taskrun {
                        // SAFETY: no argument is passed.
                        unsafe {
                            self.ring.submitter().enter::<libc::sigset_t>(
                                self.sq_len(),
                                0,
                                ENTER_GETEVENTS,
                                None,
                            )
                        }
                        .map(drop)
                    } else {
                        Ok(())
                    }
                } else if pushed {
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
        if blocking {
            self.in_wait.store(false, Ordering::Release);
        }
        let res = match res {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EBUSY)) => Ok(()),
            r => r,
        };
        let reaped = Self::reap(&self.ring, r, out);
        res.and(reaped)
    }

    fn sq_len(&self) -> u32 {
        // SAFETY: only the leader (or an exclusive owner) calls this.
        unsafe { self.ring.submission_shared() }.len() as u32
    }

    /// Queue an `EPOLL_WAIT` per instance and the waker poll where none is
    /// in flight, and the storages' pending ops. Returns whether anything
    /// was pushed, and whether a wake was found while re-arming the waker.
    fn arm(&self, r: &mut Reaper) -> io::Result<(bool, bool)> {
        let mut pushed = false;
        let mut woken = false;
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
                // `shutdown`); the epoll fd outlives the ring's use of it.
                unsafe { self.push(&sqe)? };
                r.inflight[i] = true;
                pushed = true;
            }
        }
        if !r.wake_inflight {
            // (Re-)arming: drain first, or the poll fires at once on an
            // old count. A count found here is a wake that arrived while
            // no poll was armed: report it (the wait must not block).
            let mut count = 0u64;
            // SAFETY: an 8-byte read into a live u64 from our eventfd.
            let n =
                unsafe { libc::read(self.waker.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
            woken = n == 8 && count > 0;
            let sqe = opcode::PollAdd::new(types::Fd(self.waker.as_raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(UD_WAKE);
            // SAFETY: a poll references no user memory.
            unsafe { self.push(&sqe)? };
            r.wake_inflight = true;
            pushed = true;
        }
        if self.has_pending.load(Ordering::SeqCst) {
            let mut pending = self.pending.lock();
            self.has_pending.store(false, Ordering::Relaxed);
            for i in 0..pending.len() {
                // SAFETY: `submit_op`'s contract: the storage keeps the
                // memory the op references valid until its final
                // completion.
                if let Err(e) = unsafe { self.push(&pending[i]) } {
                    // Keep the ops not yet pushed for the next wait.
                    pending.drain(..i);
                    self.has_pending.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                r.ops += 1;
                pushed = true;
            }
            pending.clear();
        }
        Ok((pushed, woken))
    }

    /// Queue a storage's op for the next wait; wake a blocked leader.
    pub(crate) fn submit_op(&self, sqe: squeue::Entry) -> io::Result<()> {
        {
            let mut pending = self.pending.lock();
            pending.push(sqe);
            self.has_pending.store(true, Ordering::SeqCst);
        }
        // Pairs with the leader's SeqCst store of `in_wait` before its
        // load of `has_pending`: one of the two sees the other.
        if self.in_wait.load(Ordering::SeqCst) {
            self.wake()?;
        }
        Ok(())
    }

    /// Push one SQE, flushing the SQ first if it is full.
    ///
    /// # Safety
    /// Memory the SQE references must stay valid until its completion; the
    /// caller is the leader (the only place SQEs are pushed).
    unsafe fn push(&self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: SQ access is the leader's alone (caller's contract).
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: forwarded from the caller.
            if unsafe { sq.push(sqe) }.is_ok() {
                return Ok(());
            }
            drop(sq);
            self.ring.submitter().submit()?;
        }
    }

    /// Move the ring's completions into `out` (the caller is the leader,
    /// `r` its state).
    fn reap(ring: &IoUring, r: &mut Reaper, out: &mut Vec<OsEvent>) -> io::Result<()> {
        let mut err = None;
        // SAFETY: CQ access is the leader's alone (`r` is its state).
        let cq = unsafe { ring.completion_shared() };
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
                        out.reserve(n);
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
                // A wake. The multishot poll posts one per write, readable
                // or not, so the counter is left alone here (draining cost
                // a syscall per wake); a poll that ended (cancelled, an
                // error) is re-armed, after a drain, by the next `arm`.
                UD_WAKE if !cqueue::more(cqe.flags()) => r.wake_inflight = false,
                UD_WAKE => {}
                UD_CANCEL => r.ops = r.ops.saturating_sub(1),
                // A storage's op (the queue's token layout).
                ud if ud >> 56 != 0 => {
                    if !cqueue::more(cqe.flags()) {
                        r.ops = r.ops.saturating_sub(1);
                    }
                    out.push(OsEvent {
                        token: ud,
                        ready: Readiness(COMPLETION | cqe.flags()),
                        res,
                    })
                }
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

    /// Cancel every request in flight and wait (bounded) for their final
    /// completions, handing the storages' to `out`, so that no buffer is
    /// still the kernel's and no completion is left to run later as task
    /// work of some thread (a spurious `EINTR` there). Ops still pending
    /// (never submitted) are dropped. Idempotent.
    pub(crate) fn shutdown(&mut self, out: &mut Vec<OsEvent>) {
        self.pending.get_mut().clear();
        *self.has_pending.get_mut() = false;
        if self.owner.is_some_and(|o| o != thread_marker()) {
            // The kernel refuses another thread's enter: leave it to the
            // ring's teardown (buffers in flight are leaked in `drop`).
            return;
        }
        let busy = |r: &Reaper| r.inflight[0] || r.inflight[1] || r.wake_inflight || r.ops > 0;
        if !busy(self.reaper.get_mut()) {
            return;
        }
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(UD_CANCEL);
        // SAFETY: exclusive access (`&mut self`); a cancel references no
        // user memory.
        if unsafe { self.push(&sqe) }.is_err() {
            return;
        }
        self.reaper.get_mut().ops += 1;
        for _ in 0..100 {
            let ts = types::Timespec::from(Duration::from_millis(10));
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(_) => return,
            }
            let _ = Self::reap(&self.ring, self.reaper.get_mut(), out);
            if !busy(self.reaper.get_mut()) {
                return;
            }
        }
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
        self.shutdown(&mut Vec::new());
        let r = self.reaper.get_mut();
        for i in 0..2 {
            if !r.inflight[i] {
                // SAFETY: no op is in flight on this buffer.
                unsafe { r.bufs[i].free() };
            }
            // Otherwise the kernel may still write into it: leak it.
        }
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
