//! `PacketSource`: a UDP socket feeding the [`Classifier`] into channels,
//! with the packet bytes written once, by the kernel, into
//! [`BufferPool`] buffers; and [`BatchSender`], the `sendmmsg` side.
//!
//! # Receive paths ([`RecvMode`])
//!
//! - [`RecvMode::Multishot`] (io_uring): the source owns a small ring of its
//!   own (kevent's backend ring is internal) with one multishot
//!   `IORING_OP_RECVMSG` reading into a provided-buffer ring
//!   (`IORING_REGISTER_PBUF_RING`) filled from the pool. `RECVMSG`, not
//!   `RECV`: a UDP flow is classified by its source address, which only
//!   `recvmsg` reports. The multishot request ends on `-ENOBUFS` (the
//!   buffer ring ran dry) or an error; it is re-armed on the next
//!   [`PacketSource::poll`] once the ring has buffers again. A buffer in
//!   the buffer ring belongs to the kernel until a completion names it;
//!   dropping the source cancels the request and waits for its final
//!   completion before the unconsumed buffers go back to the pool.
//! - [`RecvMode::Mmsg`] (epoll): `recvmmsg(2)` batches, each message's
//!   `iovec` pointing straight into a pool buffer.
//! - [`RecvMode::PerPacket`]: one `recvfrom(2)` per datagram, into a pool
//!   buffer (the baseline of `benches/packets.rs`).
//!
//! Every mode leaves the same layout in a buffer, so consumers need not
//! know which one filled it:
//!
//! ```text
//! 0        16                      64
//! | hdr 16 | source sockaddr (48)  | payload (desc.len bytes) ...
//! ```
//!
//! (`hdr` is io_uring's `io_uring_recvmsg_out`; the other modes leave it
//! alone.) [`payload`] and [`source_addr`] read the two parts.
//!
//! # Threads and queues
//!
//! The source is polled by one thread. Register it in a kevent queue with
//! [`PacketSource::register`]: a level-triggered `READ` knote on
//! [`PacketSource::fd`] (the socket, or the source's ring fd, which is
//! readable while completions are pending), then call `poll` on its event.
//! On io_uring, completions are posted by task work of the thread that
//! armed the request: poll from the thread that created the source.
//!
//! # Back-pressure
//!
//! An empty pool or a full channel is counted in [`SourceStats`] (and the
//! classifier's per-flow drops), never an error: datagrams the source has
//! no buffer for stay in the socket's receive queue until the next poll
//! finds buffers (the kernel drops them when that queue overflows).
//!
//! # Memory
//!
//! Pool buffers are provided to the kernel by address; they are not
//! registered (pinned), so only the buffer ring itself (16 bytes per entry,
//! at most 32768 entries) counts against `RLIMIT_MEMLOCK` (8 MiB here).
//! Why registering the pool would buy nothing on this path is in the
//! [`BufferPool`] docs.

mod mmsg;
mod send;
mod uring;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use kevent_core::{note, Backend, Filter, Flags, Kevent, Kqueue};

use crate::{BufferPool, Classifier, FlowKey, PacketDesc, Producer};

pub use send::{BatchSender, SendStats};

/// Offset of the source `sockaddr` in a received buffer.
pub const NAME_OFFSET: usize = 16;
/// Room reserved for the source `sockaddr` (a `sockaddr_in6` is 28 bytes;
/// the rest pads the payload to a cache line).
pub const NAME_LEN: usize = 48;
/// Offset of the payload in a received buffer.
pub const HEADROOM: usize = NAME_OFFSET + NAME_LEN;

/// Entries in the trace of recent receives (see [`PacketSource::trace`]).
pub const TRACE_LEN: usize = 256;

/// The payload of a received packet: `len` bytes from [`HEADROOM`] of the
/// buffer's bytes (`BufferPool::bytes`), or `None` if they do not fit.
#[must_use]
#[inline]
pub fn payload(buf: &[u8], len: u32) -> Option<&[u8]> {
    buf.get(HEADROOM..HEADROOM.checked_add(len as usize)?)
}

/// The source address the kernel wrote into a received buffer, if it is
/// an IPv4 or IPv6 `sockaddr`.
#[must_use]
pub fn source_addr(buf: &[u8]) -> Option<SocketAddr> {
    parse_sockaddr(buf.get(NAME_OFFSET..HEADROOM)?)
}

