//! The consumer end: pops, read chunks, and the sleeping side of
//! need-wakeup.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;

use super::error::{ChunkError, PopError};
use super::notify::Notifier;
use super::ring::Ring;
use super::PacketDesc;
use crate::loom::Arc;

/// The receiving end of a channel; see [`channel`](super::channel).
///
/// `Send` but used from one thread at a time (`&mut self`). Every pop or
/// commit publishes the new head at once (one Release store), so the
/// producer never waits on slots the consumer has finished with.
pub struct Consumer {
    ring: Arc<Ring>,
    /// Next index to read; equals the published head between calls.
    head: usize,
    /// Last tail seen; re-read only when the cache says empty.
    tail_cache: usize,
    /// Sleep epoch: odd while a sleep is announced. Only we write it.
    seq: u64,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("tail_cache", &self.tail_cache)
            .field("seq", &self.seq)
            .field("ring", &self.ring)
            .finish()
    }
}

/// What [`Consumer::prepare_wait`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum WaitPrep {
    /// Descriptors are waiting: do not block.
    Ready,
    /// The need-wakeup flag is set and the ring was empty after it: the
    /// consumer may block on the [`Notifier`], then must call
    /// [`Consumer::finish_wait`].
    MaySleep,
}

impl Consumer {
    pub(super) fn new(ring: Arc<Ring>) -> Self {
        Self {
            ring,
            head: 0,
            tail_cache: 0,
            seq: 0,
        }
    }

    /// Filled slots according to the cached tail (a lower bound).
    #[inline]
    fn filled_cached(&self) -> usize {
        let n = self.tail_cache.wrapping_sub(self.head);
        debug_assert!(
            n <= self.ring.capacity(),
            "tail_cache {} head {} capacity {}",
            self.tail_cache,
            self.head,
            self.ring.capacity()
        );
        n
    }

    /// Filled slots, re-reading the producer's tail only if the cache
    /// shows fewer than `want`.
    #[inline]
    fn filled_at_least(&mut self, want: usize) -> usize {
        let n = self.filled_cached();
        if n >= want {
            return n;
        }
        // Acquire: the producer's slot writes happened-before our reads.
        self.tail_cache = self.ring.tail.0.load(Acquire);
        self.filled_cached()
    }

    /// Releases every slot before `self.head` to the producer.
    #[inline]
    fn publish(&mut self) {
        // Release: our slot reads happen-before the producer's Acquire
        // load of head, hence before it overwrites the slots.
        self.ring.head.0.store(self.head, Release);
    }

