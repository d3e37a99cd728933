//! `BufferPool`: fixed-size packet buffers in one contiguous, page-aligned
//! region, addressed by `u32` id.
//!
//! # Ownership rules
//!
//! Every buffer has exactly one owner at a time: the pool (free), or the
//! holder of its [`Buf`] token. A token is created only by
//! [`BufferPool::alloc`] (or reclaimed from a raw id with the `unsafe`
//! [`BufferPool::from_raw`]) and destroyed only by a `free`; it is neither
//! `Clone` nor `Copy`. Access goes through the token:
//!
//! - `&Buf` gives `&[u8]` ([`BufferPool::bytes`]),
//! - `&mut Buf` gives `&mut [u8]` ([`BufferPool::bytes_mut`]),
//!
//! so the borrow checker rules out two live mutable views of one buffer, or
//! a view of a buffer that was freed. Tokens carry their pool's tag, so a
//! token of one pool cannot open another pool's buffer.
//!
//! To move a buffer through a [`channel`](crate::channel) (whose
//! descriptors are `Copy`), turn the token into its raw id with
//! [`Buf::into_raw`] and reclaim it on the other side with
//! [`BufferPool::from_raw`]. The same raw ids are what the kernel sees in
//! an io_uring provided-buffer ring filled from the pool (see
//! [`BufferPool::as_ptr`] and below): a buffer handed to the kernel is
//! owned by the kernel until its final completion, and reclaimed from the
//! id the completion carries.
//!
//! # Back-pressure
//!
//! An empty pool is not an error path that panics: `alloc` returns `None`
//! and [`BufferPool::exhaustions`] counts the event. Freeing buffers makes
//! allocation succeed again.
//!
//! # The region and io_uring: a provided-buffer ring, not registered buffers
//!
//! On io_uring the pool *is* what the kernel receives into: every entry of
//! the `PacketSource`'s provided-buffer ring (`IORING_REGISTER_PBUF_RING`,
//! 16-byte `io_uring_buf` descriptors in a small mapping of their own) is
//! the address of a pool buffer, and its buffer id is the pool id. The
//! region itself is deliberately *not* registered with
//! `IORING_REGISTER_BUFFERS`, because nothing on this path would use it:
//!
//! - A receive with buffer selection takes the entry's address as a plain
//!   user pointer (`io_ring_buffer_select` → `u64_to_user_ptr(addr)`,
//!   imported as a user range) and the socket layer copies the datagram
//!   into it, exactly as `recvmmsg` does. Registered ("fixed") buffers are
//!   consulted only by ops that name one by index: `READ_FIXED`,
//!   `WRITE_FIXED`, `SEND(MSG)_ZC` with `IORING_RECVSEND_FIXED_BUF`,
//!   `URING_CMD` with fixed buffers. The receive path uses none; the send
//!   path is `sendmmsg` (`BatchSender`), and zero-copy send copies on
//!   loopback anyway.
//! - Registration pins every page of the region and charges it to
//!   `RLIMIT_MEMLOCK` (8 MiB here) unless the process has
//!   `CAP_IPC_LOCK`. Measured here (`io_uring_register_buffers` of the
//!   region in 1 MiB chunks): 2 MiB pool 33–36 µs, 5.25 MiB 100–160 µs,
//!   32 MiB 1.1 ms as root; as an unprivileged user an 8 MiB pool already
//!   fails with `ENOMEM` — the mixer's pool for 2000 participants
//!   (~10 MiB) could not be registered at all.
//!
//! So registering would cost locked memory and a hard size limit for no
//! receive-path gain; the buffer ring alone (at most 32768 × 16 bytes)
//! counts against `RLIMIT_MEMLOCK`. A future fixed-buffer send could
//! register the region then, sized within the limit, with the buffer
//! index of a chunk derivable from the pool id.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Default buffer size: an Ethernet frame fits, and two buffers fill a page.
pub const DEFAULT_BUF_SIZE: usize = 2048;