/// Parses a `sockaddr_in`/`sockaddr_in6` in its kernel layout.
pub(crate) fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*b.first()?, *b.get(1)?]);
    let port = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// How a [`PacketSource`] receives.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvMode {
    /// io_uring multishot `recvmsg` into a provided-buffer ring of
    /// `ring_entries` buffers (a power of two, at most 32768).
    Multishot {
        /// Buffers kept in the kernel's buffer ring.
        ring_entries: u16,
    },
    /// `recvmmsg(2)` batches of up to `batch` datagrams.
    Mmsg {
        /// Datagrams per syscall (at most 1024, `UIO_MAXIOV`).
        batch: u16,
    },
    /// One `recvfrom(2)` per datagram.
    PerPacket,
}

impl RecvMode {
    /// The mode for a queue's backend: `Multishot` (256 buffers) on
    /// io_uring, `Mmsg` (64 per batch) otherwise.
    #[must_use]
    pub fn for_backend(b: Backend) -> Self {
        match b {
            Backend::IoUring => RecvMode::Multishot { ring_entries: 256 },
            _ => RecvMode::Mmsg { batch: 64 },
        }
    }
}

/// Counters of a [`PacketSource`]. Every drop reason is counted here;
/// nothing on the receive path panics or fails for lack of room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Datagrams delivered to a channel.
    pub packets: u64,
    /// Payload bytes delivered to a channel.
    pub bytes: u64,
    /// Receive syscalls (`recvmmsg`, `recvfrom`, `io_uring_enter`).
    pub syscalls: u64,
    /// Times the source wanted buffers and the pool had none (or fewer).
    pub pool_empty: u64,
    /// Datagrams dropped because their channel was full.
    pub channel_full: u64,
    /// Datagrams dropped because their channel has no producer.
    pub no_producer: u64,
    /// Datagrams dropped because they did not fit a buffer.
    pub truncated: u64,
    /// Datagrams dropped because the source address was unreadable.
    pub bad_addr: u64,
    /// Multishot requests armed (the first one included).
    pub arms: u64,
    /// Multishot requests that ended with `-ENOBUFS`.
    pub enobufs: u64,
    /// Receive errors other than `EAGAIN`/`EINTR`/`ENOBUFS` (the last one
    /// is in [`PacketSource::last_error`]).
    pub errors: u64,
}

/// What one [`PacketSource::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Datagrams delivered to channels.
    pub delivered: usize,
    /// Datagrams dropped (full channel, no producer, truncated, bad address).
    pub dropped: usize,
    /// `true` if the source ran out of buffers: more datagrams may wait in
    /// the socket; poll again after consumers free buffers.
    pub starved: bool,
}

/// The dispatch half shared by every receive path: classify, push, count.
pub(crate) struct Sink {
    pub(crate) pool: Arc<BufferPool>,
    pub(crate) classifier: Classifier,
    pub(crate) producers: Vec<Option<Producer>>,
    pub(crate) local: SocketAddr,
    pub(crate) stats: SourceStats,
    /// Buffer ids dropped during this poll, freed in one batch.
    pub(crate) drops: Vec<u32>,
    trace: Box<[(u32, usize); TRACE_LEN]>,
    trace_next: usize,
    pub(crate) last_error: Option<i32>,
    pub(crate) outcome: PollOutcome,
}

impl Sink {
    /// Address of buffer `id`'s first byte.
    #[inline]
    pub(crate) fn buf_addr(&self, id: u32) -> *mut u8 {
        debug_assert!(id < self.pool.count(), "id {id}");
        // SAFETY: `id < count`, so the offset is inside the region.
        unsafe { self.pool.as_ptr().add((id as usize) * self.pool.buf_size()) }
    }

