//! Network AIO: accept, recv, send and sendfile as operations whose
//! completions arrive as `Filter::Aio` events (the 2006 seed's
//! `aio_accept`/`aio_recv`/`aio_send`/`aio_sendfile`).
//!
//! Install the storage in a queue and keep the [`Aio`] handle:
//!
//! ```
//! use kevent_core::{Filter, Kevent, Kqueue};
//! use kevent_net::aio::Aio;
//! use std::io::Write;
//! use std::os::fd::AsRawFd;
//! use std::time::Duration;
//!
//! let (aio, storage) = Aio::new();
//! let kq = Kqueue::builder(kevent_core::Backend::Auto)?.storage(storage).build()?;
//! let l = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let mut c = std::net::TcpStream::connect(l.local_addr()?)?;
//! let (s, _) = l.accept()?;
//! s.set_nonblocking(true)?;
//! let op = aio.recv(&kq, s.as_raw_fd(), Vec::with_capacity(64), 7)?;
//! c.write_all(b"ping")?;
//! let mut out = [Kevent::default(); 4];
//! let n = kq.kevent(&[], &mut out, Some(Duration::from_secs(5)))?;
//! assert_eq!((n, out[0].filter, out[0].ident, out[0].data, out[0].udata), (1, Filter::Aio, op, 4, 7));
//! assert_eq!(aio.take_buffer(op).unwrap(), b"ping");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Two kinds of operations
//!
//! **Single-shot** ([`Aio::accept`], [`Aio::recv`], [`Aio::send`],
//! [`Aio::sendfile`]): one operation, one `ONESHOT` event. `ident` = the
//! operation id (never reused while the operation is in flight or its
//! buffer not yet taken), `data` = the result (bytes moved, the accepted
//! fd) or `-errno`, `udata` yours. The buffer is moved in and handed back
//! by [`Aio::take_buffer`] once the operation is final: a recv buffer
//! comes back with its length set to the bytes received (the whole
//! capacity is offered to the kernel), a send buffer unchanged.
//!
//! - **recv** receives once (`0` = end of file); **send** and **sendfile**
//!   send everything before completing (the result is short only on an
//!   error or a cancel after some progress); **accept** returns a
//!   non-blocking, close-on-exec fd that the caller owns.
//!
//! **Multishot** ([`Aio::accept_multi`], [`Aio::recv_pooled`]): one
//! operation that goes on producing results — every accepted connection,
//! every chunk received — until it ends (cancel, end of file, an error).
//! Its knote is `EV_CLEAR` (as FreeBSD's timers): an event (`ident` = the
//! operation id) says new results are queued, `data` = how many; take
//! them in order with [`Aio::next_result`] until it returns `None` — the
//! next event comes with the next new result. (`CLEAR` rather than level
//! keeps a steady loop at one blocking `io_uring_enter` per wait: a level
//! knote requeued after delivery turns the next wait into a peek.) The operation's last
//! result (`0` at end of file, `-ECANCELED`, `-errno`) has
//! [`Completion::last`] set, and its event carries `EV_EOF`; the
//! operation is then gone once its results are taken. A pooled receive
//! hands each chunk over in a [`PooledBuf`] from the handle's buffer pool
//! ([`Aio::with_pool`]); dropping it gives the buffer back.
//!
//! ```
//! use kevent_core::{Kevent, Kqueue};
//! use kevent_net::aio::Aio;
//! use std::io::Write;
//! use std::os::fd::AsRawFd;
//! use std::time::Duration;
//!
//! let (aio, storage) = Aio::with_pool(64, 2048)?;
//! let kq = Kqueue::builder(kevent_core::Backend::Auto)?.storage(storage).build()?;
//! let l = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let mut c = std::net::TcpStream::connect(l.local_addr()?)?;
//! let (s, _) = l.accept()?;
//! s.set_nonblocking(true)?;
//! let op = aio.recv_pooled(&kq, s.as_raw_fd(), 1)?;
//! c.write_all(b"one")?;
//! let mut out = [Kevent::default(); 4];
//! let mut got = Vec::new();
//! while got.len() < 3 {
//!     kq.kevent(&[], &mut out, Some(Duration::from_secs(5)))?;
//!     while let Some(r) = aio.next_result(op) {
//!         got.extend_from_slice(&r.buf.unwrap()); // the buffer goes back here
//!     }
//! }
//! assert_eq!(got, b"one");
//! aio.cancel(&kq, op)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Cancel
//!
//! [`Aio::cancel`] asks for an early end: the operation still completes
//! with an event — `-ECANCELED`, its result if it had finished, or the
//! bytes sent so far — and its buffer (or file) is released only after
//! that final completion. Deleting an operation's knote (`EV_DELETE`)
//! cancels it too; results not yet taken are then discarded (buffers back
//! to the pool, accepted fds closed).
//!
//! # Backends
//!
//! - **io_uring**: real ops in the queue's ring, submitted with the
//!   queue's next wait in the same `io_uring_enter`: `ACCEPT` (multishot
//!   for `accept_multi`), `RECV` (multishot from a provided-buffer ring for
//!   `recv_pooled`), `SEND` with `MSG_WAITALL`, and `SPLICE` file → pipe →
//!   socket for sendfile (with a `POLL_ADD` for room when a non-blocking
//!   socket is full). A multishot op that ends by itself (`-ENOBUFS` when
//!   the pool ran dry, a full completion queue) is re-armed transparently,
//!   once buffers are back for a receive. The kernel owns a
//!   buffer from submission (or publication in the ring) to the final
//!   completion naming it; if the queue is dropped with operations in
//!   flight their buffers are leaked, never freed under the kernel. The
//!   kernel holds the socket until the op ends: cancel (or `shutdown(2)`)
//!   before closing.
//! - **epoll**: the same API performed on readiness: the syscall is tried
//!   at once; on `EAGAIN` the fd's readiness edge is awaited and the
//!   syscall retried. On epoll an fd has one registration: do not mix AIO
//!   operations and `READ`/`WRITE` knotes on one fd.
//!
//! # Operations outliving their submitting thread
//!
//! io_uring ties a request to the thread that submitted it — here the
//! thread leading the queue's wait when it was pushed, not necessarily the
//! caller — and cancels it when that thread exits (`-ECANCELED`, though
//! the user never cancelled). Such an operation is resubmitted
//! transparently, up to 16 times in a row, because a kernel cancel means
//! nothing moved:
//!
//! - **accept** (single or multishot): the request was waiting in its
//!   internal poll; the accept itself never ran, the connection is still
//!   in the backlog.
//! - **recv** (single or pooled): likewise waiting for data; nothing was
//!   consumed from the socket. A provided buffer the request had picked is
//!   recycled by the kernel (or named in the CQE and given back).
//! - **send**: `io_uring` reports partial progress of a `MSG_WAITALL`
//!   send as the byte count even when cancelled (`REQ_F_PARTIAL_IO`), so
//!   `-ECANCELED` means no byte of this request went out; the remainder is
//!   resubmitted from the count kept here.
//! - **sendfile**: each splice (file → pipe at an explicit offset, pipe →
//!   socket) and the poll for room either moves bytes and says how many,
//!   or moves none; a cancelled (or `EINTR`) step is repeated with the same
//!   offset and pipe contents.
//!
//! A multishot op ended by the kernel for other reasons (a success without
//! `IORING_CQE_F_MORE`, `-ENOBUFS`) is re-armed the same way.

mod pool;