    /// Pops the oldest descriptor.
    ///
    /// # Errors
    ///
    /// [`PopError::Empty`] if no published descriptor waits, and only then.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::{channel, PacketDesc, PopError};
    ///
    /// let (mut tx, mut rx) = channel(4)?;
    /// assert_eq!(rx.pop(), Err(PopError::Empty));
    /// tx.push(PacketDesc::new(9, 100, 0))?;
    /// assert_eq!(rx.pop()?, PacketDesc::new(9, 100, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn pop(&mut self) -> Result<PacketDesc, PopError> {
        if self.filled_at_least(1) == 0 {
            return Err(PopError::Empty);
        }
        // SAFETY: `head < tail_cache <= tail`, tail loaded with Acquire:
        // the slot is the consumer's and fully written.
        let desc = unsafe { self.ring.read(self.head) };
        self.head = self.head.wrapping_add(1);
        self.publish();
        Ok(desc)
    }

    /// Pops up to `out.len()` descriptors into `out`, releasing them with
    /// one store; returns how many.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::{channel, PacketDesc};
    ///
    /// let (mut tx, mut rx) = channel(4)?;
    /// tx.push_slice(&[PacketDesc::new(1, 1, 1); 3]);
    /// let mut out = [PacketDesc::default(); 8];
    /// assert_eq!(rx.pop_into(&mut out), 3);
    /// # Ok::<(), kevent_net::ChannelError>(())
    /// ```
    pub fn pop_into(&mut self, out: &mut [PacketDesc]) -> usize {
        let n = out.len().min(self.filled_at_least(out.len()));
        if n == 0 {
            return 0;
        }
        #[cfg(not(loom))]
        {
            let (a, b) = self.slices(n);
            out[..a.len()].copy_from_slice(a);
            out[a.len()..n].copy_from_slice(b);
        }
        #[cfg(loom)]
        for (k, d) in out[..n].iter_mut().enumerate() {
            // SAFETY: `k < n <= filled`: the slot is the consumer's.
            *d = unsafe { self.ring.read(self.head.wrapping_add(k)) };
        }
        self.head = self.head.wrapping_add(n);
        self.publish();
        n
    }

    /// Descriptors waiting right now (re-reads the producer's index if the
    /// cache says the ring is empty).
    #[must_use]
    pub fn slots(&mut self) -> usize {
        self.filled_at_least(self.ring.capacity())
    }

    /// `true` if no descriptor waits (re-reads the producer's index).
    #[must_use]
    pub fn is_empty(&mut self) -> bool {
        self.filled_at_least(1) == 0
    }

    /// The channel's capacity in descriptors.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// `true` once the producer has been dropped: what is published can
    /// still be read, nothing more will come.
    #[must_use]
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.ring) == 1
    }

    /// The wake-up eventfd, to wait on in a poller (register it for READ
    /// in a kevent `Kqueue`) between [`prepare_wait`](Self::prepare_wait)
    /// and [`finish_wait`](Self::finish_wait).
    #[must_use]
    pub fn notifier(&self) -> &Notifier {
        &self.ring.notifier
    }

    /// Times this consumer announced a sleep (set its need-wakeup flag in
    /// [`prepare_wait`](Self::prepare_wait)), whether it then blocked or
    /// found data on the re-check. Each announcement costs the producer at
    /// most one wake-up syscall, so `wake_syscalls() <= sleeps()`.
    #[must_use]
    pub fn sleeps(&self) -> u64 {
        self.seq.div_ceil(2)
    }

    /// Wake-up syscalls the producer made so far (the same counter as
    /// [`Producer::wake_syscalls`](super::Producer::wake_syscalls)).
    #[must_use]
    pub fn wake_syscalls(&self) -> u64 {
        self.ring.wake.0.wake_syscalls.load(Relaxed)
    }

    /// First half of a wait: sets the need-wakeup flag, then re-checks the
    /// ring (the consumer's side of the Dekker pattern described on
    /// [`channel`](super::channel)).
    ///
    /// On [`WaitPrep::MaySleep`] the caller may block until the
    /// [`notifier`](Self::notifier) is readable, and must then call
    /// [`finish_wait`](Self::finish_wait); a publication made after this
    /// call is guaranteed to notify. On [`WaitPrep::Ready`] the flag is
    /// already cleared.
    pub fn prepare_wait(&mut self) -> WaitPrep {
        // Our head is always published (every pop/commit stores it), so the
        // producer cannot be blocked on slots we hold while we sleep.
        if self.filled_at_least(1) > 0 {
            return WaitPrep::Ready;
        }
        debug_assert!(self.seq & 1 == 0, "prepare_wait twice without finish_wait");
        self.seq += 1;
        self.tail_cache = self.ring.announce_sleep(self.seq);
        if self.filled_cached() > 0 {
            // The producer may have seen the odd epoch already and be writing
            // to the eventfd: the next wait then returns at once (spurious).
            self.seq += 1;
            self.ring.end_sleep(self.seq);
            return WaitPrep::Ready;
        }
        WaitPrep::MaySleep
    }

    /// Second half of a wait: clears the need-wakeup flag. Publications
    /// after this make no wake-up syscall. Does nothing if no sleep is
    /// announced.
    pub fn finish_wait(&mut self) {
        if self.seq & 1 == 1 {
            self.seq += 1;
            self.ring.end_sleep(self.seq);
        }
    }

    /// Blocks until a descriptor is published or `timeout` elapses
    /// (`None`: no limit); returns `true` if descriptors are waiting.
    ///
    /// Returns at once if the ring is not empty. `false` means a timeout,
    /// a signal (`EINTR`), or a spurious wake-up from a notification left
    /// over from an earlier sleep; callers loop. Uses the eventfd directly
    /// (`ppoll(2)`, nanosecond timeout).
    ///
    /// # Errors
    ///
    /// The eventfd's `ppoll(2)`/`read(2)` error other than `EINTR`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use kevent_net::{channel, PacketDesc};
    ///
    /// let (mut tx, mut rx) = channel(16)?;
    /// let t = std::thread::spawn(move || tx.push(PacketDesc::new(1, 2, 3)));
    /// while !rx.wait(Some(Duration::from_secs(5)))? {}
    /// assert_eq!(rx.pop()?.flow, 3);
    /// t.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.prepare_wait() == WaitPrep::Ready {
            return Ok(true);
        }
        let r = self.ring.notifier.wait(timeout);
        self.finish_wait();
        r?;
        Ok(!self.is_empty())
    }

    /// Two slices over the `n` filled slots from `head`, split at the wrap.
    ///
    /// The caller has checked `n <= filled`.
    #[cfg(not(loom))]
    #[inline]
    fn slices(&self, n: usize) -> (&[PacketDesc], &[PacketDesc]) {
        let cap = self.ring.capacity();
        let start = self.head & self.ring.mask;
        let first = n.min(cap - start);
        debug_assert!(
            n <= self.filled_cached() && start + first <= cap,
            "n {n} start {start} first {first} capacity {cap}"
        );
        let base = self.ring.slots_ptr();
        // SAFETY: slots `[head, head + n)` are filled and published (tail
        // loaded with Acquire), so the consumer owns them and the producer
        // does not write them until head moves past; both ranges lie inside
        // the array and the borrow of `self` outlives no commit.
        unsafe {
            (
                std::slice::from_raw_parts(base.add(start), first),
                std::slice::from_raw_parts(base, n - first),
            )
        }
    }

    /// Takes exactly `n` filled slots for a burst read.
    ///
    /// Read them through [`ReadChunk::as_slices`], then
    /// [`commit`](ReadChunk::commit) releases them to the producer with
    /// one Release store. Dropping the chunk uncommitted consumes nothing.
    ///
    /// # Errors
    ///
    /// [`ChunkError::TooFewSlots`] with the filled count if fewer than `n`
    /// descriptors wait.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::{channel, PacketDesc};
    ///
    /// let (mut tx, mut rx) = channel(8)?;
    /// tx.push_slice(&[PacketDesc::new(5, 5, 5); 5]);
    /// let n = rx.slots().min(4);
    /// let chunk = rx.read_chunk(n)?;
    /// let (a, b) = chunk.as_slices();
    /// assert_eq!(a.len() + b.len(), 4);
    /// chunk.commit_all();
    /// assert_eq!(rx.slots(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn read_chunk(&mut self, n: usize) -> Result<ReadChunk<'_>, ChunkError> {
        let filled = self.filled_at_least(n);
        if filled < n {
            return Err(ChunkError::TooFewSlots(filled));
        }
        Ok(ReadChunk { consumer: self, n })
    }
}

