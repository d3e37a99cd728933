//! The receive buffers of [`Aio::recv_pooled`](super::Aio::recv_pooled):
//! `count` buffers of `size` bytes in one anonymous mapping.
//!
//! # Two modes, one owner rule
//!
//! - **Ring** (io_uring): the free buffers are published in a
//!   provided-buffer ring (`io_uring_buf_ring`, registered with the queue's
//!   ring). The kernel picks one per receive and names it in the
//!   completion (`IORING_CQE_F_BUFFER`); from publication until that
//!   completion the buffer is the kernel's. `count` is the ring's size, so
//!   the ring can never overflow: a buffer is published again only after a
//!   completion handed it back to us (at most `count - 1` others are then
//!   in the ring).
//! - **List** (epoll): a plain free list; the storage takes a buffer
//!   before each `recv(2)` and the buffer is never out of our hands.
//!
//! Either way a buffer taken out is owned by exactly one of: a queued
//! result, a [`PooledBuf`](super::PooledBuf) the user holds, or (ring
//! mode) the kernel. `put` is the only way back.

use crate::bufring::{BufRing, Map};
use std::io;

/// Which side keeps the free buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The kernel's provided-buffer ring, group `bgid`.
    Ring { bgid: u16 },
    /// Our free list (epoll).
    List,
}

/// The buffers (see the module docs). Lives in the AIO table, under its
/// lock: every method runs with it held.
#[derive(Debug)]
pub(super) struct Pool {
    bufs: Map,
    ring: Option<BufRing>,
    count: u16,
    size: u32,
    mode: Mode,
    /// Ring mode: the next slot we publish (our copy of the tail).
    tail: u16,
    /// List mode: free buffer ids.
    free: Vec<u16>,
    /// Buffers out of the pool (queued results, users' hands, and in list
    /// mode nothing else). Ring mode: `count - out` are in the ring.
    out: u32,
}

/// Largest buffer a pool hands out (and the kernel's `len` is a u32).
pub(super) const MAX_SIZE: u32 = 1 << 20;
/// Most buffers per pool (a provided-buffer ring holds at most 32768).
pub(super) const MAX_COUNT: u16 = 1 << 15;

impl Pool {
    /// `count` (a power of two ≤ 32768) buffers of `size` (1..=1 MiB)
    /// bytes. Ring mode only allocates the ring; [`Pool::publish_all`]
    /// fills it once registered.
    pub(super) fn new(count: u16, size: u32, ring: bool) -> io::Result<Pool> {
        if !valid(count, size) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let bytes = usize::from(count) * size as usize;
        Ok(Pool {
            bufs: Map::new(bytes, false)?,
            ring: if ring {
                Some(BufRing::new(count)?)
            } else {
                None
            },
            count,
            size,
            mode: Mode::List,
            tail: 0,
            free: if ring {
                Vec::new()
            } else {
                (0..count).rev().collect()
            },
            out: 0,
        })
    }

    /// The ring's address and size, to register (ring mode).
    pub(super) fn ring_addr(&self) -> Option<(u64, u16)> {
        self.ring.as_ref().map(|r| (r.as_addr(), self.count))
    }

    /// The ring is registered as group `bgid`: publish every buffer.
    pub(super) fn publish_all(&mut self, bgid: u16) {
        self.mode = Mode::Ring { bgid };
        for bid in 0..self.count {
            self.write_slot(bid);
        }
        self.store_tail();
    }

    pub(super) fn mode(&self) -> Mode {
        self.mode
    }

    pub(super) fn size(&self) -> u32 {
        self.size
    }

    pub(super) fn count(&self) -> u16 {
        self.count
    }

    /// Buffers a receive could get now.
    pub(super) fn available(&self) -> u32 {
        u32::from(self.count) - self.out
    }

    /// The start of buffer `bid` (`bid < count`).
    pub(super) fn addr(&self, bid: u16) -> *mut u8 {
        debug_assert!(bid < self.count, "bid {bid} of {}", self.count);
        // SAFETY: `bid < count`, so the offset stays inside the mapping of
        // `count * size` bytes.
        unsafe {
            self.bufs
                .as_ptr()
                .add(usize::from(bid) * self.size as usize)
        }
    }

    /// List mode: take a free buffer.
    pub(super) fn take(&mut self) -> Option<u16> {
        let bid = self.free.pop()?;
        self.out += 1;
        Some(bid)
    }

    /// Ring mode: a completion handed buffer `bid` to us. Returns false
    /// for an id this pool never published (a kernel bug or a stray CQE:
    /// the id is ignored).
    pub(super) fn taken_by_kernel(&mut self, bid: u16) -> bool {
        if bid >= self.count || self.out >= u32::from(self.count) {
            return false;
        }
        self.out += 1;
        true
    }

    /// Give buffer `bid` back: to the kernel's ring or the free list.
    pub(super) fn put(&mut self, bid: u16) {
        if bid >= self.count || self.out == 0 {
            debug_assert!(false, "put of bid {bid} (out {})", self.out);
            return;
        }
        self.out -= 1;
        match self.mode {
            Mode::Ring { .. } => {
                self.write_slot(bid);
                self.store_tail();
            }
            Mode::List => self.free.push(bid),
        }
    }

    /// Write `bid` into the slot at our tail and advance it (not yet
    /// visible to the kernel: see `store_tail`). At most `count - 1`
    /// buffers are published when one is ours to write, so the slot is not
    /// the kernel's.
    fn write_slot(&mut self, bid: u16) {
        let Some(ring) = &self.ring else { return };
        ring.write(self.tail, self.addr(bid) as u64, self.size, bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publish the slots written so far.
    fn store_tail(&self) {
        if let Some(ring) = &self.ring {
            ring.publish(self.tail);
        }
    }

    /// The kernel may still write into the buffers (the queue went away
    /// with receives in flight): never unmap them, nor the ring.
    pub(super) fn leak(&mut self) {
        self.bufs.leak();
        if let Some(r) = &mut self.ring {
            r.leak();
        }
    }
}

/// Whether `count` buffers of `size` bytes make a valid pool.
pub(super) fn valid(count: u16, size: u32) -> bool {
    count.is_power_of_two() && count <= MAX_COUNT && (1..=MAX_SIZE).contains(&size)
}