use crate::sys::cvt;
use kevent_core::io_uring::{cqueue, opcode, types};
use kevent_core::{Backend, Context, Errno, Filter, Flags, Interest, Kevent, KnoteId, Kqueue};
use kevent_core::{Readiness, Storage};
use pool::Pool;
use rustc_hash::FxHashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `fflags` of the change that asks the storage to cancel an operation.
const NOTE_CANCEL: u32 = 1;
/// Payload bit of an fd readiness watch (epoll); below it an op id.
const FD_BIT: u64 = 1 << 55;
/// Op generations stay below `FD_BIT`'s position.
const GEN_MAX: u32 = (1 << 23) - 1;
/// Bytes per splice round of a sendfile on io_uring (a pipe's default
/// capacity, so the file → pipe half never blocks).
const CHUNK: usize = 1 << 16;
/// Transparent resubmissions in a row of an op the kernel cancelled
/// without a user cancel (see the module docs).
const MAX_RESUBMITS: u8 = 16;
/// How often ops starved of pool buffers look for returned ones.
const RETRY: Duration = Duration::from_millis(1);
/// "None" in the result lists and for buffer ids.
const NIL: u32 = u32::MAX;
/// [`Aio::new`]'s pool: 512 buffers of 4 KiB (allocated at the first
/// pooled receive).
const DEFAULT_POOL: (u16, u32) = (512, 4096);

/// What an operation does.
#[derive(Debug)]
enum Kind {
    Accept,
    AcceptMulti,
    Recv,
    RecvPooled,
    Send,
    Sendfile {
        /// Held until the final event is out (the op is freed).
        _file: Arc<File>,
        ffd: RawFd,
        offset: u64,
        len: usize,
        /// Bytes in the pipe (io_uring, between the two splices).
        chunk: usize,
        /// io_uring: 0 = file → pipe in flight, 1 = pipe → socket, 2 =
        /// waiting for the socket to be writable (a non-blocking socket's
        /// splice said `EAGAIN`).
        phase: u8,
        pipe: Option<Pipe>,
    },
}

impl Kind {
    fn multi(&self) -> bool {
        matches!(self, Kind::AcceptMulti | Kind::RecvPooled)
    }
}

#[derive(Debug)]
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Inserted by the handle; the knote is not attached yet.
    New,
    /// Submitted (io_uring), waiting for readiness (epoll), or starved of
    /// pool buffers (multishot receive).
    Pending,
    /// Final: the kernel is done with it (single-shot: `result` holds the
    /// outcome; multishot: its last result is queued).
    Done,
}

/// Results queued on a multishot op: a list through [`Table::res`].
#[derive(Debug, Clone, Copy)]
struct Queue {
    head: u32,
    tail: u32,
    len: u32,
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Res {
    next: u32,
    res: i64,
    /// Pool buffer holding the bytes, or `NIL`.
    bid: u32,
}

#[derive(Debug)]
struct Op {
    gen: u32,
    kind: Kind,
    fd: RawFd,
    buf: Option<Vec<u8>>,
    st: St,
    knote: Option<KnoteId>,
    result: i64,
    /// An io_uring op is in flight: its buffer belongs to the kernel.
    kernel: bool,
    cancel: bool,
    /// Bytes sent so far (send, sendfile).
    sent: usize,
    /// The event went out (or never will: the knote was deleted).
    delivered: bool,
    udata: u64,
    /// Transparent resubmissions in a row (see `MAX_RESUBMITS`).
    resubmits: u8,
    /// Multishot: results not yet taken.
    q: Queue,
    /// Multishot receive: waiting for pool buffers.
    starved: bool,
    /// Epoll multishot: in its fd's waiter list.
    watching: bool,
}

#[derive(Debug)]
struct Table {
    slots: Vec<Option<Op>>,
    free: Vec<u32>,
    next_gen: u32,
    res: Vec<Res>,
    res_free: u32,
    pool: Option<Pool>,
    pool_cfg: (u16, u32),
}

impl Table {
    fn new(pool_cfg: (u16, u32)) -> Table {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            next_gen: 0,
            res: Vec::new(),
            res_free: NIL,
            pool: None,
            pool_cfg,
        }
    }

    fn insert(&mut self, mut op: Op) -> u64 {
        self.next_gen = if self.next_gen >= GEN_MAX {
            1
        } else {
            self.next_gen + 1
        };
        op.gen = self.next_gen;
        let key = match self.free.pop() {
            Some(k) => {
                self.slots[k as usize] = Some(op);
                k
            }
            None => {
                self.slots.push(Some(op));
                (self.slots.len() - 1) as u32
            }
        };
        (u64::from(self.next_gen) << 32) | u64::from(key)
    }

    fn get(&mut self, id: u64) -> Option<&mut Op> {
        slot(&mut self.slots, id)
    }

    fn remove(&mut self, id: u64) {
        let key = (id & 0xffff_ffff) as u32;
        if self.get(id).is_some() {
            self.slots[key as usize] = None;
            self.free.push(key);
        }
    }

    /// Free the slot once the event is out and nothing is left to take.
    fn maybe_free(&mut self, id: u64) {
        if let Some(op) = self.get(id) {
            if op.delivered && op.st == St::Done && op.buf.is_none() && op.q.len == 0 {
                self.remove(id);
            }
        }
    }

    /// Queue a result on multishot op `id`.
    fn push_res(&mut self, id: u64, res: i64, bid: u32) {
        let Some(op) = slot(&mut self.slots, id) else {
            return;
        };
        let entry = Res {
            next: NIL,
            res,
            bid,
        };
        let list = &mut self.res;
        let i = if self.res_free != NIL {
            let i = self.res_free;
            self.res_free = list[i as usize].next;
            list[i as usize] = entry;
            i
        } else {
            list.push(entry);
            (list.len() - 1) as u32
        };
        if op.q.tail == NIL {
            op.q.head = i;
        } else {
            list[op.q.tail as usize].next = i;
        }
        op.q.tail = i;
        op.q.len += 1;
        op.resubmits = 0;
    }

    /// Take the oldest result of multishot op `id`: `(result, bid)`.
    fn pop_res(&mut self, id: u64) -> Option<(i64, u32)> {
        let op = slot(&mut self.slots, id)?;
        if op.q.head == NIL {
            return None;
        }
        let i = op.q.head;
        let e = self.res[i as usize];
        op.q.head = e.next;
        if op.q.head == NIL {
            op.q.tail = NIL;
        }
        op.q.len -= 1;
        self.res[i as usize].next = self.res_free;
        self.res_free = i;
        Some((e.res, e.bid))
    }

    /// Drop every queued result of `id`: buffers back to the pool,
    /// accepted fds closed.
    fn discard_results(&mut self, id: u64) {
        let accept = matches!(self.get(id).map(|o| &o.kind), Some(Kind::AcceptMulti));
        while let Some((r, bid)) = self.pop_res(id) {
            self.release(accept, r, bid);
        }
    }

    /// Release what one result holds.
    fn release(&mut self, accept: bool, r: i64, bid: u32) {
        if accept && r >= 0 {
            close_fd(r);
        }
        if bid != NIL {
            if let Some(p) = &mut self.pool {
                p.put(bid as u16);
            }
        }
    }
}

/// The live op `id` (slot and generation) of `slots`: a free function so
/// the table's other fields stay borrowable beside it.
fn slot(slots: &mut [Option<Op>], id: u64) -> Option<&mut Op> {
    let key = (id & 0xffff_ffff) as usize;
    let gen = (id >> 32) as u32;
    slots.get_mut(key)?.as_mut().filter(|op| op.gen == gen)
}