/// Alignment of the region: one page, as io_uring buffer registration and
/// `O_DIRECT`-style I/O want.
pub const REGION_ALIGN: usize = 4096;

/// Largest buffer size [`BufferPool::new`] accepts (1 MiB).
pub const MAX_BUF_SIZE: usize = 1 << 20;

/// Smallest buffer size [`BufferPool::new`] accepts (one cache line).
pub const MIN_BUF_SIZE: usize = 64;

/// Tags of live and past pools; 0 is never used.
static NEXT_TAG: AtomicU32 = AtomicU32::new(1);

/// Why a pool operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// `buf_size` is not a power of two in
    /// [`MIN_BUF_SIZE`]`..=`[`MAX_BUF_SIZE`], `count` is zero, or
    /// `count * buf_size` overflows.
    BadGeometry {
        /// Requested number of buffers.
        count: u32,
        /// Requested size of one buffer.
        buf_size: usize,
    },
    /// The allocator could not provide the region.
    OutOfMemory,
    /// 2^32 - 1 pools were created in this process; tags would repeat.
    TooManyPools,
    /// The token or raw id does not belong to this pool (wrong pool, or id
    /// out of range). Carries the raw id.
    ForeignBuffer(u32),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadGeometry { count, buf_size } => write!(
                f,
                "bad pool geometry: {count} buffers of {buf_size} bytes \
                 (size must be a power of two in {MIN_BUF_SIZE}..={MAX_BUF_SIZE})"
            ),
            Self::OutOfMemory => f.write_str("cannot allocate the buffer region"),
            Self::TooManyPools => f.write_str("pool tags exhausted"),
            Self::ForeignBuffer(id) => write!(f, "buffer {id} does not belong to this pool"),
        }
    }
}

impl std::error::Error for PoolError {}

/// The owning token of one buffer of a [`BufferPool`].
///
/// Not `Clone`: holding it is owning the buffer. Dropping it without
/// [`BufferPool::free`] leaks the buffer (the pool shrinks by one) but is
/// safe.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "dropping a Buf leaks the buffer; return it with BufferPool::free"]
pub struct Buf {
    id: u32,
    tag: u32,
}

impl Buf {
    /// The buffer's id in its pool (index of the buffer in the region).
    #[must_use]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Gives up the token for its raw id, e.g. to put it in a
    /// [`PacketDesc`](crate::PacketDesc). The buffer stays allocated;
    /// reclaim it with [`BufferPool::from_raw`].
    #[must_use]
    pub fn into_raw(self) -> u32 {
        self.id
    }
}

/// A pool of `count` buffers of `buf_size` bytes in one page-aligned
/// region. `Send + Sync`: allocation and freeing take `&self` (a mutex
/// around the free list, taken once per batch).
///
/// # Examples
///
/// ```
/// use kevent_net::BufferPool;
///
/// let pool = BufferPool::new(2, 2048)?;
/// let a = pool.alloc().unwrap();
/// let b = pool.alloc().unwrap();
/// assert!(pool.alloc().is_none()); // back-pressure, not a panic
/// assert_eq!(pool.exhaustions(), 1);
/// pool.free_batch([a, b]);
/// assert_eq!(pool.available(), 2);
/// # Ok::<(), kevent_net::PoolError>(())
/// ```
pub struct BufferPool {
    base: NonNull<u8>,
    layout: Layout,
    shift: u32,
    count: u32,
    tag: u32,
    /// Free ids, a LIFO stack (the most recently freed buffer is the most
    /// likely to be in cache). Capacity `count`: never reallocates.
    free: Mutex<Vec<u32>>,
    exhaustions: AtomicU64,
}

// SAFETY: the region is plain memory owned by the pool; which thread may
// touch which buffer is decided by the `Buf` tokens (see the module's
// ownership rules), and the free list is behind a mutex.
unsafe impl Send for BufferPool {}
// SAFETY: as above; every `&self` method either locks the free list or
// accesses a buffer through a token that proves exclusive (`&mut Buf`) or
// shared (`&Buf`) ownership.
unsafe impl Sync for BufferPool {}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("base", &self.base)
            .field("count", &self.count)
            .field("buf_size", &self.buf_size())
            .field("available", &self.available())
            .field("exhaustions", &self.exhaustions())
            .finish()
    }
}

