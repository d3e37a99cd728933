//! Storages: the event sources behind the filters.
//!
//! A [`Storage`] owns the knotes of one or more filters in one queue. It
//! keeps its own interest list (which knotes watch what), and when it sees
//! activity it activates knotes through [`Context::activate`], which puts
//! them on the queue's ready list once, however often they are activated
//! while they wait there. At collection time the queue asks the storage to
//! [`Storage::event`] each queued knote: the storage re-checks the
//! condition (the requeue problem) and fills the event's `data`/`fflags`.
//!
//! # Ground rules
//!
//! - Every method runs with the queue's lock held (`&mut Context` is the
//!   proof); a storage never blocks.
//! - A storage never panics on user input: it returns an errno, which the
//!   queue reports as an `EV_ERROR` entry or as the call's error.
//! - OS fds a storage watches are registered through
//!   [`Context::watch_fd`]; their events come back to
//!   [`Storage::os_event`] with the payload given.

pub(crate) mod fd;
pub(crate) mod proc_;
pub mod signal;
mod unix_diag;
pub(crate) mod user;
pub(crate) mod vnode;

use crate::event::{Filter, Kevent};
use crate::knote::{Knote, KnoteId, ReadyList, ACTIVE, DISABLED, QUEUED};
use crate::queue::Index;
use crate::sys::{Interest, Readiness, Sys};
use slab::Slab;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// An errno, as reported in an `EV_ERROR` entry's `data`.
pub type Errno = i32;