/// Close an accepted fd nobody will see.
fn close_fd(fd: i64) {
    if let Ok(fd) = RawFd::try_from(fd) {
        // SAFETY: the fd was accepted for an op and never handed out; it
        // is ours alone.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

fn lock(t: &Mutex<Table>) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the handle, its storage and the buffers handed out.
#[derive(Debug)]
struct Shared {
    table: Mutex<Table>,
}

/// A submission that did not happen: the error and the buffer, handed
/// back.
#[derive(Debug)]
pub struct SubmitError {
    /// Why (`EINVAL`: the queue has no AIO storage, or an argument is out
    /// of range; `ENOENT`: the queue's AIO storage is not this handle's;
    /// `ENOMEM` and the like: the buffer pool or a pipe could not be set
    /// up).
    pub error: io::Error,
    /// The buffer moved in, untouched (empty for operations without one).
    pub buf: Vec<u8>,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AIO submission failed: {}", self.error)
    }
}

impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<SubmitError> for io::Error {
    fn from(e: SubmitError) -> io::Error {
        e.error
    }
}

fn invalid(buf: Vec<u8>) -> SubmitError {
    SubmitError {
        error: io::Error::from_raw_os_error(libc::EINVAL),
        buf,
    }
}

/// One result of a multishot operation ([`Aio::next_result`]).
#[derive(Debug)]
pub struct Completion {
    /// Accept: the new fd (non-blocking, close-on-exec, yours to close).
    /// Pooled receive: bytes received (in `buf`), `0` at end of file.
    /// Negative: `-errno` (`-ECANCELED` after a cancel).
    pub result: i64,
    /// The bytes of a pooled receive.
    pub buf: Option<PooledBuf>,
    /// The operation's last result: it has ended.
    pub last: bool,
}

/// A chunk received by [`Aio::recv_pooled`], in a buffer of the handle's
/// pool. Derefs to the bytes received; dropping it gives the buffer back
/// to the pool (on io_uring, straight into the kernel's provided-buffer
/// ring).
pub struct PooledBuf {
    shared: Arc<Shared>,
    ptr: NonNull<u8>,
    len: usize,
    bid: u16,
}

// SAFETY: the buffer is owned by this value alone until its drop returns
// it (the pool hands a buffer to one result, and a result to one
// `PooledBuf`); the return goes through the shared table's mutex.
unsafe impl Send for PooledBuf {}
// SAFETY: `&PooledBuf` only reads the bytes, which nobody writes while it
// lives (see `Send`).
unsafe impl Sync for PooledBuf {}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is the start of a pool buffer of at least `len`
        // bytes, which the kernel (or `recv(2)`) wrote before the result
        // was queued, and which stays mapped while `shared` (holding the
        // pool) lives; nobody writes it until this value returns it.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("bid", &self.bid)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(p) = &mut lock(&self.shared.table).pool {
            p.put(self.bid);
        }
    }
}

/// The handle that submits operations to the queue holding its
/// [`AioStorage`]. Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct Aio {
    shared: Arc<Shared>,
}

impl Aio {
    /// A handle and the storage to install in a queue
    /// (`Builder::storage`); operations go to that queue only. Pooled
    /// receives use 512 buffers of 4 KiB, mapped at the first one.
    pub fn new() -> (Aio, Box<dyn Storage>) {
        Aio::build(DEFAULT_POOL)
    }