impl BufferPool {
    /// Allocates a zeroed, page-aligned region of `count` buffers of
    /// `buf_size` bytes, all free.
    ///
    /// The region is plain memory: it is never pinned or registered (see
    /// the module docs), so its size is bounded only by memory.
    ///
    /// # Errors
    ///
    /// [`PoolError::BadGeometry`] for a zero `count` or a `buf_size` that is
    /// not a power of two in [`MIN_BUF_SIZE`]`..=`[`MAX_BUF_SIZE`];
    /// [`PoolError::OutOfMemory`] if the allocation fails.
    pub fn new(count: u32, buf_size: usize) -> Result<Self, PoolError> {
        let bad = PoolError::BadGeometry { count, buf_size };
        if count == 0
            || !buf_size.is_power_of_two()
            || !(MIN_BUF_SIZE..=MAX_BUF_SIZE).contains(&buf_size)
        {
            return Err(bad);
        }
        let len = (count as usize).checked_mul(buf_size).ok_or(bad)?;
        let layout = Layout::from_size_align(len, REGION_ALIGN).map_err(|_| bad)?;
        let tag = NEXT_TAG
            .fetch_update(Relaxed, Relaxed, |t| t.checked_add(1))
            .map_err(|_| PoolError::TooManyPools)?;
        // SAFETY: `layout` has a non-zero size (count >= 1, buf_size >= 64).
        let base = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(base).ok_or(PoolError::OutOfMemory)?;
        // Reverse order so that the first allocations get ids 0, 1, 2...
        let free = (0..count).rev().collect();
        Ok(Self {
            base,
            layout,
            shift: buf_size.trailing_zeros(),
            count,
            tag,
            free: Mutex::new(free),
            exhaustions: AtomicU64::new(0),
        })
    }

    fn free_list(&self) -> MutexGuard<'_, Vec<u32>> {
        // The critical sections cannot panic half-way (push within
        // capacity, pop, truncate), so a poisoned list is still consistent.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one free buffer, or `None` if the pool is empty (counted in
    /// [`exhaustions`](Self::exhaustions)).
    #[must_use]
    pub fn alloc(&self) -> Option<Buf> {
        let id = self.free_list().pop();
        if id.is_none() {
            self.exhaustions.fetch_add(1, Relaxed);
        }
        id.map(|id| Buf { id, tag: self.tag })
    }

    /// Appends up to `n` buffers to `out` under one lock and returns how
    /// many; fewer than `n` (the pool ran dry) counts one exhaustion.
    ///
    /// Does not allocate if `out` has room for `n` more.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::BufferPool;
    ///
    /// let pool = BufferPool::new(8, 2048)?;
    /// let mut bufs = Vec::with_capacity(16);
    /// assert_eq!(pool.alloc_batch(16, &mut bufs), 8);
    /// assert_eq!(pool.exhaustions(), 1);
    /// pool.free_batch(bufs.drain(..));
    /// # Ok::<(), kevent_net::PoolError>(())
    /// ```
    pub fn alloc_batch(&self, n: usize, out: &mut Vec<Buf>) -> usize {
        let mut free = self.free_list();
        let k = n.min(free.len());
        let from = free.len() - k;
        out.extend(free.drain(from..).rev().map(|id| Buf { id, tag: self.tag }));
        drop(free);
        if k < n {
            self.exhaustions.fetch_add(1, Relaxed);
        }
        k
    }

