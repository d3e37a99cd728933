//! How the timer storage wakes the thread waiting in `kevent()` at the
//! earliest exact deadline: the [`Wakeup`] mechanisms and their state.

use std::fmt;
use std::io;

use kevent_core::io_uring::{opcode, types};
use kevent_core::{Backend, Context, Interest};

use crate::sys::Timerfd;

/// How a [`TimerStorage`](super::TimerStorage) wakes the thread waiting in
/// `kevent()` when the earliest timer is due. Every mechanism is armed at
/// the exact earliest deadline (never the wheel's millisecond), absolute
/// where the kernel allows it; see the [module docs](super) for the
/// figures that chose the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Wakeup {
    /// One `CLOCK_MONOTONIC` timerfd armed with `TFD_TIMER_ABSTIME` and
    /// watched by the queue like any fd (the default, on both backends).
    /// timerfd hrtimers ignore timer slack; a change from another thread
    /// re-arms it under a thread already blocked in the backend.
    #[default]
    Timerfd,
    /// The storage reports its earliest deadline to the queue
    /// ([`Storage::deadline`](kevent_core::Storage::deadline)), which
    /// bounds its wait by it: `epoll_pwait2` with a ns timeout on epoll,
    /// `io_uring_enter` with an `EXT_ARG` timeout on io_uring. Both are
    /// relative, computed just before the wait; `epoll_pwait2` is subject
    /// to timer slack (set to 1 ns for the waiting thread). No fd and no
    /// re-arm syscall, but a timer added from another thread cannot
    /// shorten a wait already in progress: use it where one thread both
    /// changes and waits.
    QueueTimeout,
    /// An io_uring `IORING_OP_TIMEOUT` with `IORING_TIMEOUT_ABS` on
    /// `CLOCK_MONOTONIC`, submitted with the leader's next wait (a change
    /// from another thread wakes a blocked leader to submit it); a re-arm
    /// cancels the previous one. On the epoll backend this is
    /// [`Wakeup::Timerfd`], and a kernel that refuses the op (any result
    /// but `-ETIME`) turns it into one, logged. A queue dropped with the
    /// op in flight leaves its 16-byte timespec allocated (the ring is
    /// torn down after its storages and may still read it).
    UringTimeout,
}