    /// As [`Aio::new`], with a pool of `count` buffers (a power of two, at
    /// most 32768) of `size` bytes (1 B to 1 MiB) for
    /// [`Aio::recv_pooled`]. The pool is mapped at the first pooled
    /// receive; on io_uring it is the kernel's provided-buffer ring.
    ///
    /// # Errors
    /// `InvalidInput` for a count or size out of range.
    pub fn with_pool(count: u16, size: u32) -> io::Result<(Aio, Box<dyn Storage>)> {
        if !pool::valid(count, size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "AIO pool: count must be a power of two <= {}, size 1..={} (got {count} x {size})",
                    pool::MAX_COUNT,
                    pool::MAX_SIZE
                ),
            ));
        }
        Ok(Aio::build((count, size)))
    }

    fn build(cfg: (u16, u32)) -> (Aio, Box<dyn Storage>) {
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::new(cfg)),
        });
        let storage = AioStorage {
            tag: tag(&shared),
            shared: shared.clone(),
            io: Local {
                waiters: FxHashMap::default(),
                scratch: Vec::new(),
                pipes: Vec::new(),
                starved: Vec::new(),
                retry_at: None,
            },
        };
        (Aio { shared }, Box::new(storage))
    }

    fn submit(
        &self,
        kq: &Kqueue,
        kind: Kind,
        fd: RawFd,
        buf: Option<Vec<u8>>,
        udata: u64,
    ) -> Result<u64, SubmitError> {
        let multi = kind.multi();
        let id = lock(&self.shared.table).insert(Op {
            gen: 0,
            kind,
            fd,
            buf,
            st: St::New,
            knote: None,
            result: 0,
            kernel: false,
            cancel: false,
            sent: 0,
            delivered: false,
            udata,
            resubmits: 0,
            q: Queue::default(),
            starved: false,
            watching: false,
        });
        // Multishot knotes are CLEAR: reported when new results arrive.
        let flags = if multi {
            Flags::ADD | Flags::CLEAR
        } else {
            Flags::ADD | Flags::ONESHOT
        };
        let ch = Kevent::new(id, Filter::Aio, flags, 0, tag(&self.shared), udata);
        match kq.kevent(&[ch], &mut [], None) {
            Ok(_) => Ok(id),
            Err(error) => {
                // `attach` failed before submitting anything: the op is
                // still ours.
                let mut t = lock(&self.shared.table);
                let buf = t.get(id).and_then(|op| op.buf.take()).unwrap_or_default();
                t.remove(id);
                Err(SubmitError { error, buf })
            }
        }
    }

    /// Accept one connection on the listening socket `fd`; `data` = the
    /// new fd (non-blocking, close-on-exec, yours to close).
    ///
    /// # Errors
    /// As [`SubmitError`]; errors of the accept itself come as `-errno` in
    /// the event.
    pub fn accept(&self, kq: &Kqueue, fd: RawFd, udata: u64) -> Result<u64, SubmitError> {
        self.submit(kq, Kind::Accept, fd, None, udata)
    }

    /// Accept every connection on the listening socket `fd` until
    /// cancelled (multishot; io_uring: `IORING_ACCEPT_MULTISHOT`). Each
    /// [`Completion::result`] is a new fd (non-blocking, close-on-exec,
    /// yours to close). `ECONNABORTED` and `EINTR` are retried silently;
    /// any other error (`EMFILE` when out of descriptors, `EINVAL` for a
    /// socket not listening) is the operation's last result — submit a
    /// new one once the cause is dealt with.
    ///
    /// # Errors
    /// As [`SubmitError`].
    pub fn accept_multi(&self, kq: &Kqueue, fd: RawFd, udata: u64) -> Result<u64, SubmitError> {
        self.submit(kq, Kind::AcceptMulti, fd, None, udata)
    }

    /// Receive once into `buf`'s whole capacity; `data` = bytes received,
    /// `0` at end of file.
    ///
    /// # Errors
    /// As [`SubmitError`], which hands `buf` back; `EINVAL` for a buffer
    /// without capacity.
    pub fn recv(
        &self,
        kq: &Kqueue,
        fd: RawFd,
        buf: Vec<u8>,
        udata: u64,
    ) -> Result<u64, SubmitError> {
        if buf.capacity() == 0 {
            return Err(invalid(buf));
        }
        self.submit(kq, Kind::Recv, fd, Some(buf), udata)
    }

    /// Receive from `fd` until end of file, an error or a cancel
    /// (multishot; io_uring: `RECV` multishot from the provided-buffer
    /// ring). Each [`Completion`] holds one chunk in a [`PooledBuf`]
    /// (`result` = its length); the last is `0` (end of file), `-errno`
    /// or `-ECANCELED`. When the pool runs dry the receive pauses (the
    /// bytes wait in the socket) and resumes by itself within about a
    /// millisecond of a buffer coming back.
    ///
    /// # Errors
    /// As [`SubmitError`]; the pool's mapping or registration failing
    /// (`ENOMEM`) at the first pooled receive.
    pub fn recv_pooled(&self, kq: &Kqueue, fd: RawFd, udata: u64) -> Result<u64, SubmitError> {
        self.submit(kq, Kind::RecvPooled, fd, None, udata)
    }

    /// Send all of `buf`; `data` = bytes sent.
    ///
    /// # Errors
    /// As [`SubmitError`], which hands `buf` back.
    pub fn send(
        &self,
        kq: &Kqueue,
        fd: RawFd,
        buf: Vec<u8>,
        udata: u64,
    ) -> Result<u64, SubmitError> {
        self.submit(kq, Kind::Send, fd, Some(buf), udata)
    }

    /// Send `len` bytes of `file` from `offset` to socket `fd` (splice on
    /// io_uring, `sendfile(2)` on epoll); `data` = bytes sent (short at end
    /// of file). The operation holds its clone of `file` until its final
    /// event has been collected, so the file cannot be closed under it.
    ///
    /// # Errors
    /// As [`SubmitError`]; `EINVAL` if `offset` or `offset + len` exceeds
    /// `i64::MAX`.
    pub fn sendfile(
        &self,
        kq: &Kqueue,
        fd: RawFd,
        file: Arc<File>,
        offset: u64,
        len: usize,
        udata: u64,
    ) -> Result<u64, SubmitError> {
        let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
        if end.is_none_or(|e| e > i64::MAX as u64) {
            return Err(invalid(Vec::new()));
        }
        let kind = Kind::Sendfile {
            ffd: file.as_raw_fd(),
            _file: file,
            offset,
            len,
            chunk: 0,
            phase: 0,
            pipe: None,
        };
        self.submit(kq, kind, fd, None, udata)
    }

    /// Ask for operation `op` to end early. It still completes with an
    /// event (`-ECANCELED`, or its result if it got there first; a
    /// multishot op's last result is `-ECANCELED`). Returns whether the
    /// operation was still pending; an unknown or finished id is
    /// `Ok(false)`.
    ///
    /// # Errors
    /// The queue's error (`EBADF` once closed).
    pub fn cancel(&self, kq: &Kqueue, op: u64) -> io::Result<bool> {
        let udata = match lock(&self.shared.table).get(op) {
            Some(o) if o.st != St::Done && !o.cancel => o.udata,
            _ => return Ok(false),
        };
        // A change sets the knote's udata: pass the op's own.
        let ch = Kevent::new(
            op,
            Filter::Aio,
            Flags::empty(),
            NOTE_CANCEL,
            tag(&self.shared),
            udata,
        );
        match kq.kevent(&[ch], &mut [], None) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The buffer of a single-shot operation whose final event has been
    /// collected, once; `None` before that (the kernel may still use it),
    /// for an operation without a buffer, or an unknown id. A recv
    /// buffer's length is the bytes received.
    pub fn take_buffer(&self, op: u64) -> Option<Vec<u8>> {
        let mut t = lock(&self.shared.table);
        let o = t.get(op)?;
        if o.st != St::Done || o.kernel || !o.delivered {
            return None;
        }
        let mut buf = o.buf.take()?;
        if matches!(o.kind, Kind::Recv) {
            let n = usize::try_from(o.result).unwrap_or(0).min(buf.capacity());
            // SAFETY: the receive that completed with `n` wrote the first
            // `n` bytes of the buffer (and `n` <= capacity).
            unsafe { buf.set_len(n) };
        }
        t.maybe_free(op);
        Some(buf)
    }

    /// The oldest result queued on multishot operation `op`, or `None`
    /// (nothing queued, a single-shot or unknown id). Take them until
    /// `None` after each event.
    pub fn next_result(&self, op: u64) -> Option<Completion> {
        let mut t = lock(&self.shared.table);
        let (result, bid) = t.pop_res(op)?;
        let o = t.get(op)?;
        let last = o.st == St::Done && o.q.len == 0;
        let buf = match (bid, &t.pool) {
            (NIL, _) | (_, None) => None,
            (b, Some(p)) => NonNull::new(p.addr(b as u16)).map(|ptr| PooledBuf {
                shared: self.shared.clone(),
                ptr,
                len: usize::try_from(result).unwrap_or(0),
                bid: b as u16,
            }),
        };
        if last {
            t.maybe_free(op);
        }
        Some(Completion { result, buf, last })
    }

    /// Operations not yet freed (in flight, or final with a buffer or
    /// results not yet taken).
    pub fn in_flight(&self) -> usize {
        let t = lock(&self.shared.table);
        t.slots.len() - t.free.len()
    }

    /// Pool buffers out of the pool: queued in results or held as
    /// [`PooledBuf`]s (0 before the first pooled receive).
    pub fn buffers_out(&self) -> usize {
        let t = lock(&self.shared.table);
        t.pool
            .as_ref()
            .map_or(0, |p| usize::from(p.count()) - p.available() as usize)
    }
}

/// Identifies a handle's table in its changes (`data`), so a queue's
/// storage refuses the ops of another handle.
fn tag(shared: &Arc<Shared>) -> i64 {
    Arc::as_ptr(shared) as usize as i64
}

/// Per-fd readiness waiters (epoll backend).
#[derive(Debug, Default)]
struct Waiters {
    read: Vec<u64>,
    write: Vec<u64>,
    /// The fd is (most likely) registered with the backend: the next
    /// watch is an `EPOLL_CTL_MOD`. Cleared when an op reported the end of
    /// the fd's stream with nothing else waiting on it — the fd is about to
    /// be closed, and the next op on its number (a new connection) is
    /// registered with one `EPOLL_CTL_ADD` rather than MOD, `ENOENT`, ADD.
    /// (The entry itself stays, its lists keeping their allocations.)
    registered: bool,
}

/// The storage behind [`Aio`] (`Filter::Aio`).
pub struct AioStorage {
    shared: Arc<Shared>,
    tag: i64,
    io: Local,
}

/// The storage's own state, apart from the shared table (so both can be
/// borrowed at once).
#[derive(Debug)]
struct Local {
    waiters: FxHashMap<RawFd, Waiters>,
    scratch: Vec<u64>,
    /// Idle pipes for sendfile on io_uring.
    pipes: Vec<Pipe>,
    /// Multishot receives waiting for pool buffers.
    starved: Vec<u64>,
    retry_at: Option<Instant>,
}

impl fmt::Debug for AioStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AioStorage")
            .field("waiting_fds", &self.io.waiters.len())
            .field("starved", &self.io.starved.len())
            .finish_non_exhaustive()
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn os_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn new_pipe() -> io::Result<Pipe> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by no one else.
    unsafe {
        Ok(Pipe {
            r: OwnedFd::from_raw_fd(fds[0]),
            w: OwnedFd::from_raw_fd(fds[1]),
        })
    }
}

/// Outcome of one non-blocking attempt (epoll).
enum Try {
    Done(i64),
    Again(Interest),
}