    /// Handles one datagram the kernel wrote into buffer `id`: `len`
    /// payload bytes at `HEADROOM`, the source address at `NAME_OFFSET`
    /// (`namelen` bytes of it valid). The buffer is owned by the source.
    ///
    /// `kaddr` is where the kernel was told to write the payload, taken
    /// from what was handed to it (the `iovec`, or the buffer-ring entry
    /// and the `recvmsg` layout), not recomputed from `id`: it goes to the
    /// trace, so a test can check the consumer reads that very memory.
    #[inline]
    pub(crate) fn deliver(
        &mut self,
        id: u32,
        len: usize,
        namelen: usize,
        truncated: bool,
        kaddr: *const u8,
    ) {
        let cap = self.pool.buf_size() - HEADROOM;
        if truncated || len > cap {
            self.stats.truncated += 1;
            self.drop_buf(id);
            return;
        }
        let base = self.buf_addr(id);
        // SAFETY: the name field lies inside buffer `id`, which the source
        // owns (the kernel's final write to it completed); nobody else has a
        // view of it.
        let name =
            unsafe { std::slice::from_raw_parts(base.add(NAME_OFFSET), namelen.min(NAME_LEN)) };
        let Some(src) = parse_sockaddr(name) else {
            self.stats.bad_addr += 1;
            self.drop_buf(id);
            return;
        };
        let i = self.trace_next % TRACE_LEN;
        self.trace[i] = (id, kaddr.addr());
        self.trace_next = self.trace_next.wrapping_add(1);
        let key = FlowKey::udp(src, self.local);
        let desc = PacketDesc::new(id, len as u32, 0);
        let route = self.classifier.classify(&key);
        let desc = PacketDesc {
            flow: route.flow,
            ..desc
        };
        match self
            .producers
            .get_mut(route.channel)
            .and_then(Option::as_mut)
        {
            Some(tx) => match tx.push(desc) {
                Ok(()) => {
                    self.stats.packets += 1;
                    self.stats.bytes += len as u64;
                    self.outcome.delivered += 1;
                }
                Err(_) => {
                    self.classifier.record_drop(route.flow);
                    self.stats.channel_full += 1;
                    self.drop_buf(id);
                }
            },
            None => {
                self.classifier.record_drop(route.flow);
                self.stats.no_producer += 1;
                self.drop_buf(id);
            }
        }
    }

    #[inline]
    fn drop_buf(&mut self, id: u32) {
        self.outcome.dropped += 1;
        if self.drops.len() == self.drops.capacity() {
            self.flush_drops();
        }
        self.drops.push(id);
    }

    /// Returns the buffers dropped so far to the pool.
    pub(crate) fn flush_drops(&mut self) {
        if self.drops.is_empty() {
            return;
        }
        // SAFETY: every id in `drops` is a buffer the source owned (taken
        // from the pool and completed by the kernel, or never handed out)
        // and pushed here once.
        let r = unsafe { self.pool.free_raw_batch(&self.drops) };
        debug_assert!(r.is_ok(), "{r:?}");
        self.drops.clear();
    }
}

enum Rx {
    Uring(Box<uring::UringRx>),
    Mmsg(mmsg::MmsgRx),
}

/// A UDP socket feeding a [`Classifier`] into channels; see the module
/// docs.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use kevent_net::{channel, BufferPool, Classifier, PacketSource, RecvMode};
///
/// let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let pool = Arc::new(BufferPool::new(64, 2048)?);
/// let mut src = PacketSource::new(sock, Arc::clone(&pool), Classifier::new(1, 0)?,
///                                 RecvMode::Mmsg { batch: 16 })?;
/// let (tx, mut rx) = channel(64)?;
/// src.set_producer(0, tx)?; // the default channel
///
/// let peer = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// peer.send_to(b"hello", src.local_addr())?;
/// while src.poll()?.delivered == 0 {}
/// let d = rx.pop()?;
/// // SAFETY: the id came from the source through the channel, once.
/// let buf = unsafe { pool.from_raw(d.buf) }?;
/// let bytes = pool.bytes(&buf)?;
/// assert_eq!(kevent_net::source::payload(bytes, d.len), Some(&b"hello"[..]));
/// assert_eq!(kevent_net::source::source_addr(bytes), Some(peer.local_addr()?));
/// pool.free(buf);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PacketSource {
    // Field order is drop order, and it matters: `rx` (the io_uring ring
    // the kernel receives through) must go before `sink`, which holds the
    // `Arc<BufferPool>` whose memory the kernel writes into. Were `sink`
    // first, dropping the last handle of the pool would free the region
    // while the ring (and a receive the cancel could not stop) still
    // points into it.
    rx: Rx,
    sink: Sink,
    sock: OwnedFd,
}

