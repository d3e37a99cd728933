//! The io_uring receive path: one multishot `IORING_OP_RECVMSG` on the
//! source's own ring, reading into a provided-buffer ring filled from the
//! pool.
//!
//! # Buffer ring
//!
//! `entries` slots of `io_uring_buf { addr: u64, len: u32, bid: u16,
//! resv: u16 }` in one anonymous mapping; the tail is the `resv` field of
//! slot 0 (`io_uring_buf_ring`), written only by us with Release. The
//! kernel takes buffers in ring order and names each in a completion
//! (`IORING_CQE_F_BUFFER`), so the slots `[consumed, tail)` are exactly the
//! buffers the kernel holds. `bid` is the pool id (pools of at most 65536
//! buffers).
//!
//! # Ownership
//!
//! A buffer is the kernel's from the moment its slot is published until a
//! completion names it. On drop the request is cancelled and the ring
//! drained until the request's final completion (no `F_MORE`); only then
//! are the slots `[consumed, tail)` read back and their buffers returned
//! to the pool. If that wait fails the buffers are leaked, never reused:
//! the buffer ring's mapping stays mapped and `PacketSource` keeps the
//! whole pool alive (`Arc` forgotten), since the kernel may still write
//! into any buffer it was given.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use io_uring::{cqueue, opcode, types, IoUring};

use super::{Sink, NAME_LEN};
use crate::bufring::BufRing;
use crate::source::mmsg::count_error;
use crate::Notifier;

const UD_RECV: u64 = 1;
const UD_CANCEL: u64 = 2;
const BGID: u16 = 0;
/// Enters per poll at most. The kernel runs a multishot receive for a
/// bounded number of datagrams per task-work pass (then requeues it), so
/// one enter may post only part of a backlog: keep entering while it
/// yields completions, up to this many times.
const MAX_ROUNDS: usize = 64;
/// `IORING_ENTER_GETEVENTS`.
const ENTER_GETEVENTS: u32 = 1;

/// `struct io_uring_recvmsg_out`: what the kernel writes at the start of
/// each buffer of a multishot `recvmsg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RecvMsgOut {
    namelen: u32,
    controllen: u32,
    payloadlen: u32,
    flags: u32,
}

const _: () = assert!(std::mem::size_of::<RecvMsgOut>() == super::NAME_OFFSET);

pub(crate) struct UringRx {
    ring: IoUring,
    /// Unmapped after `ring` is dropped (field order), which takes the
    /// registration with it, unless `shutdown` leaked it.
    br: BufRing,
    /// Next slot we publish.
    tail: u16,
    /// Slots the kernel has consumed (completions with a buffer).
    consumed: u16,
    sock: RawFd,
    /// The msghdr template of the request (name and control lengths).
    msg: Box<libc::msghdr>,
    armed: bool,
    /// Ids taken from the pool for the next refill.
    refill: Vec<u32>,
    registered: bool,
    /// Signalled by the kernel when task work (completions) is pending.
    evfd: Notifier,
    /// A queue watches `evfd`: drain it on every poll.
    watched: bool,
}

// SAFETY: the raw pointers (buffer ring mapping, msghdr) are owned by this
// value; the ring is used from one thread at a time through `&mut self`.
unsafe impl Send for UringRx {}

