//! Knotes (one registration each) and the ready list.

use crate::event::{Filter, Flags, Kevent};
use std::collections::VecDeque;

/// Identifies one knote in one queue: a slab key plus a generation, so an
/// id kept past the knote's deletion never names its successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KnoteId {
    pub(crate) key: u32,
    pub(crate) gen: u32,
}

impl KnoteId {
    /// Pack into a `u64` (for tokens and `user_data`).
    #[inline]
    pub const fn to_u64(self) -> u64 {
        (self.gen as u64) << 32 | self.key as u64
    }

    /// Unpack from [`KnoteId::to_u64`].
    #[inline]
    pub const fn from_u64(v: u64) -> KnoteId {
        KnoteId {
            key: v as u32,
            gen: (v >> 32) as u32,
        }
    }
}

pub(crate) const QUEUED: u8 = 1;
pub(crate) const ACTIVE: u8 = 2;
pub(crate) const DISABLED: u8 = 4;

/// One registration: `(ident, filter)` in one queue.
///
/// Storages see knotes through [`crate::Context`]; the fields that carry a
/// pending event (`data`, `fflags`) are theirs to merge activity into.
#[derive(Debug)]
pub struct Knote {
    pub(crate) ident: u64,
    pub(crate) filter: Filter,
    pub(crate) flags: Flags,
    pub(crate) sfflags: u32,
    pub(crate) sdata: i64,
    pub(crate) udata: u64,
    pub(crate) fflags: u32,
    pub(crate) data: i64,
    pub(crate) status: u8,
    pub(crate) storage: u8,
    pub(crate) gen: u32,
    pub(crate) seq: u64,
    /// Harvest round in which an OS event last activated this knote.
    pub(crate) fresh_round: u64,
    pub(crate) hint: u32,
    /// The `kevent()` call that last reported this knote.
    pub(crate) delivered_in: u64,
    /// Storage-private words.
    pub hook: u64,
    /// Storage-private words.
    pub hook2: u64,
}

impl Knote {
    /// The identifier (fd, signal, pid, timer id, ...).
    #[inline]
    pub fn ident(&self) -> u64 {
        self.ident
    }
    /// The filter.
    #[inline]
    pub fn filter(&self) -> Filter {
        self.filter
    }
    /// The knote's mode flags (`ONESHOT`, `CLEAR`, `DISPATCH`, ... and `EOF`
    /// once a storage set it).
    #[inline]
    pub fn flags(&self) -> Flags {
        self.flags
    }
    /// Set or clear mode/status flags (e.g. a storage adding an implicit
    /// `CLEAR` at attach, or `EOF`).
    #[inline]
    pub fn set_flags(&mut self, f: Flags, on: bool) {
        self.flags.set(f, on)
    }
    /// The `fflags` the registration asked for.
    #[inline]
    pub fn sfflags(&self) -> u32 {
        self.sfflags
    }
    /// Replace the subscribed `fflags`.
    #[inline]
    pub fn set_sfflags(&mut self, v: u32) {
        self.sfflags = v
    }
    /// The `data` the registration gave (a period, a low-water mark...).
    #[inline]
    pub fn sdata(&self) -> i64 {
        self.sdata
    }
    /// Replace the subscribed `data` (a storage's `modify` storing a new
    /// period, as FreeBSD's `f_touch` sets `kn_sdata`).
    #[inline]
    pub fn set_sdata(&mut self, v: i64) {
        self.sdata = v
    }
    /// The user's opaque data.
    #[inline]
    pub fn udata(&self) -> u64 {
        self.udata
    }
    /// Pending output `data` (merged activity while queued).
    #[inline]
    pub fn data(&self) -> i64 {
        self.data
    }
    /// Set pending output `data`.
    #[inline]
    pub fn set_data(&mut self, v: i64) {
        self.data = v
    }
    /// Pending output `fflags`.
    #[inline]
    pub fn fflags(&self) -> u32 {
        self.fflags
    }
    /// Set pending output `fflags`.
    #[inline]
    pub fn set_fflags(&mut self, v: u32) {
        self.fflags = v
    }
    /// Whether the knote is disabled (`DISABLE`/`DISPATCH`).
    #[inline]
    pub fn is_disabled(&self) -> bool {
        self.status & DISABLED != 0
    }
    /// Readiness bits of the OS event that last activated the knote.
    #[inline]
    pub fn hint(&self) -> u32 {
        self.hint
    }
    /// The event this knote reports, from its current pending state.
    #[inline]
    pub fn to_event(&self) -> Kevent {
        Kevent {
            ident: self.ident,
            filter: self.filter,
            flags: self.flags,
            fflags: self.fflags,
            data: self.data,
            udata: self.udata,
        }
    }
}

/// The ready list: a FIFO of `(key, seq)`. Removal is lazy: an entry is
/// live only while its knote is `QUEUED` with the same `seq`.
#[derive(Debug, Default)]
pub(crate) struct ReadyList {
    q: VecDeque<(u32, u64)>,
    next_seq: u64,
    /// Live entries (FreeBSD's `kq_count`).
    pub(crate) count: usize,
}

impl ReadyList {
    #[inline]
    pub(crate) fn push(&mut self, kn: &mut Knote, key: u32) {
        debug_assert!(kn.status & QUEUED == 0);
        self.next_seq += 1;
        kn.seq = self.next_seq;
        kn.status |= QUEUED;
        self.q.push_back((key, self.next_seq));
        self.count += 1;
    }

    /// Move a queued knote's entry to the tail (it stays `QUEUED`).
    #[inline]
    pub(crate) fn requeue(&mut self, kn: &mut Knote, key: u32) {
        debug_assert!(kn.status & QUEUED != 0);
        self.next_seq += 1;
        kn.seq = self.next_seq;
        self.q.push_back((key, self.next_seq));
    }

    /// Unlink `kn` (lazily).
    #[inline]
    pub(crate) fn remove(&mut self, kn: &mut Knote) {
        if kn.status & QUEUED != 0 {
            kn.status &= !QUEUED;
            self.count -= 1;
            if self.count == 0 {
                self.q.clear();
            }
        }
    }

    #[inline]
    pub(crate) fn pop_raw(&mut self) -> Option<(u32, u64)> {
        self.q.pop_front()
    }

    #[inline]
    pub(crate) fn raw_len(&self) -> usize {
        self.q.len()
    }
}