impl fmt::Debug for PacketSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PacketSource")
            .field("local", &self.sink.local)
            .field("mode", &self.mode())
            .field("stats", &self.sink.stats)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl PacketSource {
    /// A source on `sock` (made non-blocking) receiving into `pool`,
    /// routing with `classifier`. Producers are attached per channel
    /// index with [`set_producer`](Self::set_producer).
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a pool whose buffers cannot hold the layout
    /// (smaller than 128 bytes), a `Multishot` pool of more than 65536
    /// buffers (buffer ids are 16-bit there) or bad mode parameters;
    /// `OutOfMemory` if the table of the classifier's channels cannot be
    /// allocated (an absurd channel count); `Unsupported` if io_uring or
    /// buffer rings are unavailable; the OS error of setting up the socket
    /// or ring.
    pub fn new(
        sock: std::net::UdpSocket,
        pool: Arc<BufferPool>,
        classifier: Classifier,
        mode: RecvMode,
    ) -> io::Result<Self> {
        if pool.buf_size() < 2 * HEADROOM {
            return Err(invalid("pool buffers must be at least 128 bytes"));
        }
        sock.set_nonblocking(true)?;
        let local = sock.local_addr()?;
        let sock = OwnedFd::from(sock);
        // One slot per channel; the count comes from the caller, so an
        // absurd one is an error, not an allocation panic.
        let mut producers = Vec::new();
        producers
            .try_reserve_exact(classifier.channels())
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "cannot allocate the producer table for {} channels",
                        classifier.channels()
                    ),
                )
            })?;
        producers.resize_with(classifier.channels(), || None);
        let mut sink = Sink {
            pool,
            classifier,
            producers,
            local,
            stats: SourceStats::default(),
            drops: Vec::with_capacity(1024),
            trace: Box::new([(u32::MAX, 0); TRACE_LEN]),
            trace_next: 0,
            last_error: None,
            outcome: PollOutcome::default(),
        };
        let rx = match mode {
            RecvMode::Multishot { ring_entries } => Rx::Uring(Box::new(uring::UringRx::new(
                sock.as_raw_fd(),
                &mut sink,
                ring_entries,
            )?)),
            RecvMode::Mmsg { batch } => {
                if batch == 0 || batch > 1024 {
                    return Err(invalid("recvmmsg batch must be in 1..=1024"));
                }
                Rx::Mmsg(mmsg::MmsgRx::new(usize::from(batch), false))
            }
            RecvMode::PerPacket => Rx::Mmsg(mmsg::MmsgRx::new(1, true)),
        };
        Ok(Self { rx, sink, sock })
    }

    /// A source in the mode [`RecvMode::for_backend`] picks for `kq`.
    ///
    /// # Errors
    ///
    /// As [`PacketSource::new`].
    pub fn for_queue(
        kq: &Kqueue,
        sock: std::net::UdpSocket,
        pool: Arc<BufferPool>,
        classifier: Classifier,
    ) -> io::Result<Self> {
        Self::new(sock, pool, classifier, RecvMode::for_backend(kq.backend()))
    }

    /// The receive mode.
    #[must_use]
    pub fn mode(&self) -> RecvMode {
        match &self.rx {
            Rx::Uring(u) => RecvMode::Multishot {
                ring_entries: u.entries(),
            },
            Rx::Mmsg(m) if m.per_packet() => RecvMode::PerPacket,
            Rx::Mmsg(m) => RecvMode::Mmsg {
                batch: m.batch() as u16,
            },
        }
    }

    /// Attaches the producer of channel index `channel` (replacing and
    /// returning any previous one).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `channel` is not below the classifier's channel
    /// count; the producer is dropped.
    pub fn set_producer(&mut self, channel: usize, tx: Producer) -> io::Result<Option<Producer>> {
        let slot = self
            .sink
            .producers
            .get_mut(channel)
            .ok_or_else(|| invalid("channel index out of range"))?;
        Ok(slot.replace(tx))
    }

    /// Detaches the producer of `channel`: its flows' packets are dropped
    /// (counted) until another is attached.
    pub fn take_producer(&mut self, channel: usize) -> Option<Producer> {
        self.sink.producers.get_mut(channel).and_then(Option::take)
    }

    /// The classifier (install and remove flows, read per-flow counts).
    pub fn classifier(&mut self) -> &mut Classifier {
        &mut self.sink.classifier
    }

    /// The pool the source receives into.
    #[must_use]
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.sink.pool
    }

    /// The socket's local address (the destination of every flow key).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.sink.local
    }

    /// The socket, e.g. to send replies from it with a [`BatchSender`].
    #[must_use]
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The fd to watch for `READ`: the socket (`Mmsg`, `PerPacket`) or,
    /// for `Multishot`, the eventfd registered with the source's ring (the
    /// ring runs with `DEFER_TASKRUN`: completions are posted by `poll`,
    /// and the kernel signals this eventfd when it has some to post).
    #[must_use]
    pub fn fd(&self) -> RawFd {
        match &self.rx {
            Rx::Uring(u) => u.ring_fd(),
            Rx::Mmsg(_) => self.sock.as_raw_fd(),
        }
    }

    /// Adds a level-triggered `READ` knote (`NOTE_NODATA`) for
    /// [`fd`](Self::fd) to `kq` with `udata`; returns its ident. Call
    /// [`poll`](Self::poll) when it fires.
    ///
    /// # Errors
    ///
    /// The queue's error for the `EV_ADD`.
    pub fn register(&mut self, kq: &Kqueue, udata: u64) -> io::Result<u64> {
        let ident = self.fd() as u64;
        let add = Kevent::new(ident, Filter::Read, Flags::ADD, note::NODATA, 0, udata);
        kq.kevent(&[add], &mut [], None)?;
        if let Rx::Uring(u) = &mut self.rx {
            u.set_watched();
        }
        Ok(ident)
    }

    /// Receives what is available now (up to a bounded number of batches),
    /// dispatching each datagram to its channel. Never blocks.
    ///
    /// # Errors
    ///
    /// Only for a broken setup (e.g. the ring cannot be entered); receive
    /// errors of the socket are counted in [`SourceStats::errors`].
    pub fn poll(&mut self) -> io::Result<PollOutcome> {
        self.sink.outcome = PollOutcome::default();
        let r = match &mut self.rx {
            Rx::Uring(u) => u.poll(&mut self.sink),
            Rx::Mmsg(m) => m.poll(self.sock.as_raw_fd(), &mut self.sink),
        };
        self.sink.flush_drops();
        r.map(|()| self.sink.outcome)
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> SourceStats {
        self.sink.stats
    }

    /// The last receive errno counted in [`SourceStats::errors`].
    #[must_use]
    pub fn last_error(&self) -> Option<i32> {
        self.sink.last_error
    }

    /// The last [`TRACE_LEN`] datagrams delivered or dropped after
    /// classification, oldest first: `(buffer id, address the kernel wrote
    /// the payload to)`. The address is read back from what was handed to
    /// the kernel — the `iovec` of `recvmmsg`/`recvfrom`, or the
    /// provided-buffer ring entry the completion consumed plus the
    /// multishot `recvmsg` layout (`io_uring_recvmsg_out`, name, control)
    /// — so a consumer can check that the slice it reads is that very
    /// memory (a receive into scratch memory and a copy would not be).
    pub fn trace(&self) -> impl Iterator<Item = (u32, *const u8)> + '_ {
        let n = self.sink.trace_next;
        let (start, len) = if n < TRACE_LEN {
            (0, n)
        } else {
            (n % TRACE_LEN, TRACE_LEN)
        };
        (0..len).map(move |k| {
            let (id, addr) = self.sink.trace[(start + k) % TRACE_LEN];
            (id, addr as *const u8)
        })
    }

    /// Buffers the kernel holds right now (`Multishot`: in the buffer
    /// ring; `Mmsg`: armed for the next batch).
    #[must_use]
    pub fn buffers_held(&self) -> usize {
        match &self.rx {
            Rx::Uring(u) => u.in_ring(),
            Rx::Mmsg(m) => m.armed(),
        }
    }
}

