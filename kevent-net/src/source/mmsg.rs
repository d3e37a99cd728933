//! The epoll-side receive path: `recvmmsg(2)` batches (or one
//! `recvfrom(2)` per datagram) straight into pool buffers.
//!
//! `armed` holds the buffer ids of the next batch, taken from the pool
//! ahead of time; message `i` of a batch reads its name into
//! `armed[i] + NAME_OFFSET` and its payload into `armed[i] + HEADROOM`.
//! The headers and iovecs are allocated once, at construction.

use std::io;
use std::os::fd::RawFd;

use super::{Sink, HEADROOM, NAME_LEN, NAME_OFFSET};

/// Batches per poll: bounds the time one poll keeps the thread.
const MAX_BATCHES: usize = 16;

pub(crate) struct MmsgRx {
    batch: usize,
    per_packet: bool,
    /// Buffer ids owned by the source, armed for the next batch.
    armed: Vec<u32>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `hdrs`/`iovs` point into the pool's region
// (kept alive by the sink's `Arc`) and into `iovs`; they are rewritten
// before every syscall and never dereferenced by this code.
unsafe impl Send for MmsgRx {}

impl MmsgRx {
    pub(crate) fn new(batch: usize, per_packet: bool) -> Self {
        // SAFETY: mmsghdr and iovec are plain C structs; all-zero is valid
        // (null pointers, zero lengths).
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            batch,
            per_packet,
            armed: Vec::with_capacity(batch),
            hdrs: vec![zero_hdr; batch],
            iovs: vec![zero_iov; batch],
        }
    }

    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    pub(crate) fn per_packet(&self) -> bool {
        self.per_packet
    }

    pub(crate) fn armed(&self) -> usize {
        self.armed.len()
    }

    /// Tops `armed` up to a full batch; `false` if it stays empty.
    fn refill(&mut self, sink: &mut Sink) -> bool {
        let want = self.batch - self.armed.len();
        if want > 0 && sink.pool.alloc_raw_batch(want, &mut self.armed) < want {
            sink.stats.pool_empty += 1;
        }
        !self.armed.is_empty()
    }

    pub(crate) fn poll(&mut self, fd: RawFd, sink: &mut Sink) -> io::Result<()> {
        for _ in 0..MAX_BATCHES {
            if !self.refill(sink) {
                sink.outcome.starved = true;
                return Ok(());
            }
            let n = if self.per_packet {
                self.recv_one(fd, sink)?
            } else {
                self.recv_batch(fd, sink)?
            };
            let k = self.armed.len();
            if n < k {
                return Ok(()); // drained (or an error was counted)
            }
        }
        Ok(())
    }

    /// One `recvmmsg`; returns the number of datagrams it took (0 on
    /// `EAGAIN` or a counted error).
    fn recv_batch(&mut self, fd: RawFd, sink: &mut Sink) -> io::Result<usize> {
        let k = self.armed.len();
        let cap = sink.pool.buf_size() - HEADROOM;
        for i in 0..k {
            let base = sink.buf_addr(self.armed[i]);
            // SAFETY: offsets inside the buffer (buf_size >= 2 * HEADROOM).
            let (name, data) = unsafe { (base.add(NAME_OFFSET), base.add(HEADROOM)) };
            self.iovs[i] = libc::iovec {
                iov_base: data.cast(),
                iov_len: cap,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = name.cast();
            h.msg_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
            h.msg_hdr.msg_iov = std::ptr::from_mut(&mut self.iovs[i]);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        sink.stats.syscalls += 1;
        // SAFETY: `hdrs[..k]` are initialised headers whose name and iovec
        // point into buffers `armed[..k]`, owned by the source, with the
        // lengths given; `k <= batch <= 1024` fits a c_uint.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                k as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            count_error(sink, &e);
            return Ok(0);
        }
        let n = r as usize;
        for i in 0..n {
            let h = &self.hdrs[i];
            let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            sink.deliver(
                self.armed[i],
                h.msg_len as usize,
                h.msg_hdr.msg_namelen as usize,
                truncated,
                self.iovs[i].iov_base.cast_const().cast(),
            );
        }
        self.armed.drain(..n);
        Ok(n)
    }

    /// One `recvfrom`; returns 1 if it took a datagram.
    fn recv_one(&mut self, fd: RawFd, sink: &mut Sink) -> io::Result<usize> {
        let id = self.armed[0];
        let base = sink.buf_addr(id);
        let cap = sink.pool.buf_size() - HEADROOM;
        let mut namelen = NAME_LEN as libc::socklen_t;
        // SAFETY: `HEADROOM < buf_size`: inside buffer `id`.
        let data = unsafe { base.add(HEADROOM) };
        sink.stats.syscalls += 1;
        // SAFETY: payload and name pointers lie inside buffer `id`, owned by
        // the source, with `cap` and `NAME_LEN` bytes of room.
        // `MSG_TRUNC` makes the result the datagram's real length.
        let r = unsafe {
            libc::recvfrom(
                fd,
                data.cast(),
                cap,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                base.add(NAME_OFFSET).cast(),
                &mut namelen,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            count_error(sink, &e);
            return Ok(0);
        }
        let len = r as usize;
        sink.deliver(id, len, namelen as usize, len > cap, data);
        self.armed.swap_remove(0);
        Ok(1)
    }

    /// Returns the armed buffers to the pool.
    pub(crate) fn release(&mut self, sink: &mut Sink) {
        sink.drops.append(&mut self.armed);
    }
}

/// Counts a receive error; `EAGAIN`/`EINTR` are not errors.
pub(super) fn count_error(sink: &mut Sink, e: &io::Error) {
    if !matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    ) {
        sink.stats.errors += 1;
        sink.last_error = e.raw_os_error();
    }
}