impl UringRx {
    pub(crate) fn new(sock: RawFd, sink: &mut Sink, entries: u16) -> io::Result<Self> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring_entries must be a power of two <= 32768",
            ));
        }
        if sink.pool.count() > 65536 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a multishot source needs a pool of at most 65536 buffers",
            ));
        }
        // DEFER_TASKRUN: completions are posted only when this thread
        // enters the ring (in `poll`), never by interrupting it; the
        // registered eventfd tells a waiting queue that work is pending.
        let ring = IoUring::builder()
            .setup_cqsize(u32::from(entries) * 4)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(8)
            .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        let evfd = Notifier::new()?;
        ring.submitter()
            .register_eventfd(evfd.as_fd().as_raw_fd())
            .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        let br = BufRing::new(entries)?;
        // SAFETY: the mapping is valid for `entries` slots and outlives the
        // registration (unregistered in `shutdown`; or the ring, dropped
        // before `br`, takes the registration with it).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(br.as_addr(), entries, BGID, 0)
        }
        .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        // SAFETY: all-zero msghdr is valid; only the lengths matter.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = NAME_LEN as libc::socklen_t;
        let mut rx = Self {
            ring,
            br,
            tail: 0,
            consumed: 0,
            sock,
            msg,
            armed: false,
            refill: Vec::with_capacity(usize::from(entries)),
            registered: true,
            evfd,
            watched: false,
        };
        rx.fill(sink);
        // Armed from the start, so a queue watching the eventfd hears of
        // the first datagram without a poll first.
        rx.arm(sink);
        rx.enter(sink)?;
        Ok(rx)
    }

    pub(crate) fn entries(&self) -> u16 {
        self.br.entries()
    }

    /// The eventfd a queue watches: readable when completions wait to be
    /// posted (the ring fd itself is not woken for deferred task work).
    pub(crate) fn ring_fd(&self) -> RawFd {
        self.evfd.as_fd().as_raw_fd()
    }

    /// A queue watches [`ring_fd`](Self::ring_fd): drain it on each poll.
    pub(crate) fn set_watched(&mut self) {
        self.watched = true;
    }

    pub(crate) fn in_ring(&self) -> usize {
        usize::from(self.tail.wrapping_sub(self.consumed))
    }

    /// Tops the buffer ring up from the pool and publishes the new tail.
    fn fill(&mut self, sink: &mut Sink) {
        let want = usize::from(self.br.entries()) - self.in_ring();
        if want == 0 {
            return;
        }
        self.refill.clear();
        if sink.pool.alloc_raw_batch(want, &mut self.refill) < want {
            sink.stats.pool_empty += 1;
        }
        if self.refill.is_empty() {
            return;
        }
        let size = sink.pool.buf_size() as u32;
        for k in 0..self.refill.len() {
            let id = self.refill[k];
            let addr = sink.buf_addr(id) as u64;
            self.br.write(self.tail, addr, size, id as u16);
            self.tail = self.tail.wrapping_add(1);
        }
        // Release: the slot writes are visible before the kernel sees the
        // tail (liburing's io_uring_buf_ring_advance).
        self.br.publish(self.tail);
        self.refill.clear();
    }

    fn arm(&mut self, sink: &mut Sink) -> bool {
        let e = opcode::RecvMsgMulti::new(types::Fd(self.sock), &*self.msg, BGID)
            .build()
            .user_data(UD_RECV);
        // SAFETY: the msghdr is boxed and lives as long as `self`; the
        // buffers come from the registered buffer ring.
        if unsafe { self.ring.submission().push(&e) }.is_err() {
            return false;
        }
        self.armed = true;
        sink.stats.arms += 1;
        true
    }

    /// Handles every completion in the CQ; returns how many.
    fn reap(&mut self, sink: &mut Sink) -> usize {
        let mut n = 0;
        let size = sink.pool.buf_size();
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            n += 1;
            let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            if ud != UD_RECV {
                continue;
            }
            if !cqueue::more(flags) {
                self.armed = false;
            }
            if let Some(bid) = cqueue::buffer_select(flags) {
                // The kernel takes provided buffers in ring order: this
                // completion consumed slot `consumed`.
                let pos = self.consumed;
                debug_assert_eq!(self.br.bid(pos), bid, "buffer ring out of order");
                self.consumed = self.consumed.wrapping_add(1);
                let id = u32::from(bid);
                if res < 0 {
                    sink.drops.push(id);
                    continue;
                }
                let base = sink.buf_addr(id);
                // SAFETY: the completion hands buffer `id` back to us; the
                // kernel wrote the header at its start (16 bytes < size).
                let out = unsafe { base.cast::<RecvMsgOut>().read_unaligned() };
                let truncated = out.flags & (libc::MSG_TRUNC as u32) != 0
                    || out.payloadlen as usize > size - super::HEADROOM;
                // Where the kernel put the payload: the ring entry's
                // address, past the header, the name room and the control
                // room of the request's msghdr (liburing's
                // `io_uring_recvmsg_payload`).
                let kaddr = self.br.addr(pos) as usize
                    + std::mem::size_of::<RecvMsgOut>()
                    + self.msg.msg_namelen as usize
                    + self.msg.msg_controllen;
                sink.deliver(
                    id,
                    out.payloadlen as usize,
                    out.namelen as usize,
                    truncated,
                    std::ptr::without_provenance(kaddr),
                );
            } else if res == -libc::ENOBUFS {
                sink.stats.enobufs += 1;
            } else if res < 0 {
                count_error(sink, &io::Error::from_raw_os_error(-res));
            }
        }
        n
    }

    /// `io_uring_enter(to_submit, 0, GETEVENTS)`: submits what is queued
    /// and runs the deferred task work, which posts the completions of
    /// datagrams the kernel has received meanwhile.
    fn enter(&mut self, sink: &mut Sink) -> io::Result<()> {
        let to_submit = self.ring.submission().len() as u32;
        sink.stats.syscalls += 1;
        // SAFETY: no argument pointer; the queued SQEs point only at the
        // boxed msghdr, alive as long as `self`.
        let r = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(to_submit, 0, ENTER_GETEVENTS, None)
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn poll(&mut self, sink: &mut Sink) -> io::Result<()> {
        let mut reaped = self.reap(sink);
        let mut rounds = 0;
        loop {
            rounds += 1;
            // Buffers the pool has again go back to the kernel before the
            // request is re-armed.
            self.fill(sink);
            if !self.armed && self.in_ring() > 0 {
                self.arm(sink);
            }
            let sq = self.ring.submission();
            let (pending_sqe, taskrun) = (!sq.is_empty(), sq.taskrun());
            drop(sq);
            if reaped == 0 || pending_sqe || taskrun {
                self.enter(sink)?;
                reaped = self.reap(sink);
                if rounds < MAX_ROUNDS && (reaped > 0 || !self.armed) {
                    continue;
                }
            }
            if !self.watched || rounds >= MAX_ROUNDS {
                break;
            }
            // Posting completions signalled the eventfd too: clear it now,
            // after the last enter, so the queue does not report them
            // again. Work queued before this read but not run yet shows in
            // the TASKRUN flag (go round again); work queued after it
            // signals the eventfd anew: no wake-up is lost.
            sink.stats.syscalls += 1;
            let _ = self.evfd.drain();
            if !self.ring.submission().taskrun() {
                break;
            }
            reaped = 0;
        }
        self.fill(sink);
        if self.in_ring() == 0 {
            sink.outcome.starved = true;
        }
        Ok(())
    }

    /// Cancels the request, waits for its final completion, then returns
    /// the buffers left in the buffer ring to the pool. Returns `false` if
    /// the final completion never came: the kernel may then still write
    /// into the ring's buffers, so the caller must keep the pool's memory
    /// alive (the buffer ring's mapping is leaked here for the same reason).
    #[must_use]
    pub(crate) fn shutdown(&mut self, sink: &mut Sink) -> bool {
        let mut tries = 0;
        while self.armed && tries < 1000 {
            tries += 1;
            let c = opcode::AsyncCancel::new(UD_RECV)
                .build()
                .user_data(UD_CANCEL);
            // SAFETY: a cancel carries no pointers.
            let _ = unsafe { self.ring.submission().push(&c) };
            let _ = self.ring.submit_and_wait(1);
            self.reap(sink);
        }
        if self.armed {
            // The kernel may still own every buffer in the ring: leak them,
            // and the ring's mapping with them.
            self.br.leak();
            return false;
        }
        if self.registered && self.ring.submitter().unregister_buf_ring(BGID).is_ok() {
            self.registered = false;
            let mut pos = self.consumed;
            while pos != self.tail {
                sink.drops.push(u32::from(self.br.bid(pos)));
                pos = pos.wrapping_add(1);
            }
            self.consumed = self.tail;
        }
        true
    }
}