impl Drop for PacketSource {
    fn drop(&mut self) {
        match &mut self.rx {
            Rx::Uring(u) => {
                if !u.shutdown(&mut self.sink) {
                    // The kernel never confirmed the end of the multishot
                    // receive: it may still write into any buffer of the
                    // ring, i.e. anywhere in the pool, after the ring fd is
                    // closed (io_uring cancels a dying ring's requests
                    // asynchronously). Keep the pool's memory alive for
                    // the rest of the process rather than risk the kernel
                    // writing into freed (reused) memory.
                    std::mem::forget(Arc::clone(&self.sink.pool));
                }
            }
            Rx::Mmsg(m) => m.release(&mut self.sink),
        }
        self.sink.flush_drops();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_parse_roundtrip() {
        let mut b = [0u8; NAME_LEN];
        b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&5004u16.to_be_bytes());
        b[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(parse_sockaddr(&b), Some("127.0.0.1:5004".parse().unwrap()));
        b[..2].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(parse_sockaddr(&b), None);
        assert_eq!(parse_sockaddr(&b[..3]), None);
    }

    #[test]
    fn payload_bounds() {
        let b = [0u8; 128];
        assert_eq!(payload(&b, 64).map(<[u8]>::len), Some(64));
        assert_eq!(payload(&b, 65), None);
    }
}