    /// Appends up to `n` free buffer ids to `out` under one lock and returns
    /// how many; fewer than `n` counts one exhaustion. The ids are owned by
    /// the caller as if [`Buf::into_raw`] had produced them (for a receive
    /// path handing them to the kernel); give them back with
    /// [`free_raw_batch`](Self::free_raw_batch).
    ///
    /// Does not allocate if `out` has room for `n` more.
    pub fn alloc_raw_batch(&self, n: usize, out: &mut Vec<u32>) -> usize {
        let mut free = self.free_list();
        let k = n.min(free.len());
        let from = free.len() - k;
        out.extend(free.drain(from..).rev());
        drop(free);
        if k < n {
            self.exhaustions.fetch_add(1, Relaxed);
        }
        k
    }

    /// Returns one buffer to the pool.
    ///
    /// A token of another pool is not taken (it is leaked): returning it
    /// here would let this pool hand out a buffer it does not own.
    pub fn free(&self, buf: Buf) {
        self.free_batch([buf]);
    }

    /// Returns buffers in a batch, under one lock.
    ///
    /// Tokens of another pool are dropped (leaked) rather than returned;
    /// the count of tokens actually returned is the result.
    pub fn free_batch<I: IntoIterator<Item = Buf>>(&self, bufs: I) -> usize {
        let mut free = self.free_list();
        let mut n = 0;
        for buf in bufs {
            if buf.tag == self.tag {
                debug_assert!(free.len() < self.count as usize, "more frees than buffers");
                free.push(buf.id);
                n += 1;
            }
        }
        n
    }

    /// Returns buffers by raw id, under one lock (for ids coming back
    /// from a channel or the kernel without being reclaimed first).
    ///
    /// # Errors
    ///
    /// [`PoolError::ForeignBuffer`] for the first out-of-range id; no id is
    /// returned in that case.
    ///
    /// # Safety
    ///
    /// Each id must come from [`Buf::into_raw`] of a token of this pool
    /// (or be a buffer the kernel completed), must not have been reclaimed
    /// or freed since, and must appear once: after this call the caller
    /// must not use these ids.
    pub unsafe fn free_raw_batch(&self, ids: &[u32]) -> Result<(), PoolError> {
        if let Some(&bad) = ids.iter().find(|&&id| id >= self.count) {
            return Err(PoolError::ForeignBuffer(bad));
        }
        let mut free = self.free_list();
        debug_assert!(
            free.len() + ids.len() <= self.count as usize,
            "free {} + {} > count {}",
            free.len(),
            ids.len(),
            self.count
        );
        free.extend_from_slice(ids);
        Ok(())
    }

    /// Reclaims the token of a buffer from its raw id.
    ///
    /// # Errors
    ///
    /// [`PoolError::ForeignBuffer`] if `id` is out of range.
    ///
    /// # Safety
    ///
    /// `id` must come from [`Buf::into_raw`] of a token of this pool (or be
    /// a buffer of this pool the kernel completed) and must not have been
    /// reclaimed or freed since: two tokens of one buffer would allow two
    /// mutable views.
    pub unsafe fn from_raw(&self, id: u32) -> Result<Buf, PoolError> {
        if id >= self.count {
            return Err(PoolError::ForeignBuffer(id));
        }
        Ok(Buf { id, tag: self.tag })
    }

    #[inline]
    fn check(&self, buf: &Buf) -> Result<*mut u8, PoolError> {
        if buf.tag != self.tag || buf.id >= self.count {
            return Err(PoolError::ForeignBuffer(buf.id));
        }
        let off = (buf.id as usize) << self.shift;
        debug_assert!(
            off + self.buf_size() <= self.layout.size(),
            "id {} offset {off} region {}",
            buf.id,
            self.layout.size()
        );
        // SAFETY: `id < count`, so `off + buf_size <= count * buf_size`,
        // the region's length.
        Ok(unsafe { self.base.as_ptr().add(off) })
    }

    /// The whole buffer (`buf_size` bytes) behind a token, read-only.
    ///
    /// # Errors
    ///
    /// [`PoolError::ForeignBuffer`] if the token is of another pool.
    #[inline]
    pub fn bytes<'a>(&'a self, buf: &'a Buf) -> Result<&'a [u8], PoolError> {
        let p = self.check(buf)?;
        // SAFETY: `p..p + buf_size` is inside the region (`check`); the
        // token is this pool's and unique, and `&Buf` prevents a mutable
        // view through it for `'a`.
        Ok(unsafe { std::slice::from_raw_parts(p, self.buf_size()) })
    }

