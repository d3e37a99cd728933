//! Knotes (one registration each) and the ready list.

use crate::event::{Filter, Flags, Kevent};

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
    q: Ring,
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
        self.q.push((key, self.next_seq));
        self.count += 1;
    }

    /// Move a queued knote's entry to the tail (it stays `QUEUED`).
    #[inline]
    pub(crate) fn requeue(&mut self, kn: &mut Knote, key: u32) {
        debug_assert!(kn.status & QUEUED != 0);
        self.next_seq += 1;
        kn.seq = self.next_seq;
        self.q.push((key, self.next_seq));
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

    /// Whether the entries left behind by lazy removal outnumber the live
    /// ones enough to be dropped: a knote removed and queued again many
    /// times between collections (change-only calls) would otherwise grow
    /// the ring without bound while another knote keeps `count` above 0.
    #[inline]
    pub(crate) fn needs_compact(&self) -> bool {
        self.q.len() > 2 * self.count + 64
    }

    /// Drop every entry `live` rejects, keeping the others in order. Called
    /// when [`ReadyList::needs_compact`]: the ring is then at least
    /// `count + 64` entries longer than after the last compaction, so the
    /// cost is amortised O(1) per push.
    #[cold]
    pub(crate) fn compact(&mut self, live: impl Fn(u32, u64) -> bool) {
        self.q.retain(|&(key, seq)| live(key, seq));
    }

    #[inline]
    pub(crate) fn pop_raw(&mut self) -> Option<(u32, u64)> {
        self.q.pop()
    }

    #[inline]
    pub(crate) fn raw_len(&self) -> usize {
        self.q.len()
    }
}

/// A growable power-of-two ring of ready entries: push and pop are a
/// masked index and a store (`VecDeque`'s push is an out-of-line call).
#[derive(Debug, Default)]
struct Ring {
    buf: Vec<(u32, u64)>,
    /// Monotonic head and tail; `tail - head` entries are live.
    head: usize,
    tail: usize,
}

impl Ring {
    #[inline]
    fn len(&self) -> usize {
        self.tail - self.head
    }

    #[inline(always)]
    fn push(&mut self, v: (u32, u64)) {
        if self.len() == self.buf.len() {
            self.grow();
        }
        let i = self.tail & (self.buf.len() - 1);
        debug_assert!(self.buf.len().is_power_of_two() && i < self.buf.len());
        // SAFETY: `buf.len()` is a power of two (`grow`), so the masked
        // index is below it.
        unsafe { *self.buf.get_unchecked_mut(i) = v };
        self.tail += 1;
    }

    #[inline(always)]
    fn pop(&mut self) -> Option<(u32, u64)> {
        if self.head == self.tail {
            return None;
        }
        // Non-empty, so `buf` has a power-of-two length.
        let i = self.head & (self.buf.len() - 1);
        debug_assert!(self.buf.len().is_power_of_two() && i < self.buf.len());
        // SAFETY: as in `push`.
        let v = unsafe { *self.buf.get_unchecked(i) };
        self.head += 1;
        Some(v)
    }

    #[inline]
    fn clear(&mut self) {
        self.head = 0;
        self.tail = 0;
    }

    /// Keep the entries `keep` accepts, in order, packed from `head`.
    fn retain(&mut self, keep: impl Fn(&(u32, u64)) -> bool) {
        if self.buf.is_empty() {
            return;
        }
        let mask = self.buf.len() - 1;
        let mut w = self.head;
        for r in self.head..self.tail {
            let v = self.buf[r & mask];
            if keep(&v) {
                self.buf[w & mask] = v;
                w += 1;
            }
        }
        self.tail = w;
    }

    #[cold]
    fn grow(&mut self) {
        let cap = (self.buf.len() * 2).max(64);
        let mut buf = vec![(0u32, 0u64); cap];
        for (i, slot) in buf.iter_mut().enumerate().take(self.len()) {
            *slot = self.buf[(self.head + i) & (self.buf.len().max(1) - 1)];
        }
        self.tail -= self.head;
        self.head = 0;
        self.buf = buf;
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;

    #[test]
    fn ring_keeps_fifo_order_across_growth_and_wrap() {
        let mut r = Ring::default();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..50u32 {
            for _ in 0..(round * 7 % 97 + 1) {
                r.push((next_in, next_in as u64));
                next_in += 1;
            }
            for _ in 0..(round * 5 % 89) {
                match r.pop() {
                    Some((k, s)) => {
                        assert_eq!((k, s), (next_out, next_out as u64));
                        next_out += 1;
                    }
                    None => assert_eq!(next_out, next_in),
                }
            }
            assert_eq!(r.len(), (next_in - next_out) as usize);
        }
        while let Some((k, _)) = r.pop() {
            assert_eq!(k, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, next_in);
    }

    #[test]
    fn retain_keeps_the_accepted_entries_in_order_across_a_wrap() {
        let mut r = Ring::default();
        // Wrap the ring first: head and tail well past the buffer's length.
        for i in 0..100u32 {
            r.push((i, 0));
            r.pop();
        }
        for i in 0..50u32 {
            r.push((i, i as u64));
        }
        r.retain(|&(k, _)| k % 3 == 0);
        let kept: Vec<u32> = std::iter::from_fn(|| r.pop()).map(|(k, _)| k).collect();
        let want: Vec<u32> = (0..50).filter(|k| k % 3 == 0).collect();
        assert_eq!(kept, want);
        assert_eq!(r.len(), 0);
        // Still a working FIFO afterwards.
        r.push((7, 7));
        assert_eq!(r.pop(), Some((7, 7)));
    }
}