/// An event source serving one or more filters (see the module docs).
pub trait Storage: Send + fmt::Debug + 'static {
    /// The filters this storage serves.
    fn filters(&self) -> &'static [Filter];

    /// A new knote was added (`EV_ADD` of an unknown `(ident, filter)`).
    /// The knote's `sfflags`, `sdata`, `udata` and mode flags are set.
    /// Validate, set up watching, and optionally activate it at once.
    /// On error the knote is dropped and the errno reported.
    fn attach(&mut self, cx: &mut Context<'_>, kn: KnoteId) -> Result<(), Errno>;

    /// A change for an existing knote (any change without `EV_DELETE`):
    /// `change` is the raw change; the knote's `udata` is already the
    /// change's. The default stores `fflags` and `data` as the new
    /// subscription, as FreeBSD does for filters without `f_touch`. On
    /// error the knote must be left as it was (validate before changing
    /// anything); the queue restores `udata` and reports the errno.
    fn modify(&mut self, cx: &mut Context<'_>, kn: KnoteId, change: &Kevent) -> Result<(), Errno> {
        let k = cx.knote_mut(kn);
        k.sfflags = change.fflags;
        k.sdata = change.data;
        Ok(())
    }

    /// The knote is being deleted (`EV_DELETE`, `ONESHOT` delivery, queue
    /// drop). Stop watching for it.
    fn detach(&mut self, cx: &mut Context<'_>, kn: KnoteId);

    /// Re-check a queued knote at collection time: fill `out` (`data`,
    /// `fflags`, `flags` such as `EOF`) and return whether the condition
    /// holds. Returning `false` takes the knote off the ready list
    /// undelivered; a storage that finds the knote stale (its fd closed)
    /// may detach and [`Context::drop_knote`] it before returning `false`.
    /// The default reports the pending state as it is.
    fn event(&mut self, cx: &mut Context<'_>, kn: KnoteId, out: &mut Kevent) -> bool {
        *out = cx.knote(kn).to_event();
        true
    }

    /// Called after an `EV_CLEAR` knote was delivered (its pending `data`
    /// and `fflags` are already zeroed) to reset storage state.
    fn clear(&mut self, _cx: &mut Context<'_>, _kn: KnoteId) {}

    /// An fd watched with [`Context::watch_fd`] reported readiness.
    fn os_event(&mut self, _cx: &mut Context<'_>, _payload: u64, _ready: Readiness) {}

    /// A ring op submitted with [`Context::submit_op`] completed: `result`
    /// is the CQE's result, `flags` its flags (`IORING_CQE_F_MORE` while a
    /// multishot op goes on). io_uring only.
    fn completion(&mut self, _cx: &mut Context<'_>, _payload: u64, _result: i32, _flags: u32) {}

    /// The earliest instant at which [`Storage::expire`] must run, if any.
    /// The queue bounds its wait by it.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Time has reached a deadline this storage reported.
    fn expire(&mut self, _cx: &mut Context<'_>, _now: Instant) {}

    /// Whether this storage may ever report a [`Storage::deadline`]; the
    /// queue only asks those that say so.
    fn timed(&self) -> bool {
        false
    }

    /// Called for every change naming one of this storage's filters, before
    /// the knote is looked up: validate the ident (e.g. `EBADF` for a
    /// closed fd) and drop knotes that went stale (an fd closed and its
    /// number reused) with [`Context::drop_knote`], so the change sees a
    /// clean slate.
    fn resolve(&mut self, _cx: &mut Context<'_>, _change: &Kevent) -> Result<(), Errno> {
        Ok(())
    }
}

/// The queue state a storage may touch, lent for one call.
pub struct Context<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) sys: &'a Sys,
    pub(crate) storage: u8,
    pub(crate) index: &'a mut Index,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// Token layout: top byte = storage index + 1 (0 is reserved), low 56 bits
/// = the storage's payload.
pub(crate) const PAYLOAD_BITS: u32 = 56;
pub(crate) const PAYLOAD_MASK: u64 = (1 << PAYLOAD_BITS) - 1;

impl Context<'_> {
    /// The knote behind `id`.
    ///
    /// # Panics
    /// If `id` is not a live knote of this storage: ids handed to a storage
    /// stay valid until its `detach` returns, so this is a storage bug.
    #[inline]
    pub fn knote(&self, id: KnoteId) -> &Knote {
        let k = &self.core.knotes[id.key as usize];
        debug_assert_eq!(k.gen, id.gen, "stale knote id");
        k
    }

    /// The knote behind `id`, mutably. Panics as [`Context::knote`].
    #[inline]
    pub fn knote_mut(&mut self, id: KnoteId) -> &mut Knote {
        let k = &mut self.core.knotes[id.key as usize];
        debug_assert_eq!(k.gen, id.gen, "stale knote id");
        k
    }

    /// The knote behind `id` if it is still live.
    #[inline]
    pub fn try_knote_mut(&mut self, id: KnoteId) -> Option<&mut Knote> {
        self.core
            .knotes
            .get_mut(id.key as usize)
            .filter(|k| k.gen == id.gen)
    }

    /// Mark the knote active and put it on the ready list unless it is
    /// already there or disabled. Merge activity into `data`/`fflags`
    /// before or after; the knote is reported once.
    #[inline]
    pub fn activate(&mut self, id: KnoteId) {
        self.core.activate(id, None);
    }

    /// As [`Context::activate`], recording the OS readiness that caused it.
    #[inline(always)]
    pub fn activate_with(&mut self, id: KnoteId, ready: Readiness) {
        self.core.activate(id, Some(ready));
    }

    /// Whether the knote was activated by an OS event during the current
    /// `kevent()` call (its `hint` is fresh; no re-check syscall needed).
    #[inline]
    pub fn is_fresh(&self, id: KnoteId) -> bool {
        self.knote(id).fresh_round > self.core.call_round
    }

    /// Remove a knote from the queue entirely (slab, index, ready list)
    /// without calling back into the storage: for a storage dropping a
    /// knote it has already forgotten (a stale fd, an exited process).
    pub fn drop_knote(&mut self, id: KnoteId) {
        let core = &mut *self.core;
        let Some(k) = core.knotes.get_mut(id.key as usize) else {
            return;
        };
        if k.gen != id.gen {
            return;
        }
        core.ready.remove(k);
        self.index.remove(&(k.ident, k.filter.raw()));
        core.knotes.remove(id.key as usize);
    }

    /// The live knote registered for `(ident, filter)`, if any.
    pub fn lookup(&self, ident: u64, filter: Filter) -> Option<KnoteId> {
        let key = *self.index.get(&(ident, filter.raw()))?;
        Some(KnoteId {
            key,
            gen: self.core.knotes[key as usize].gen,
        })
    }

    /// Take the knote off the ready list and mark it inactive.
    #[inline]
    pub fn deactivate(&mut self, id: KnoteId) {
        let core = &mut *self.core;
        let k = &mut core.knotes[id.key as usize];
        core.ready.remove(k);
        k.status &= !ACTIVE;
    }

    /// The backend token of this storage's `payload`: the storage's index
    /// + 1 in the top byte (0 is the backends' own), the payload below.
    #[inline]
    fn token(&self, payload: u64) -> u64 {
        debug_assert!(payload <= PAYLOAD_MASK);
        ((self.storage as u64 + 1) << PAYLOAD_BITS) | (payload & PAYLOAD_MASK)
    }

    /// Watch `fd` (edge-triggered); its events come back to
    /// [`Storage::os_event`] with `payload` (at most 56 bits).
    pub fn watch_fd(&mut self, fd: RawFd, interest: Interest, payload: u64) -> io::Result<()> {
        let token = self.token(payload);
        self.sys.register(fd, token, interest)
    }

    /// As [`Context::watch_fd`], for an fd this storage most likely
    /// watches already (re-arming after `EAGAIN`): on epoll one
    /// `EPOLL_CTL_MOD` instead of `ADD`, `EEXIST`, `MOD`; an fd closed
    /// since (its registration gone) is added again.
    pub fn rewatch_fd(&mut self, fd: RawFd, interest: Interest, payload: u64) -> io::Result<()> {
        let token = self.token(payload);
        self.sys.reregister(fd, token, interest)
    }

    /// Submit a ring op (io_uring backend): it goes to the kernel with the
    /// leader's next wait (one `io_uring_enter`), and each of its
    /// completions comes back to [`Storage::completion`] with `payload` (at
    /// most 56 bits; the SQE's `user_data` is overwritten). Memory the op
    /// references must stay valid until its final completion, cancelled or
    /// not. `Unsupported` on epoll.
    pub fn submit_op(&mut self, sqe: io_uring::squeue::Entry, payload: u64) -> io::Result<()> {
        let token = self.token(payload);
        self.sys.submit_op(sqe.user_data(token))
    }

    /// Ask the kernel to cancel the op submitted with `payload`; its final
    /// completion (usually `-ECANCELED`) still comes to
    /// [`Storage::completion`]. `Unsupported` on epoll.
    pub fn cancel_op(&mut self, payload: u64) -> io::Result<()> {
        let token = self.token(payload);
        let sqe = io_uring::opcode::AsyncCancel::new(token)
            .build()
            .user_data(crate::sys::uring::UD_CANCEL);
        self.sys.submit_op(sqe)
    }

    /// Register a provided-buffer ring with the queue's io_uring, for ops
    /// that select buffers (`BUFFER_SELECT`, multishot receives). Returns
    /// the buffer group id to put in those ops: this storage's own (one
    /// group per storage). `Unsupported` on epoll.
    ///
    /// # Safety
    /// `addr` is a page-aligned mapping of `entries` (a power of two)
    /// `io_uring_buf` slots. It, and every buffer published in it, must
    /// stay valid until [`Context::unregister_buf_ring`], or, if ops that
    /// select from it are in flight, until their final completions — or
    /// for the life of the queue.
    pub unsafe fn register_buf_ring(&mut self, addr: u64, entries: u16) -> io::Result<u16> {
        let bgid = u16::from(self.storage);
        // SAFETY: forwarded from the caller.
        unsafe { self.sys.register_buf_ring(addr, entries, bgid) }?;
        Ok(bgid)
    }

    /// Unregister this storage's buffer ring (see
    /// [`Context::register_buf_ring`]). `Unsupported` on epoll.
    pub fn unregister_buf_ring(&mut self) -> io::Result<()> {
        self.sys.unregister_buf_ring(u16::from(self.storage))
    }

    /// Narrow or remove this storage's watch of `fd` and report whether
    /// `fd` still named the registered file: `drop` is the direction that
    /// goes, `keep` what stays registered on a per-fd backend (`None`:
    /// nothing; ignored with [`Context::per_knote_watches`], where only
    /// `drop`'s watch goes). Fails with `ENOENT` if the file was closed
    /// (its number free or reused: epoll forgot the registration), `EBADF`
    /// if the number is closed. Costs the one `epoll_ctl` the change makes
    /// anyway, so it doubles as an identity check without `fstat`.
    pub(crate) fn unwatch_checked(
        &mut self,
        fd: RawFd,
        drop: Interest,
        keep: Option<Interest>,
        payload: u64,
    ) -> io::Result<()> {
        let token = self.token(payload);
        self.sys.unwatch_checked(fd, token, drop, keep)
    }

    /// Whether this storage's watch of `fd` made with `interest` is still
    /// registered for the file `fd` names now: `Ok(true)` if so (nothing
    /// changes), `Ok(false)` if not (the file was closed and the number
    /// is free or reused; the probe's registration, with `payload`, is
    /// kept if `keep` — a watch of the file the number names now — and
    /// undone otherwise), or the kernel's error (`EBADF` for a closed
    /// number).
    pub(crate) fn probe_watch(
        &mut self,
        fd: RawFd,
        interest: Interest,
        payload: u64,
        keep: bool,
    ) -> io::Result<bool> {
        // A probe registration that is undone still reports the readiness
        // of the file it named to a wait in flight (io_uring's
        // `EPOLL_WAIT`, another thread's `epoll_wait`) before the undo:
        // under the entry's own payload that stale event would pass for
        // the entry's. Token 0 names no storage, so the queue drops it.
        let token = if keep { self.token(payload) } else { 0 };
        self.sys.probe(fd, token, interest, keep)
    }

    /// Stop watching `fd` (a watch made with `Interest::Read` or `Both`).
    /// An fd already closed is not an error.
    pub fn unwatch_fd(&mut self, fd: RawFd) -> io::Result<()> {
        self.sys.deregister(fd, Interest::Both)
    }

    /// Stop the watch of `fd` made with `interest`: with
    /// [`Context::per_knote_watches`], `Read` and `Write` watches are
    /// separate; otherwise the fd's one registration goes.
    pub fn unwatch_fd_dir(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        self.sys.deregister(fd, interest)
    }

    /// Whether [`Context::watch_fd`] keeps an independent watch per
    /// direction (io_uring: a `Read` and a `Write` watch on one fd coexist
    /// and each reports only its own direction) rather than one per fd
    /// (epoll: a second watch replaces the first).
    #[inline]
    pub fn per_knote_watches(&self) -> bool {
        self.sys.per_knote()
    }

    /// The backend in use.
    #[inline]
    pub fn backend(&self) -> crate::Backend {
        match self.sys {
            Sys::Epoll(_) => crate::Backend::Epoll,
            Sys::IoUring(_) => crate::Backend::IoUring,
        }
    }
}

/// The queue's core state (knotes, index, ready list), separate from the
/// storages so both can be borrowed at once.
#[derive(Debug, Default)]
pub(crate) struct Core {
    pub(crate) knotes: Slab<Knote>,
    pub(crate) ready: ReadyList,
    pub(crate) next_gen: u32,
    /// Harvest rounds so far; a knote is fresh if activated in a round after
    /// `call_round`.
    pub(crate) round: u64,
    pub(crate) call_round: u64,
}

impl Core {
    #[inline(always)]
    pub(crate) fn activate(&mut self, id: KnoteId, ready: Option<Readiness>) {
        let Some(k) = self.knotes.get_mut(id.key as usize) else {
            return;
        };
        if k.gen != id.gen {
            return;
        }
        k.status |= ACTIVE;
        if let Some(r) = ready {
            k.hint = r.0;
            k.fresh_round = self.round;
        }
        if k.status & (QUEUED | DISABLED) == 0 {
            self.ready.push(k, id.key);
            self.compact_ready();
        }
    }

    /// Drop the ready list's stale entries once they dominate (see
    /// [`crate::knote::ReadyList::needs_compact`]). Only outside a scan.
    #[inline]
    pub(crate) fn compact_ready(&mut self) {
        if self.ready.needs_compact() {
            let knotes = &self.knotes;
            self.ready.compact(|key, seq| {
                knotes
                    .get(key as usize)
                    .is_some_and(|k| k.status & QUEUED != 0 && k.seq == seq)
            });
        }
    }
}