    /// The whole buffer (`buf_size` bytes) behind a token, writable.
    ///
    /// # Errors
    ///
    /// [`PoolError::ForeignBuffer`] if the token is of another pool.
    ///
    /// # Examples
    ///
    /// ```
    /// use kevent_net::BufferPool;
    ///
    /// let pool = BufferPool::new(4, 2048)?;
    /// let mut b = pool.alloc().unwrap();
    /// pool.bytes_mut(&mut b)?[0] = 0x45;
    /// assert_eq!(pool.bytes(&b)?[0], 0x45);
    /// pool.free(b);
    /// # Ok::<(), kevent_net::PoolError>(())
    /// ```
    #[inline]
    pub fn bytes_mut<'a>(&'a self, buf: &'a mut Buf) -> Result<&'a mut [u8], PoolError> {
        let p = self.check(buf)?;
        // SAFETY: in the region (`check`); the token is this pool's and
        // unique, and `&mut Buf` makes this the only view for `'a`.
        Ok(unsafe { std::slice::from_raw_parts_mut(p, self.buf_size()) })
    }

    /// Base address of the region, for registration with the kernel
    /// (io_uring provided-buffer ring: buffer `id` is at
    /// `as_ptr() + id * buf_size()`). Page-aligned.
    ///
    /// The pointer is valid for [`region_len`](Self::region_len) bytes
    /// while the pool lives. Writing through it is allowed only to buffers
    /// the writer owns (a kernel receive into a buffer handed to it).
    #[must_use]
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Length of the region in bytes (`count * buf_size`).
    #[must_use]
    pub fn region_len(&self) -> usize {
        self.layout.size()
    }

    /// Size of one buffer in bytes.
    #[must_use]
    pub fn buf_size(&self) -> usize {
        1 << self.shift
    }

    /// Number of buffers in the pool.
    #[must_use]
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Buffers free right now.
    #[must_use]
    pub fn available(&self) -> usize {
        self.free_list().len()
    }

    /// Times an allocation found the pool empty (an `alloc` that returned
    /// `None`, or an `alloc_batch` that got fewer than asked).
    #[must_use]
    pub fn exhaustions(&self) -> u64 {
        self.exhaustions.load(Relaxed)
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        // SAFETY: `base` was allocated in `new` with `self.layout` and is
        // freed once; tokens outliving the pool cannot reach the memory
        // (every access needs `&self`).
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_checked() {
        assert!(BufferPool::new(0, 2048).is_err());
        assert!(BufferPool::new(4, 1500).is_err());
        assert!(BufferPool::new(4, 32).is_err());
        assert!(BufferPool::new(4, MAX_BUF_SIZE * 2).is_err());
        let p = BufferPool::new(3, 2048).unwrap();
        assert_eq!(p.region_len(), 3 * 2048);
        assert_eq!(p.as_ptr() as usize % REGION_ALIGN, 0);
    }

    #[test]
    fn ids_are_distinct_and_in_range() {
        let p = BufferPool::new(16, 64).unwrap();
        let mut v = Vec::new();
        assert_eq!(p.alloc_batch(16, &mut v), 16);
        let mut ids: Vec<u32> = v.iter().map(Buf::id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..16).collect::<Vec<_>>());
        assert_eq!(p.free_batch(v), 16);
    }

    #[test]
    fn foreign_tokens_are_refused() {
        let a = BufferPool::new(2, 64).unwrap();
        let b = BufferPool::new(2, 64).unwrap();
        let mut t = a.alloc().unwrap();
        assert_eq!(
            b.bytes_mut(&mut t).unwrap_err(),
            PoolError::ForeignBuffer(t.id())
        );
        assert_eq!(b.free_batch([t]), 0);
        assert_eq!(b.available(), 2);
    }
}