/// `n` filled slots of a [`Consumer`], not yet released.
#[derive(Debug)]
#[must_use = "a read chunk consumes nothing until committed"]
pub struct ReadChunk<'a> {
    consumer: &'a mut Consumer,
    n: usize,
}

impl ReadChunk<'_> {
    /// The descriptors, oldest first: the second slice is non-empty only
    /// when the chunk wraps around the end of the ring.
    #[cfg(not(loom))]
    #[inline]
    pub fn as_slices(&self) -> (&[PacketDesc], &[PacketDesc]) {
        self.consumer.slices(self.n)
    }

    /// Reads descriptor `k` of the chunk (the loom build's stand-in for
    /// `as_slices`, so that loom tracks each slot's accesses).
    ///
    /// # Panics
    ///
    /// If `k >= len()`.
    #[cfg(loom)]
    #[must_use]
    pub fn read(&self, k: usize) -> PacketDesc {
        assert!(k < self.n, "slot {k} of a chunk of {}", self.n);
        // SAFETY: `k < n <= filled` (checked by `read_chunk`, tail loaded
        // with Acquire): the slot is the consumer's and fully written.
        unsafe { self.consumer.ring.read(self.consumer.head.wrapping_add(k)) }
    }

    /// Number of descriptors in the chunk.
    #[must_use]
    pub fn len(&self) -> usize {
        self.n
    }

    /// `true` if the chunk is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Releases the first `k` descriptors (at most all) with one store.
    #[inline]
    pub fn commit(self, k: usize) {
        let k = k.min(self.n);
        if k == 0 {
            return;
        }
        self.consumer.head = self.consumer.head.wrapping_add(k);
        self.consumer.publish();
    }

    /// Releases every descriptor of the chunk.
    #[inline]
    pub fn commit_all(self) {
        let n = self.n;
        self.commit(n);
    }
}
