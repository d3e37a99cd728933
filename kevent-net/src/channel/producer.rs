//! The producer end: single pushes and write chunks (reserve, fill, commit).

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::error::{ChunkError, PushError};
use super::ring::Ring;
use super::PacketDesc;
use crate::loom::Arc;

/// The sending end of a channel; see [`channel`](super::channel).
///
/// `Send` but used from one thread at a time (`&mut self`). Every push or
/// commit is published at once (one Release store of the tail index) and
/// followed by the need-wakeup check, so nothing is ever left unpublished
/// when the consumer goes to sleep.
pub struct Producer {
    ring: Arc<Ring>,
    /// Next index to write; equals the published tail between calls.
    tail: usize,
    /// Last head seen; re-read only when the cache says full.
    head_cache: usize,
    /// Last sleep epoch of the consumer this producer woke.
    woken: u64,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("head_cache", &self.head_cache)
            .field("woken", &self.woken)
            .field("ring", &self.ring)
            .finish()
    }
}

impl Producer {
    pub(super) fn new(ring: Arc<Ring>) -> Self {
        Self {
            ring,
            tail: 0,
            head_cache: 0,
            woken: 0,
        }
    }

    /// Free slots according to the cached head (a lower bound).
    #[inline]
    fn free_cached(&self) -> usize {
        let used = self.tail.wrapping_sub(self.head_cache);
        debug_assert!(
            used <= self.ring.capacity(),
            "tail {} head_cache {} capacity {}",
            self.tail,
            self.head_cache,
            self.ring.capacity()
        );
        self.ring.capacity() - used
    }

    /// Free slots, re-reading the consumer's head only if the cache shows
    /// fewer than `want`.
    #[inline]
    fn free_at_least(&mut self, want: usize) -> usize {
        let free = self.free_cached();
        if free >= want {
            return free;
        }
        // Acquire: the consumer's reads of the slots it released
        // happened-before we overwrite them.
        self.head_cache = self.ring.head.0.load(Acquire);
        self.free_cached()
    }

    /// Publishes everything written up to `self.tail` and wakes the
    /// consumer if it may be asleep.
    #[inline]
    fn publish(&mut self) {
        // Release: the slot writes happen-before the consumer's Acquire
        // load of this index.
        self.ring.tail.0.store(self.tail, Release);
        self.ring.wake_if_sleeping(&mut self.woken);
    }