/// One non-blocking attempt of single-shot `op` (epoll backend).
fn attempt(op: &mut Op) -> Try {
    loop {
        let r = match &mut op.kind {
            Kind::Accept => {
                // SAFETY: null address pointers are allowed by accept4.
                let r = unsafe {
                    libc::accept4(
                        op.fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if r >= 0 {
                    return Try::Done(i64::from(r));
                }
                (errno(), Interest::Read)
            }
            Kind::Recv => {
                let Some(buf) = op.buf.as_mut() else {
                    return Try::Done(-i64::from(libc::EINVAL));
                };
                // SAFETY: the pointer and capacity describe the buffer's
                // allocation, which outlives the call.
                let r = unsafe { libc::recv(op.fd, buf.as_mut_ptr().cast(), buf.capacity(), 0) };
                if r >= 0 {
                    return Try::Done(r as i64);
                }
                (errno(), Interest::Read)
            }
            Kind::Send => {
                let Some(buf) = op.buf.as_ref() else {
                    return Try::Done(-i64::from(libc::EINVAL));
                };
                if op.sent >= buf.len() {
                    return Try::Done(op.sent as i64);
                }
                let rest = &buf[op.sent..];
                // SAFETY: `rest` is a live initialised slice.
                let r = unsafe {
                    libc::send(op.fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL)
                };
                if r >= 0 {
                    op.sent += r as usize;
                    continue;
                }
                (errno(), Interest::Write)
            }
            Kind::Sendfile {
                ffd, offset, len, ..
            } => {
                if op.sent >= *len {
                    return Try::Done(op.sent as i64);
                }
                // In range: `sendfile` checked offset + len <= i64::MAX.
                let mut off = *offset as libc::off_t;
                let want = (*len - op.sent).min(0x7fff_f000);
                // SAFETY: `off` is a live off_t the call updates.
                let r = unsafe { libc::sendfile(op.fd, *ffd, &mut off, want) };
                if r > 0 {
                    op.sent += r as usize;
                    *offset = off as u64;
                    continue;
                }
                if r == 0 {
                    return Try::Done(op.sent as i64);
                }
                (errno(), Interest::Write)
            }
            // Multishot ops go through `Local::multi_attempt`.
            Kind::AcceptMulti | Kind::RecvPooled => return Try::Done(-i64::from(libc::EINVAL)),
        };
        match r {
            (libc::EINTR, _) => continue,
            (e, dir) if e == libc::EAGAIN || e == libc::EWOULDBLOCK => return Try::Again(dir),
            (e, _) => return Try::Done(partial(op.sent, e)),
        }
    }
}

/// The result of an op that stopped on `errno` after sending `sent`
/// bytes: the bytes if any (a partial send is reported as such), else
/// `-errno`.
fn partial(sent: usize, errno: i32) -> i64 {
    if sent > 0 {
        sent as i64
    } else {
        -i64::from(errno)
    }
}

/// Single-shot `op`'s step completed with `result` (io_uring): its final
/// result, or `None` when the next step is to be submitted (the rest of a
/// send, a sendfile's next splice or its poll for room).
fn ring_step(op: &mut Op, result: i32) -> Option<i64> {
    let cancel = op.cancel;
    match &mut op.kind {
        Kind::Sendfile {
            offset,
            len,
            chunk,
            phase,
            pipe,
            ..
        } => {
            if *phase == 0 {
                if result > 0 && !cancel {
                    *chunk = result as usize;
                    *offset += result as u64;
                    *phase = 1;
                    return None;
                }
                // End of file (0), an error or a cancel: the pipe is
                // empty unless a cancel raced a result.
                if result > 0 {
                    drop(pipe.take());
                }
                Some(if result >= 0 {
                    op.sent as i64
                } else {
                    partial(op.sent, -result)
                })
            } else if *phase == 2 {
                // The socket is writable (or the poll failed: the splice
                // will say why).
                if cancel {
                    drop(pipe.take());
                    return Some(partial(op.sent, libc::ECANCELED));
                }
                *phase = 1;
                None
            } else if result == -libc::EAGAIN && !cancel {
                // A non-blocking socket is full: wait for room.
                *phase = 2;
                None
            } else if result > 0 {
                op.sent += result as usize;
                if result as usize == *chunk && op.sent < *len && !cancel {
                    *phase = 0;
                    None
                } else if (result as usize) < *chunk && !cancel {
                    // A short pipe → socket splice: send the rest of the
                    // pipe.
                    *chunk -= result as usize;
                    None
                } else {
                    if (result as usize) < *chunk {
                        // Bytes left in the pipe: it cannot be reused.
                        drop(pipe.take());
                    }
                    Some(op.sent as i64)
                }
            } else {
                drop(pipe.take());
                Some(partial(op.sent, -result))
            }
        }
        Kind::Send => {
            if result > 0 {
                op.sent += result as usize;
            }
            let len = op.buf.as_ref().map_or(0, Vec::len);
            if result > 0 && op.sent < len && !cancel {
                None
            } else if result < 0 {
                Some(partial(op.sent, -result))
            } else {
                Some(op.sent as i64)
            }
        }
        Kind::Accept | Kind::Recv | Kind::AcceptMulti | Kind::RecvPooled => Some(i64::from(result)),
    }
}

/// How a multishot attempt on epoll stopped.
enum Multi {
    /// `EAGAIN` (or a short receive: drained); the next edge resumes it.
    Wait,
    /// No pool buffer left.
    Starved,
    /// Its last result.
    End(i64),
}

impl Local {
    /// Map (and on io_uring register) the pool at the first pooled
    /// receive.
    fn ensure_pool(cx: &mut Context<'_>, t: &mut Table) -> Result<(), Errno> {
        if t.pool.is_some() {
            return Ok(());
        }
        let ring = cx.backend() == Backend::IoUring;
        let (count, size) = t.pool_cfg;
        let mut p = Pool::new(count, size, ring).map_err(|e| os_errno(&e))?;
        if let Some((addr, entries)) = p.ring_addr() {
            // SAFETY: the ring and its buffers live in the pool, which
            // lives as long as this storage (the table is shared with it)
            // and is leaked, not unmapped, if the storage goes with
            // receives in flight (`Drop for AioStorage`).
            let bgid = unsafe { cx.register_buf_ring(addr, entries) }.map_err(|e| os_errno(&e))?;
            p.publish_all(bgid);
        }
        t.pool = Some(p);
        Ok(())
    }

    /// Arm op `id` (io_uring) or try it (epoll), at attach or after a
    /// transparent resubmission.
    fn start(&mut self, cx: &mut Context<'_>, t: &mut Table, id: u64) -> Result<(), Errno> {
        let kind = &t.get(id).ok_or(libc::ENOENT)?.kind;
        let (multi, pooled) = (kind.multi(), matches!(kind, Kind::RecvPooled));
        if pooled {
            Local::ensure_pool(cx, t)?;
        }
        if cx.backend() == Backend::IoUring {
            return self.submit_ring(cx, t, id);
        }
        if multi {
            // A new op is not watching yet: if it stops at a short
            // receive, the registration that follows (ADD or MOD) polls
            // the socket again and reports what arrived meanwhile, a
            // pending end of file included. So no `EAGAIN` call here.
            self.multi_attempt(cx, t, id, false);
            return Ok(());
        }
        let Some(op) = t.get(id) else { return Ok(()) };
        match attempt(op) {
            Try::Done(r) => self.finish(cx, t, id, r),
            Try::Again(dir) => {
                let fd = op.fd;
                if let Err(e) = self.wait_ready(cx, id, fd, dir) {
                    let sent = t.get(id).map_or(0, |o| o.sent);
                    self.finish(cx, t, id, partial(sent, e));
                }
            }
        }
        Ok(())
    }

    /// Build and queue the ring op for `id`'s current step (io_uring).
    fn submit_ring(&mut self, cx: &mut Context<'_>, t: &mut Table, id: u64) -> Result<(), Errno> {
        let bgid = match t.pool.as_ref().map(Pool::mode) {
            Some(pool::Mode::Ring { bgid }) => Some(bgid),
            _ => None,
        };
        let op = t.get(id).ok_or(libc::ENOENT)?;
        let fd = types::Fd(op.fd);
        let sqe = match &mut op.kind {
            Kind::Accept => opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build(),
            Kind::AcceptMulti => opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build(),
            Kind::Recv => {
                let buf = op.buf.as_mut().ok_or(libc::EINVAL)?;
                let cap = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
                opcode::Recv::new(fd, buf.as_mut_ptr(), cap).build()
            }
            Kind::RecvPooled => opcode::RecvMulti::new(fd, bgid.ok_or(libc::EINVAL)?).build(),
            Kind::Send => {
                let buf = op.buf.as_ref().ok_or(libc::EINVAL)?;
                let rest = &buf[op.sent.min(buf.len())..];
                let n = u32::try_from(rest.len()).unwrap_or(u32::MAX);
                opcode::Send::new(fd, rest.as_ptr(), n)
                    .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                    .build()
            }
            Kind::Sendfile {
                ffd,
                offset,
                len,
                chunk,
                phase,
                pipe,
                ..
            } => {
                if pipe.is_none() {
                    *pipe = Some(match self.pipes.pop() {
                        Some(p) => p,
                        None => new_pipe().map_err(|e| os_errno(&e))?,
                    });
                }
                let p = pipe.as_ref().ok_or(libc::EIO)?;
                if *phase == 2 {
                    opcode::PollAdd::new(fd, libc::POLLOUT as u32).build()
                } else if *phase == 0 {
                    let want = len.saturating_sub(op.sent).min(CHUNK) as u32;
                    // In range: `sendfile` checked offset + len <= i64::MAX.
                    opcode::Splice::new(
                        types::Fd(*ffd),
                        *offset as i64,
                        types::Fd(p.w.as_raw_fd()),
                        -1,
                        want,
                    )
                    .build()
                } else {
                    opcode::Splice::new(types::Fd(p.r.as_raw_fd()), -1, fd, -1, *chunk as u32)
                        .build()
                }
            }
        };
        // SAFETY: the buffer (if any) lives in the table until the final
        // completion: `kernel` is set, `take_buffer` refuses while it is,
        // and a storage dropped with it set leaks the buffer (and the
        // pool, whose ring a pooled receive selects from).
        cx.submit_op(sqe, id).map_err(|e| os_errno(&e))?;
        op.kernel = true;
        Ok(())
    }

    /// Wait for `op`'s readiness edge (epoll). Returns the errno if the
    /// fd cannot be watched.
    fn wait_ready(
        &mut self,
        cx: &mut Context<'_>,
        id: u64,
        fd: RawFd,
        dir: Interest,
    ) -> Result<(), i32> {
        let w = self.waiters.entry(fd).or_default();
        let seen = w.registered;
        match dir {
            Interest::Write => w.write.push(id),
            _ => w.read.push(id),
        }
        let want = match (w.read.is_empty(), w.write.is_empty()) {
            (false, false) => Interest::Both,
            (true, false) => Interest::Write,
            _ => Interest::Read,
        };
        let payload = FD_BIT | u64::from(fd as u32);
        // An fd seen before is most likely still registered: MOD first.
        let res = if seen {
            cx.rewatch_fd(fd, want, payload)
        } else {
            cx.watch_fd(fd, want, payload)
        };
        if let Err(e) = res {
            self.unwait(fd, id);
            return Err(os_errno(&e));
        }
        if let Some(w) = self.waiters.get_mut(&fd) {
            w.registered = true;
        }
        Ok(())
    }

    fn unwait(&mut self, fd: RawFd, id: u64) {
        if let Some(w) = self.waiters.get_mut(&fd) {
            w.read.retain(|&x| x != id);
            w.write.retain(|&x| x != id);
        }
    }

    /// An op on `fd` ended with `result`: if that is the end of the fd's
    /// stream (end of file, or an error other than a cancel) and nothing
    /// else waits on the fd, forget its registration ([`Waiters::registered`]).
    fn stream_ended(&mut self, fd: RawFd, result: i64) {
        if result > 0 || result == -i64::from(libc::ECANCELED) {
            return;
        }
        if let Some(w) = self.waiters.get_mut(&fd) {
            if w.read.is_empty() && w.write.is_empty() {
                w.registered = false;
            }
        }
    }

    /// Single-shot `id` reached its final result: report it through its
    /// knote, or, with no knote left, clean up (an accepted fd nobody
    /// will see is closed).
    fn finish(&mut self, cx: &mut Context<'_>, t: &mut Table, id: u64, result: i64) {
        let Some(op) = t.get(id) else { return };
        op.st = St::Done;
        op.kernel = false;
        op.result = result;
        self.stream_ended(op.fd, result);
        if let Kind::Sendfile { pipe, phase, .. } = &mut op.kind {
            // The kernel is done with the pipe: back to the idle list if
            // it is empty (the last step drained it: phase 0; a step that
            // left bytes in it dropped it already). The file is released
            // with the op, once its event is out.
            if let Some(p) = pipe.take() {
                if *phase == 0 && self.pipes.len() < 64 {
                    self.pipes.push(p);
                }
            }
        }
        if let Some(kn) = op.knote {
            if let Some(k) = cx.try_knote_mut(kn) {
                k.set_data(result);
                cx.activate(kn);
                return;
            }
        }
        if matches!(op.kind, Kind::Accept) && result >= 0 {
            close_fd(result);
            op.result = -i64::from(libc::ECANCELED);
        }
        op.delivered = true;
        t.maybe_free(id);
    }

    /// Cancel epoll op `id` (pending, never in the kernel) at once: off
    /// its fd's waiter list and final with `-ECANCELED` (a send: the bytes
    /// sent, if any).
    fn cancel_now(&mut self, cx: &mut Context<'_>, t: &mut Table, id: u64) {
        let Some(op) = t.get(id) else { return };
        if op.kind.multi() {
            // `end` takes it off the waiter list and out of starvation.
            self.end(cx, t, id, -i64::from(libc::ECANCELED));
            return;
        }
        let (fd, sent) = (op.fd, op.sent);
        self.unwait(fd, id);
        self.finish(cx, t, id, partial(sent, libc::ECANCELED));
    }

    /// Multishot `id` ended: queue its last result and report it, or,
    /// with no knote left, discard everything.
    fn end(&mut self, cx: &mut Context<'_>, t: &mut Table, id: u64, last: i64) {
        let Some(op) = t.get(id) else { return };
        op.st = St::Done;
        op.kernel = false;
        op.starved = false;
        let (fd, watching) = (op.fd, op.watching);
        op.watching = false;
        if watching {
            self.unwait(fd, id);
        }
        self.stream_ended(fd, last);
        let kn = op.knote.filter(|&kn| cx.try_knote_mut(kn).is_some());
        match kn {
            Some(kn) => {
                t.push_res(id, last, NIL);
                cx.activate(kn);
            }
            None => {
                t.discard_results(id);
                if let Some(op) = t.get(id) {
                    op.delivered = true;
                }
                t.maybe_free(id);
            }
        }
    }

    /// Queue a result of multishot `id` (or release it if nobody will
    /// see it). Returns whether it was queued.
    fn deliver(cx: &mut Context<'_>, t: &mut Table, id: u64, res: i64, bid: u32) -> bool {
        let Some(op) = t.get(id) else { return false };
        let accept = matches!(op.kind, Kind::AcceptMulti);
        match op.knote.filter(|&kn| cx.try_knote_mut(kn).is_some()) {
            Some(kn) if !op.cancel || res >= 0 => {
                t.push_res(id, res, bid);
                cx.activate(kn);
                true
            }
            _ => {
                t.release(accept, res, bid);
                false
            }
        }
    }

    /// Drive epoll multishot `id` until it would block, starves or ends.
    /// Without `drain`, a short receive counts as drained (the next bytes
    /// make a new edge); with it (the edge said hang-up, or no edge led
    /// here) only `EAGAIN` does, so a pending end of file is not missed.
    fn multi_attempt(&mut self, cx: &mut Context<'_>, t: &mut Table, id: u64, drain: bool) {
        let Some(op) = t.get(id) else { return };
        let (fd, accept) = (op.fd, matches!(op.kind, Kind::AcceptMulti));
        let outcome = loop {
            if accept {
                // SAFETY: null address pointers are allowed by accept4.
                let r = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if r >= 0 {
                    Local::deliver(cx, t, id, i64::from(r), NIL);
                    continue;
                }
                match errno() {
                    libc::EINTR | libc::ECONNABORTED => continue,
                    e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => break Multi::Wait,
                    e => break Multi::End(-i64::from(e)),
                }
            }
            let Some(p) = t.pool.as_mut() else {
                break Multi::End(-i64::from(libc::EINVAL));
            };
            let Some(bid) = p.take() else {
                break Multi::Starved;
            };
            let size = p.size() as usize;
            // SAFETY: `bid` was just taken from the pool: its `size` bytes
            // are ours to write.
            let n = unsafe { libc::recv(fd, p.addr(bid).cast(), size, 0) };
            if n > 0 {
                Local::deliver(cx, t, id, n as i64, u32::from(bid));
                if (n as usize) < size && !drain {
                    // A short read drained the socket; new bytes (or a
                    // FIN) make a new edge.
                    break Multi::Wait;
                }
                continue;
            }
            let e = errno();
            p.put(bid);
            if n == 0 {
                break Multi::End(0);
            }
            match e {
                libc::EINTR => continue,
                e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => break Multi::Wait,
                e => break Multi::End(-i64::from(e)),
            }
        };
        match outcome {
            Multi::End(r) => self.end(cx, t, id, r),
            Multi::Wait | Multi::Starved => {
                let Some(op) = t.get(id) else { return };
                if matches!(outcome, Multi::Starved) && !op.starved {
                    op.starved = true;
                    self.starved.push(id);
                    self.retry_at.get_or_insert_with(|| Instant::now() + RETRY);
                }
                if !op.watching {
                    op.watching = true;
                    if let Err(e) = self.wait_ready(cx, id, fd, Interest::Read) {
                        if let Some(op) = t.get(id) {
                            op.watching = false;
                        }
                        self.end(cx, t, id, -i64::from(e));
                    }
                }
            }
        }
    }

    /// Re-arm starved receives if buffers came back.
    fn retry_starved(&mut self, cx: &mut Context<'_>, t: &mut Table) {
        if self.starved.is_empty() {
            self.retry_at = None;
            return;
        }
        let mut list = std::mem::take(&mut self.starved);
        let uring = cx.backend() == Backend::IoUring;
        let mut i = 0;
        while i < list.len() {
            let id = list[i];
            let avail = t.pool.as_ref().map_or(0, Pool::available);
            match t.get(id) {
                Some(op) if op.starved && op.st == St::Pending => {
                    if avail == 0 {
                        i += 1;
                        continue;
                    }
                    op.starved = false;
                    list.swap_remove(i);
                    if uring {
                        if let Err(e) = self.submit_ring(cx, t, id) {
                            self.end(cx, t, id, -i64::from(e));
                        }
                    } else {
                        self.multi_attempt(cx, t, id, true);
                    }
                }
                _ => {
                    list.swap_remove(i);
                }
            }
        }
        // `multi_attempt` may have starved some again.
        list.append(&mut self.starved);
        self.starved = list;
        // A deadline already set stands (`expire` clears it first): no
        // clock read per event while receives stay starved.
        if self.starved.is_empty() {
            self.retry_at = None;
        } else {
            self.retry_at.get_or_insert_with(|| Instant::now() + RETRY);
        }
    }

    /// A CQE of single-shot `id` (io_uring).
    fn single_cqe(&mut self, cx: &mut Context<'_>, t: &mut Table, id: u64, result: i32) {
        let Some(op) = t.get(id) else { return };
        op.kernel = false;
        // Cancelled by the kernel, not by the user: the submitting thread
        // exited and nothing moved (see the module docs). Also a splice
        // interrupted (`EINTR`) before moving anything.
        let kernel_cancel = !op.cancel
            && (result == -libc::ECANCELED
                || (result == -libc::EINTR && matches!(op.kind, Kind::Sendfile { .. })))
            && op.resubmits < MAX_RESUBMITS;
        let fin = if kernel_cancel {
            op.resubmits += 1;
            None
        } else {
            ring_step(op, result)
        };
        match fin {
            Some(r) => self.finish(cx, t, id, r),
            None => {
                if let Err(e) = self.submit_ring(cx, t, id) {
                    let sent = t.get(id).map_or(0, |o| o.sent);
                    self.finish(cx, t, id, partial(sent, e));
                }
            }
        }
    }

    /// A CQE of multishot `id` (io_uring).
    fn multi_cqe(
        &mut self,
        cx: &mut Context<'_>,
        t: &mut Table,
        id: u64,
        result: i32,
        more: bool,
        bid: u32,
    ) {
        let Some(op) = t.get(id) else { return };
        let accept = matches!(op.kind, Kind::AcceptMulti);
        let cancel = op.cancel;
        let res = i64::from(result);
        // The result itself, if it carries something.
        if accept && result >= 0 {
            Local::deliver(cx, t, id, res, NIL);
        } else if !accept && result > 0 && bid != NIL {
            Local::deliver(cx, t, id, res, bid);
        } else if bid != NIL {
            // A buffer with nothing in it (end of file, an error).
            if let Some(p) = &mut t.pool {
                p.put(bid as u16);
            }
        }
        if more {
            return;
        }
        // The multishot request ended.
        let avail = t.pool.as_ref().map_or(0, Pool::available);
        let Some(op) = t.get(id) else { return };
        op.kernel = false;
        let last = if cancel {
            Some(-i64::from(libc::ECANCELED))
        } else {
            match result {
                0 if !accept => Some(0),
                // Ended after a success (a full CQ, a kernel limit): go on.
                r if r >= 0 => None,
                e if e == -libc::ENOBUFS && !accept => {
                    if avail == 0 {
                        op.starved = true;
                        self.starved.push(id);
                        self.retry_at.get_or_insert_with(|| Instant::now() + RETRY);
                        return;
                    }
                    None
                }
                e if e == -libc::ECANCELED && op.resubmits < MAX_RESUBMITS => {
                    op.resubmits += 1;
                    None
                }
                e if e == -libc::EINTR || e == -libc::EAGAIN => None,
                e if accept && e == -libc::ECONNABORTED => None,
                e => Some(i64::from(e)),
            }
        };
        match last {
            Some(r) => self.end(cx, t, id, r),
            None => {
                if let Err(e) = self.submit_ring(cx, t, id) {
                    self.end(cx, t, id, -i64::from(e));
                }
            }
        }
    }
}

impl Storage for AioStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Aio]
    }

    /// Report a single-shot op only once it is final: the queue re-checks
    /// a knote after every change (a cancel request is one), and an op
    /// still in flight has nothing to report. A multishot op reports how
    /// many results are queued (none: not reported), with `EOF` (and
    /// `ONESHOT`, so its knote goes) once its last result is among them.
    fn event(&mut self, cx: &mut Context<'_>, kn: KnoteId, out: &mut Kevent) -> bool {
        *out = cx.knote(kn).to_event();
        let mut t = lock(&self.shared.table);
        let Some(op) = t.get(out.ident) else {
            return false;
        };
        if !op.kind.multi() {
            return op.st == St::Done;
        }
        if op.st != St::Done && op.q.len == 0 {
            return false;
        }
        out.data = i64::from(op.q.len);
        if op.st == St::Done {
            out.flags |= Flags::EOF;
            cx.knote_mut(kn).set_flags(Flags::ONESHOT, true);
        }
        true
    }

    fn attach(&mut self, cx: &mut Context<'_>, kn: KnoteId) -> Result<(), Errno> {
        if cx.knote(kn).sdata() != self.tag {
            // An op id of another handle (or a hand-made change).
            return Err(libc::ENOENT);
        }
        let id = cx.knote(kn).ident();
        let mut t = lock(&self.shared.table);
        let op = t.get(id).ok_or(libc::ENOENT)?;
        if op.st != St::New {
            return Err(libc::EEXIST);
        }
        op.knote = Some(kn);
        op.st = St::Pending;
        if let Err(e) = self.io.start(cx, &mut t, id) {
            if let Some(op) = t.get(id) {
                op.st = St::New;
                op.knote = None;
                op.kernel = false;
            }
            return Err(e);
        }
        if !self.io.starved.is_empty() {
            self.io.retry_starved(cx, &mut t);
        }
        Ok(())
    }

    fn modify(&mut self, cx: &mut Context<'_>, kn: KnoteId, change: &Kevent) -> Result<(), Errno> {
        if change.fflags & NOTE_CANCEL == 0 {
            return Err(libc::EINVAL);
        }
        if change.data != self.tag {
            return Err(libc::ENOENT);
        }
        let id = cx.knote(kn).ident();
        let mut t = lock(&self.shared.table);
        let Some(op) = t.get(id) else { return Ok(()) };
        if op.st != St::Pending || op.cancel {
            return Ok(());
        }
        op.cancel = true;
        if op.kernel {
            cx.cancel_op(id).map_err(|e| os_errno(&e))?;
            return Ok(());
        }
        self.io.cancel_now(cx, &mut t, id);
        Ok(())
    }

    fn detach(&mut self, cx: &mut Context<'_>, kn: KnoteId) {
        let id = cx.knote(kn).ident();
        let mut t = lock(&self.shared.table);
        let Some(op) = t.get(id) else { return };
        if op.knote != Some(kn) {
            return;
        }
        op.knote = None;
        match op.st {
            St::Done => {
                op.delivered = true;
                t.maybe_free(id);
            }
            St::New => {}
            St::Pending if op.kernel => {
                // Deleted before completion: cancel; the final completion
                // cleans up (no knote).
                op.cancel = true;
                let _ = cx.cancel_op(id);
            }
            St::Pending => self.io.cancel_now(cx, &mut t, id),
        }
    }

    fn os_event(&mut self, cx: &mut Context<'_>, payload: u64, ready: Readiness) {
        if payload & FD_BIT == 0 {
            return;
        }
        let fd = (payload & 0xffff_ffff) as u32 as RawFd;
        let mut t = lock(&self.shared.table);
        let io = &mut self.io;
        let err = Readiness::ERROR | Readiness::HUP;
        for write in [false, true] {
            let hit = if write {
                ready.any(Readiness::WRITABLE | err)
            } else {
                ready.any(Readiness::READABLE | Readiness::RDHUP | err)
            };
            if !hit {
                continue;
            }
            let Some(w) = io.waiters.get(&fd) else {
                return;
            };
            let mut ids = std::mem::take(&mut io.scratch);
            ids.clear();
            ids.extend_from_slice(if write { &w.write } else { &w.read });
            for &id in &ids {
                let Some(op) = t.get(id) else {
                    io.unwait(fd, id);
                    continue;
                };
                if op.kind.multi() {
                    if !op.starved {
                        io.multi_attempt(cx, &mut t, id, ready.any(Readiness::RDHUP | err));
                    }
                    continue;
                }
                if let Try::Done(r) = attempt(op) {
                    io.unwait(fd, id);
                    io.finish(cx, &mut t, id, r);
                }
            }
            io.scratch = ids;
        }
        if !io.starved.is_empty() {
            io.retry_starved(cx, &mut t);
        }
    }

    fn completion(&mut self, cx: &mut Context<'_>, payload: u64, result: i32, flags: u32) {
        let id = payload;
        let mut t = lock(&self.shared.table);
        let more = cqueue::more(flags);
        // Pool ids stay below 32768, so the buffer id never reaches bit
        // 31 (the core's completion marker, masked off before this call).
        let bid = match (cqueue::buffer_select(flags), &mut t.pool) {
            (Some(b), Some(p)) => {
                if p.taken_by_kernel(b) {
                    u32::from(b)
                } else {
                    NIL
                }
            }
            _ => NIL,
        };
        let multi = match t.get(id) {
            Some(op) => op.kind.multi(),
            None => {
                // A CQE of an op already gone: give its buffer back.
                if let (true, Some(p)) = (bid != NIL, &mut t.pool) {
                    p.put(bid as u16);
                }
                return;
            }
        };
        if multi {
            self.io.multi_cqe(cx, &mut t, id, result, more, bid);
        } else {
            if bid != NIL {
                if let Some(p) = &mut t.pool {
                    p.put(bid as u16);
                }
            }
            self.io.single_cqe(cx, &mut t, id, result);
        }
        if !self.io.starved.is_empty() {
            self.io.retry_starved(cx, &mut t);
        }
    }

    fn timed(&self) -> bool {
        true
    }

    /// While receives are starved of pool buffers: when to look again.
    fn deadline(&self) -> Option<Instant> {
        self.io.retry_at
    }

    fn expire(&mut self, cx: &mut Context<'_>, now: Instant) {
        let mut t = lock(&self.shared.table);
        if self.io.retry_at.is_some_and(|at| at <= now) {
            self.io.retry_at = None;
        }
        self.io.retry_starved(cx, &mut t);
    }
}

impl Drop for AioStorage {
    fn drop(&mut self) {
        let mut t = lock(&self.shared.table);
        let mut kernel = false;
        for op in t.slots.iter_mut().flatten() {
            if op.kernel {
                kernel = true;
                // The queue goes away with this op in the kernel: its
                // buffer may still be written. Leak it, never free it.
                if let Some(b) = op.buf.take() {
                    std::mem::forget(b);
                }
                if let Kind::Sendfile { pipe, .. } = &mut op.kind {
                    drop(pipe.take());
                }
                op.kernel = false;
                op.st = St::Done;
                op.result = -i64::from(libc::ECANCELED);
                op.delivered = true;
            }
        }
        if kernel {
            if let Some(p) = &mut t.pool {
                // A receive may still pick a buffer from the ring.
                p.leak();
            }
        }
    }
}