/// The armed state of the storage's wake-up mechanism.
pub(super) struct Waker {
    /// The mechanism asked for.
    pub(super) asked: Wakeup,
    /// The mechanism in use, once the first timer told the backend.
    pub(super) mode: Option<Wakeup>,
    timerfd: Option<Timerfd>,
    /// The deadline the mechanism is armed at (never after the earliest
    /// exact deadline), if any.
    pub(super) armed: Option<u64>,
    uring: UringTimer,
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waker")
            .field("asked", &self.asked)
            .field("mode", &self.mode)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Waker {
    pub(super) fn new(asked: Wakeup) -> Self {
        Waker {
            asked,
            mode: None,
            timerfd: None,
            armed: None,
            uring: UringTimer::default(),
        }
    }

    /// Sets the mechanism up on the first timer (it needs the backend).
    pub(super) fn ensure(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.mode.is_some() {
            return Ok(());
        }
        let mode = match self.asked {
            Wakeup::UringTimeout if cx.backend() != Backend::IoUring => Wakeup::Timerfd,
            m => m,
        };
        if mode == Wakeup::Timerfd {
            let tfd = Timerfd::new_nonblocking()?;
            cx.watch_fd(tfd.raw(), Interest::Read, 0)?;
            self.timerfd = Some(tfd);
        }
        self.mode = Some(mode);
        Ok(())
    }

    /// Arms the mechanism at `next` (or disarms it), unless it already is.
    pub(super) fn program(&mut self, cx: &mut Context<'_>, next: Option<u64>) {
        if next == self.armed {
            return;
        }
        let r = match self.mode {
            Some(Wakeup::Timerfd) => match (&self.timerfd, next) {
                (Some(tfd), Some(ns)) => tfd.set_abs(ns, 0),
                (Some(tfd), None) => tfd.disarm(),
                (None, _) => Ok(()),
            },
            Some(Wakeup::UringTimeout) => self.uring.program(cx, next),
            // QueueTimeout: the queue reads `armed` through `deadline()`.
            _ => Ok(()),
        };
        match r {
            Ok(()) => self.armed = next,
            // Left unarmed: the next change or wake retries.
            Err(e) => log::error!("EVFILT_TIMER: cannot arm the wake-up at {next:?}: {e}"),
        }
    }

    /// The timerfd reported readiness: it is disarmed now (one-shot). Its
    /// expiration count is not read: the queue watches it edge-triggered
    /// (every expiry wakes it again, read or not) and the next
    /// `timerfd_settime` resets the count, so a `read` per tick would be
    /// a syscall for nothing.
    pub(super) fn on_timerfd(&mut self) {
        self.armed = None;
    }

    /// A ring op of ours completed with `result`: whether it was the live
    /// timeout (the armed deadline has come, or the op failed; either way
    /// the caller runs the due timers and re-arms). A timeout op the kernel
    /// refuses (anything but `-ETIME` for the live one) would fail again on
    /// every re-arm, so the storage falls back to a timerfd for good.
    pub(super) fn on_completion(
        &mut self,
        cx: &mut Context<'_>,
        payload: u64,
        result: i32,
    ) -> bool {
        if !self.uring.complete(payload) {
            return false;
        }
        self.armed = None;
        if result != -libc::ETIME && self.mode == Some(Wakeup::UringTimeout) {
            log::error!(
                "EVFILT_TIMER: io_uring timeout failed ({}); using a timerfd",
                io::Error::from_raw_os_error(-result)
            );
            self.asked = Wakeup::Timerfd;
            self.mode = None;
            if let Err(e) = self.ensure(cx) {
                log::error!("EVFILT_TIMER: no timerfd either: {e}");
            }
        }
        true
    }
}

/// `IORING_OP_TIMEOUT` ops with `IORING_TIMEOUT_ABS`: one live, older ones
/// cancelled and waiting for their final completion.
///
/// An op's timespec lives in a boxed slot until that completion, so its
/// address stays valid for the kernel however late the leader submits it
/// (the kernel copies it when it prepares the SQE); slots are reused, so
/// re-arming allocates nothing after warm-up. Every slot is either free
/// or held by an op in flight.
#[derive(Default)]
struct UringTimer {
    // Boxed on purpose: the kernel holds each slot's address while the
    // Vec may grow and move its elements.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<types::Timespec>>,
    free: Vec<u32>,
    /// Payload of the live timeout.
    live: Option<u64>,
    generation: u32,
}

const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

impl UringTimer {
    fn program(&mut self, cx: &mut Context<'_>, next: Option<u64>) -> io::Result<()> {
        if let Some(p) = self.live.take() {
            // Its completion (-ECANCELED, or -ETIME if it raced) frees the
            // slot; `complete` ignores it as no longer live, so an old op
            // left running (the cancel not queued) only costs a wake-up.
            if let Err(e) = cx.cancel_op(p) {
                log::warn!("EVFILT_TIMER: cannot cancel the old io_uring timeout: {e}");
            }
        }
        let Some(ns) = next else { return Ok(()) };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                if self.slots.len() as u64 > SLOT_MASK {
                    return Err(io::Error::from_raw_os_error(libc::ENOMEM));
                }
                self.slots.push(Box::new(types::Timespec::new()));
                (self.slots.len() - 1) as u32
            }
        };
        let ts = &mut self.slots[slot as usize];
        **ts = types::Timespec::new()
            .sec(ns / 1_000_000_000)
            .nsec((ns % 1_000_000_000) as u32);
        let sqe = opcode::Timeout::new(&**ts as *const types::Timespec)
            .flags(types::TimeoutFlags::ABS)
            .build();
        self.generation = self.generation.wrapping_add(1);
        let payload = u64::from(self.generation) << SLOT_BITS | u64::from(slot);
        if let Err(e) = cx.submit_op(sqe, payload) {
            self.free.push(slot);
            return Err(e);
        }
        self.live = Some(payload);
        Ok(())
    }

    /// Ops submitted and not yet completed: the slots not free.
    fn inflight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Frees the op's slot; whether it was the live one.
    fn complete(&mut self, payload: u64) -> bool {
        let slot = (payload & SLOT_MASK) as u32;
        if (slot as usize) < self.slots.len() && self.inflight() > 0 {
            self.free.push(slot);
        }
        if self.live == Some(payload) {
            self.live = None;
            return true;
        }
        false
    }
}

impl Drop for UringTimer {
    fn drop(&mut self) {
        if self.inflight() > 0 {
            // An op may still sit unsubmitted in the ring, which the queue
            // tears down after its storages: leave its timespec valid (16
            // bytes a slot, usually one or two per queue) rather than free
            // it under the kernel.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}