    /// Pushes one descriptor and publishes it.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] with the descriptor when no slot is free, and
    /// only then.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::{channel, PacketDesc, PushError};
    ///
    /// let (mut tx, mut rx) = channel(2)?;
    /// tx.push(PacketDesc::new(0, 60, 1))?;
    /// tx.push(PacketDesc::new(1, 60, 1))?;
    /// let third = PacketDesc::new(2, 60, 1);
    /// assert_eq!(tx.push(third), Err(PushError::Full(third)));
    /// assert_eq!(rx.pop()?.buf, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn push(&mut self, desc: PacketDesc) -> Result<(), PushError> {
        if self.free_at_least(1) == 0 {
            return Err(PushError::Full(desc));
        }
        // SAFETY: a free slot exists, so `tail < head + capacity`: the
        // slot of `tail` is the producer's.
        unsafe { self.ring.write(self.tail, desc) };
        self.tail = self.tail.wrapping_add(1);
        self.publish();
        Ok(())
    }

    /// Pushes as many descriptors from `descs` as fit, published together
    /// with one store; returns how many were pushed.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::{channel, PacketDesc};
    ///
    /// let (mut tx, _rx) = channel(4)?;
    /// let burst = [PacketDesc::default(); 6];
    /// assert_eq!(tx.push_slice(&burst), 4);
    /// # Ok::<(), kevent_net::ChannelError>(())
    /// ```
    pub fn push_slice(&mut self, descs: &[PacketDesc]) -> usize {
        let n = descs.len().min(self.free_at_least(descs.len()));
        if n == 0 {
            return 0;
        }
        #[cfg(not(loom))]
        {
            let (a, b) = self.slices_mut(n);
            let (da, db) = descs[..n].split_at(a.len());
            a.copy_from_slice(da);
            b.copy_from_slice(db);
        }
        #[cfg(loom)]
        for (k, d) in descs[..n].iter().enumerate() {
            // SAFETY: `k < n <= free`: the slot is the producer's.
            unsafe { self.ring.write(self.tail.wrapping_add(k), *d) };
        }
        self.tail = self.tail.wrapping_add(n);
        self.publish();
        n
    }

    /// Free slots right now (re-reads the consumer's index if the cache
    /// says the ring is full).
    #[must_use]
    pub fn slots(&mut self) -> usize {
        self.free_at_least(self.ring.capacity())
    }

    /// The channel's capacity in descriptors.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Wake-up syscalls made so far by this producer: one per sleep of
    /// the consumer that a publication ended, and none while the consumer
    /// runs.
    #[must_use]
    pub fn wake_syscalls(&self) -> u64 {
        self.ring.wake.0.wake_syscalls.load(Relaxed)
    }

    /// `true` once the consumer has been dropped: pushes still succeed
    /// until the ring fills, but nobody will read them.
    #[must_use]
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.ring) == 1
    }

    /// Two mutable slices over the `n` slots from `tail`, split at the wrap.
    ///
    /// The caller has checked `n <= free`.
    #[cfg(not(loom))]
    #[inline]
    fn slices_mut(&mut self, n: usize) -> (&mut [PacketDesc], &mut [PacketDesc]) {
        let cap = self.ring.capacity();
        let start = self.tail & self.ring.mask;
        let first = n.min(cap - start);
        debug_assert!(
            n <= self.free_cached() && start + first <= cap,
            "n {n} start {start} first {first} capacity {cap}"
        );
        let base = self.ring.slots_ptr();
        // SAFETY: slots `[tail, tail + n)` are free, so the producer owns
        // them and the consumer does not read them until the next publish;
        // both ranges lie inside the array (`start + first <= cap`,
        // `n - first <= start`), do not overlap, and `&mut self` keeps any
        // other view from this end alive meanwhile.
        unsafe {
            (
                std::slice::from_raw_parts_mut(base.add(start), first),
                std::slice::from_raw_parts_mut(base, n - first),
            )
        }
    }

    /// Reserves exactly `n` free slots for a burst.
    ///
    /// Fill them through [`WriteChunk::as_mut_slices`], then
    /// [`commit`](WriteChunk::commit) publishes them with one Release
    /// store and one need-wakeup check. Dropping the chunk uncommitted
    /// publishes nothing. The slots hold stale descriptors until written.
    ///
    /// # Errors
    ///
    /// [`ChunkError::TooFewSlots`] with the free count if fewer than `n`
    /// slots are free.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::{channel, PacketDesc};
    ///
    /// let (mut tx, mut rx) = channel(8)?;
    /// let mut chunk = tx.write_chunk(3)?;
    /// let (a, b) = chunk.as_mut_slices();
    /// for (i, d) in a.iter_mut().chain(b).enumerate() {
    ///     *d = PacketDesc::new(i as u32, 64, 0);
    /// }
    /// chunk.commit_all();
    /// assert_eq!(rx.slots(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn write_chunk(&mut self, n: usize) -> Result<WriteChunk<'_>, ChunkError> {
        let free = self.free_at_least(n);
        if free < n {
            return Err(ChunkError::TooFewSlots(free));
        }
        Ok(WriteChunk { producer: self, n })
    }
}

/// `n` reserved slots of a [`Producer`], not yet published.
#[derive(Debug)]
#[must_use = "a write chunk publishes nothing until committed"]
pub struct WriteChunk<'a> {
    producer: &'a mut Producer,
    n: usize,
}

impl WriteChunk<'_> {
    /// The reserved slots, in order: the second slice is non-empty only
    /// when the chunk wraps around the end of the ring.
    #[cfg(not(loom))]
    #[inline]
    pub fn as_mut_slices(&mut self) -> (&mut [PacketDesc], &mut [PacketDesc]) {
        self.producer.slices_mut(self.n)
    }

    /// Writes slot `k` of the chunk (the loom build's stand-in for
    /// `as_mut_slices`: loom tracks each slot cell's accesses, which a raw
    /// slice over the cells would bypass).
    ///
    /// # Panics
    ///
    /// If `k >= len()`.
    #[cfg(loom)]
    pub fn write(&mut self, k: usize, desc: PacketDesc) {
        assert!(k < self.n, "slot {k} of a chunk of {}", self.n);
        // SAFETY: `k < n <= free` (checked by `write_chunk`): the slot is
        // the producer's until the commit publishes it.
        unsafe {
            self.producer
                .ring
                .write(self.producer.tail.wrapping_add(k), desc)
        };
    }

    /// Number of reserved slots.
    #[must_use]
    pub fn len(&self) -> usize {
        self.n
    }

    /// `true` if no slot was reserved.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Publishes the first `k` slots (at most all of them) with one
    /// Release store, then runs the need-wakeup check.
    #[inline]
    pub fn commit(self, k: usize) {
        let k = k.min(self.n);
        if k == 0 {
            return;
        }
        self.producer.tail = self.producer.tail.wrapping_add(k);
        self.producer.publish();
    }

    /// Publishes every reserved slot.
    #[inline]
    pub fn commit_all(self) {
        let n = self.n;
        self.commit(n);
    }
}
