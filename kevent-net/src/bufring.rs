//! The memory an io_uring receive picks its buffers from, shared by the
//! packet source's multishot `recvmsg` ([`crate::source`]) and AIO's pooled
//! receives ([`crate::aio`]): an anonymous mapping ([`Map`]) and a
//! provided-buffer ring of `io_uring_buf` slots in one ([`BufRing`]).
//!
//! The ring keeps no index of its own: its owner counts the slots it wrote
//! (its copy of the tail) and publishes them with [`BufRing::publish`].

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering::Release};

/// A private anonymous read/write mapping, unmapped on drop unless
/// [`leak`](Map::leak)ed.
#[derive(Debug)]
pub(crate) struct Map {
    ptr: NonNull<u8>,
    len: usize,
    leak: bool,
}

// SAFETY: plain memory owned by this value; who may touch which part of it
// is up to the owner (every user keeps it behind `&mut self` or a lock).
unsafe impl Send for Map {}

impl Map {
    /// `len` bytes, zeroed; `populate` faults them in at once.
    pub(crate) fn new(len: usize, populate: bool) -> io::Result<Map> {
        let flags =
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: an anonymous private mapping with no address hint and no
        // fd; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast())
            .map(|ptr| Map {
                ptr,
                len,
                leak: false,
            })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }

    /// The start of the mapping.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Never unmap: the kernel may still use the memory.
    pub(crate) fn leak(&mut self) {
        self.leak = true;
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: the mapping made in `new`, unmapped once; its owner has
        // not leaked it, so nothing (kernel included) uses it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `struct io_uring_buf`: one slot of a provided-buffer ring; the tail
/// lives in slot 0's `resv`.
#[repr(C)]
struct RingBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RingBuf>() == 16);

/// A provided-buffer ring (`io_uring_buf_ring`) of `entries` slots, to
/// register with `IORING_REGISTER_PBUF_RING`.
#[derive(Debug)]
pub(crate) struct BufRing {
    map: Map,
    entries: u16,
}

impl BufRing {
    /// A zeroed ring of `entries` (a power of two) slots.
    pub(crate) fn new(entries: u16) -> io::Result<BufRing> {
        debug_assert!(entries.is_power_of_two());
        let len = (usize::from(entries) * std::mem::size_of::<RingBuf>()).max(4096);
        Ok(BufRing {
            map: Map::new(len, true)?,
            entries,
        })
    }

    /// The ring's address, to register.
    pub(crate) fn as_addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Slot `pos & mask`.
    fn slot(&self, pos: u16) -> *mut RingBuf {
        let i = usize::from(pos & (self.entries - 1));
        // SAFETY: `i < entries`: inside the mapping.
        unsafe { self.map.as_ptr().cast::<RingBuf>().add(i) }
    }

    /// Writes slot `pos & mask` (not its `resv`, which is the tail when
    /// `pos & mask == 0`); the kernel sees it once [`BufRing::publish`]ed.
    pub(crate) fn write(&self, pos: u16, addr: u64, len: u32, bid: u16) {
        let s = self.slot(pos);
        // SAFETY: inside the mapping; the slot is not yet published (it
        // lies at or past the tail), so the kernel does not read it; fields
        // are written one by one to leave `resv` alone.
        unsafe {
            std::ptr::addr_of_mut!((*s).addr).write(addr);
            std::ptr::addr_of_mut!((*s).len).write(len);
            std::ptr::addr_of_mut!((*s).bid).write(bid);
        }
    }

    /// Publishes the slots written before `tail`.
    pub(crate) fn publish(&self, tail: u16) {
        // SAFETY: `resv` of slot 0 is a 2-aligned u16 inside the mapping,
        // only ever accessed atomically by us and the kernel.
        let t = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.slot(0)).resv)) };
        // Release: the slot writes are visible before the kernel sees the
        // new tail (liburing's io_uring_buf_ring_advance).
        t.store(tail, Release);
    }

    /// The address in slot `pos & mask`: what the kernel was given.
    pub(crate) fn addr(&self, pos: u16) -> u64 {
        // SAFETY: inside the mapping; the kernel only reads the slots.
        unsafe { std::ptr::addr_of!((*self.slot(pos)).addr).read() }
    }

    /// The buffer id in slot `pos & mask`.
    pub(crate) fn bid(&self, pos: u16) -> u16 {
        // SAFETY: inside the mapping; read only once the kernel no longer
        // uses the ring (after unregistering) or for a slot we wrote.
        unsafe { std::ptr::addr_of!((*self.slot(pos)).bid).read() }
    }

    /// Never unmap: the kernel may still use the ring.
    pub(crate) fn leak(&mut self) {
        self.map.leak();
    }
}
