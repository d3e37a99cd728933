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
//! # Semantics
//!
//! Each operation is one `ONESHOT` knote: `ident` = the operation id
//! (never reused while the operation is in flight or its buffer not yet
//! taken), `data` = the result (bytes moved, the accepted fd) or `-errno`,
//! `udata` yours. The buffer is moved in and handed back by
//! [`Aio::take_buffer`] once the operation is final: a recv buffer comes
//! back with its length set to the bytes received (the whole capacity is
//! offered to the kernel), a send buffer unchanged.
//!
//! - **recv** receives once (`0` = end of file); **send** and **sendfile**
//!   send everything before completing (the result is short only on an
//!   error after some progress); **accept** returns a non-blocking,
//!   close-on-exec fd that the caller owns.
//! - [`Aio::cancel`] asks for an early end: the operation still completes
//!   with an event, `-ECANCELED` (or its result, if it had finished), and
//!   the buffer is returned only after that final completion.
//!
//! # Backends
//!
//! - **io_uring**: real ops in the queue's ring (`ACCEPT`, `RECV`, `SEND`
//!   with `MSG_WAITALL`, and `SPLICE` file → pipe → socket for sendfile),
//!   submitted with the queue's next wait in the same `io_uring_enter`.
//!   The kernel owns the buffer from submission to the final completion;
//!   if the queue is dropped with operations in flight their buffers are
//!   leaked, never freed under the kernel. The kernel holds the socket
//!   until the op ends: cancel before closing.
//! - **epoll**: the same API performed on readiness: the syscall is tried
//!   at once; on `EAGAIN` the fd's readiness edge is awaited and the
//!   syscall retried. On epoll an fd has one registration: do not mix AIO
//!   operations and `READ`/`WRITE` knotes on one fd.

use kevent_core::io_uring::{opcode, types};
use kevent_core::{Backend, Context, Errno, Filter, Flags, Interest, Kevent, KnoteId, Kqueue};
use kevent_core::{Readiness, Storage};
use rustc_hash::FxHashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// `fflags` of the change that asks the storage to cancel an operation.
const NOTE_CANCEL: u32 = 1;
/// Payload bit of an fd readiness watch (epoll); below it an op id.
const FD_BIT: u64 = 1 << 55;
/// Op generations stay below `FD_BIT`'s position.
const GEN_MAX: u32 = (1 << 23) - 1;
/// Bytes per splice round of a sendfile on io_uring (a pipe's default
/// capacity, so the file → pipe half never blocks).
const CHUNK: usize = 1 << 16;

/// What an operation does.
#[derive(Debug)]
enum Kind {
    Accept,
    Recv,
    Send,
    Sendfile {
        file: RawFd,
        offset: u64,
        len: usize,
        /// Bytes in the pipe (io_uring, between the two splices).
        chunk: usize,
        /// io_uring: 0 = file → pipe in flight, 1 = pipe → socket.
        phase: u8,
        pipe: Option<Pipe>,
    },
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
    /// Submitted (io_uring) or waiting for readiness (epoll).
    Pending,
    /// Final: `result` holds the outcome; the kernel is done with it.
    Done,
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
    /// An io_uring op is in flight: the buffer belongs to the kernel.
    kernel: bool,
    cancel: bool,
    /// Bytes sent so far (send, sendfile).
    sent: usize,
    /// The event went out (or will never: the knote was deleted).
    delivered: bool,
    udata: u64,
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Option<Op>>,
    free: Vec<u32>,
    next_gen: u32,
}

impl Table {
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
        let key = (id & 0xffff_ffff) as usize;
        let gen = (id >> 32) as u32;
        self.slots.get_mut(key)?.as_mut().filter(|op| op.gen == gen)
    }

    /// Free the slot once the event is out and nothing is left to take.
    fn maybe_free(&mut self, id: u64) {
        let key = (id & 0xffff_ffff) as u32;
        if let Some(op) = self.get(id) {
            if op.delivered && op.st == St::Done && op.buf.is_none() {
                self.slots[key as usize] = None;
                self.free.push(key);
            }
        }
    }
}

fn lock(t: &Mutex<Table>) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// A submission that did not happen: the error and the buffer, handed
/// back.
#[derive(Debug)]
pub struct SubmitError {
    /// Why (`EINVAL`: the queue has no AIO storage; `ENOENT`: the queue's
    /// AIO storage is not this handle's).
    pub error: io::Error,
    /// The buffer moved in, untouched.
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

/// The handle that submits operations to the queue holding its
/// [`AioStorage`]. Cheap to clone; usable from any thread.
#[derive(Clone, Debug)]
pub struct Aio {
    table: Arc<Mutex<Table>>,
}

impl Aio {
    /// A handle and the storage to install in a queue
    /// (`Builder::storage`); operations go to that queue only.
    pub fn new() -> (Aio, Box<dyn Storage>) {
        let table = Arc::new(Mutex::new(Table::default()));
        let storage = AioStorage {
            table: table.clone(),
            waiters: FxHashMap::default(),
            scratch: Vec::new(),
            pipes: Vec::new(),
        };
        (Aio { table }, Box::new(storage))
    }

    fn submit(
        &self,
        kq: &Kqueue,
        kind: Kind,
        fd: RawFd,
        buf: Option<Vec<u8>>,
        udata: u64,
    ) -> Result<u64, SubmitError> {
        let id = lock(&self.table).insert(Op {
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
        });
        let ch = Kevent::new(id, Filter::Aio, Flags::ADD | Flags::ONESHOT, 0, 0, udata);
        match kq.kevent(&[ch], &mut [], None) {
            Ok(_) => Ok(id),
            Err(error) => {
                // `attach` failed before submitting anything: the op is
                // still ours.
                let mut t = lock(&self.table);
                let key = (id & 0xffff_ffff) as u32;
                let buf = t.get(id).and_then(|op| op.buf.take()).unwrap_or_default();
                t.slots[key as usize] = None;
                t.free.push(key);
                Err(SubmitError { error, buf })
            }
        }
    }

    /// Accept a connection on the listening socket `fd`; `data` = the new
    /// fd (non-blocking, close-on-exec, yours to close).
    ///
    /// # Errors
    /// As [`SubmitError`]; errors of the accept itself come as `-errno` in
    /// the event.
    pub fn accept(&self, kq: &Kqueue, fd: RawFd, udata: u64) -> Result<u64, SubmitError> {
        self.submit(kq, Kind::Accept, fd, None, udata)
    }

    /// Receive once into `buf`'s whole capacity; `data` = bytes received,
    /// `0` at end of file.
    ///
    /// # Errors
    /// As [`SubmitError`], which hands `buf` back.
    pub fn recv(
        &self,
        kq: &Kqueue,
        fd: RawFd,
        buf: Vec<u8>,
        udata: u64,
    ) -> Result<u64, SubmitError> {
        self.submit(kq, Kind::Recv, fd, Some(buf), udata)
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
    /// of file). `file` must stay open until the completion.
    ///
    /// # Errors
    /// As [`SubmitError`].
    pub fn sendfile(
        &self,
        kq: &Kqueue,
        fd: RawFd,
        file: RawFd,
        offset: u64,
        len: usize,
        udata: u64,
    ) -> Result<u64, SubmitError> {
        let kind = Kind::Sendfile {
            file,
            offset,
            len,
            chunk: 0,
            phase: 0,
            pipe: None,
        };
        self.submit(kq, kind, fd, None, udata)
    }

    /// Ask for operation `op` to end early. It still completes with an
    /// event (`-ECANCELED`, or its result if it got there first). Returns
    /// whether the operation was still pending.
    ///
    /// # Errors
    /// The queue's error (`EBADF` once closed).
    pub fn cancel(&self, kq: &Kqueue, op: u64) -> io::Result<bool> {
        let udata = match lock(&self.table).get(op) {
            Some(o) if o.st != St::Done && !o.cancel => o.udata,
            _ => return Ok(false),
        };
        // A change sets the knote's udata: pass the op's own.
        let ch = Kevent::new(op, Filter::Aio, Flags::empty(), NOTE_CANCEL, 0, udata);
        match kq.kevent(&[ch], &mut [], None) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The buffer of a final operation (after its event), once; `None`
    /// while the kernel may still use it, for an operation without a
    /// buffer, or an unknown id. A recv buffer's length is the bytes
    /// received.
    pub fn take_buffer(&self, op: u64) -> Option<Vec<u8>> {
        let mut t = lock(&self.table);
        let o = t.get(op)?;
        if o.st != St::Done || o.kernel {
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

    /// Operations not yet freed (in flight, or final with a buffer not yet
    /// taken).
    pub fn in_flight(&self) -> usize {
        let t = lock(&self.table);
        t.slots.len() - t.free.len()
    }
}

/// Per-fd readiness waiters (epoll backend).
#[derive(Debug, Default)]
struct Waiters {
    read: Vec<u64>,
    write: Vec<u64>,
}

/// The storage behind [`Aio`] (`Filter::Aio`).
pub struct AioStorage {
    table: Arc<Mutex<Table>>,
    waiters: FxHashMap<RawFd, Waiters>,
    scratch: Vec<u64>,
    /// Idle pipes for sendfile on io_uring.
    pipes: Vec<Pipe>,
}

impl fmt::Debug for AioStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AioStorage")
            .field("waiting_fds", &self.waiters.len())
            .finish_non_exhaustive()
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn new_pipe() -> io::Result<Pipe> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
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

/// One non-blocking attempt of `op` (epoll backend).
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
                let buf = op.buf.as_mut().expect("recv owns a buffer");
                // SAFETY: the pointer and capacity describe the buffer's
                // allocation, which outlives the call.
                let r = unsafe { libc::recv(op.fd, buf.as_mut_ptr().cast(), buf.capacity(), 0) };
                if r >= 0 {
                    return Try::Done(r as i64);
                }
                (errno(), Interest::Read)
            }
            Kind::Send => {
                let buf = op.buf.as_ref().expect("send owns a buffer");
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
                file, offset, len, ..
            } => {
                if op.sent >= *len {
                    return Try::Done(op.sent as i64);
                }
                let mut off = *offset as libc::off_t;
                let want = (*len - op.sent).min(0x7fff_f000);
                // SAFETY: `off` is a live off_t the call updates.
                let r = unsafe { libc::sendfile(op.fd, *file, &mut off, want) };
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
        };
        match r {
            (libc::EINTR, _) => continue,
            (e, dir) if e == libc::EAGAIN || e == libc::EWOULDBLOCK => return Try::Again(dir),
            (e, _) => {
                return Try::Done(if op.sent > 0 {
                    op.sent as i64
                } else {
                    -i64::from(e)
                })
            }
        }
    }
}

impl AioStorage {
    /// Build and queue the ring op for `op`'s current step (io_uring).
    fn submit_ring(&mut self, cx: &mut Context<'_>, id: u64, op: &mut Op) -> Result<(), Errno> {
        let fd = types::Fd(op.fd);
        let sqe = match &mut op.kind {
            Kind::Accept => opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build(),
            Kind::Recv => {
                let buf = op.buf.as_mut().ok_or(libc::EINVAL)?;
                let cap = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
                opcode::Recv::new(fd, buf.as_mut_ptr(), cap).build()
            }
            Kind::Send => {
                let buf = op.buf.as_ref().ok_or(libc::EINVAL)?;
                let rest = &buf[op.sent.min(buf.len())..];
                let n = u32::try_from(rest.len()).unwrap_or(u32::MAX);
                opcode::Send::new(fd, rest.as_ptr(), n)
                    .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                    .build()
            }
            Kind::Sendfile {
                file,
                offset,
                len,
                chunk,
                phase,
                pipe,
            } => {
                if pipe.is_none() {
                    *pipe = Some(match self.pipes.pop() {
                        Some(p) => p,
                        None => new_pipe().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?,
                    });
                }
                let p = pipe.as_ref().ok_or(libc::EIO)?;
                if *phase == 0 {
                    let want = (*len - op.sent).min(CHUNK) as u32;
                    opcode::Splice::new(
                        types::Fd(*file),
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
        // and a storage dropped with it set leaks the buffer.
        cx.submit_op(sqe, id)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
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
        let seen = self.waiters.contains_key(&fd);
        let w = self.waiters.entry(fd).or_default();
        match dir {
            Interest::Write => w.write.push(id),
            _ => w.read.push(id),
        }
        let want = match (w.read.is_empty(), w.write.is_empty()) {
            (false, false) => Interest::Both,
            (true, false) => Interest::Write,
            _ => Interest::Read,
        };
        let payload = FD_BIT | (fd as u32 as u64);
        // An fd seen before is most likely still registered: MOD first.
        let res = if seen {
            cx.rewatch_fd(fd, want, payload)
        } else {
            cx.watch_fd(fd, want, payload)
        };
        if let Err(e) = res {
            let w = self.waiters.get_mut(&fd).expect("just inserted");
            w.read.retain(|&x| x != id);
            w.write.retain(|&x| x != id);
            return Err(e.raw_os_error().unwrap_or(libc::EIO));
        }
        Ok(())
    }

    fn unwait(&mut self, fd: RawFd, id: u64) {
        if let Some(w) = self.waiters.get_mut(&fd) {
            w.read.retain(|&x| x != id);
            w.write.retain(|&x| x != id);
        }
    }
}

/// `op` reached its final result: report it through its knote, or, with
/// no knote left, clean up (an accepted fd nobody will see is closed).
fn finish(cx: &mut Context<'_>, t: &mut Table, id: u64, result: i64) {
    let Some(op) = t.get(id) else { return };
    op.st = St::Done;
    op.kernel = false;
    op.result = result;
    if let Some(kn) = op.knote {
        if let Some(k) = cx.try_knote_mut(kn) {
            k.set_data(result);
            cx.activate(kn);
            return;
        }
    }
    if matches!(op.kind, Kind::Accept) && result >= 0 {
        // SAFETY: the accepted fd was never handed out; it is ours.
        drop(unsafe { OwnedFd::from_raw_fd(result as RawFd) });
        op.result = -i64::from(libc::ECANCELED);
    }
    op.delivered = true;
    t.maybe_free(id);
}

impl Storage for AioStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Aio]
    }

    /// Report an operation only once it is final: the queue re-checks a
    /// knote after every change (a cancel request is one), and an op
    /// still in flight has nothing to report.
    fn event(&mut self, cx: &mut Context<'_>, kn: KnoteId, out: &mut Kevent) -> bool {
        *out = cx.knote(kn).to_event();
        lock(&self.table)
            .get(out.ident)
            .is_some_and(|op| op.st == St::Done)
    }

    fn attach(&mut self, cx: &mut Context<'_>, kn: KnoteId) -> Result<(), Errno> {
        let id = cx.knote(kn).ident();
        let table = self.table.clone();
        let mut t = lock(&table);
        let op = t.get(id).ok_or(libc::ENOENT)?;
        if op.st != St::New {
            return Err(libc::EEXIST);
        }
        op.knote = Some(kn);
        op.st = St::Pending;
        if cx.backend() == Backend::IoUring {
            if let Err(e) = self.submit_ring(cx, id, op) {
                op.st = St::New;
                op.knote = None;
                return Err(e);
            }
            return Ok(());
        }
        match attempt(op) {
            Try::Done(r) => finish(cx, &mut t, id, r),
            Try::Again(dir) => {
                let fd = op.fd;
                if let Err(e) = self.wait_ready(cx, id, fd, dir) {
                    let r = match t.get(id) {
                        Some(op) if op.sent > 0 => op.sent as i64,
                        _ => -i64::from(e),
                    };
                    finish(cx, &mut t, id, r);
                }
            }
        }
        Ok(())
    }

    fn modify(&mut self, cx: &mut Context<'_>, kn: KnoteId, change: &Kevent) -> Result<(), Errno> {
        if change.fflags & NOTE_CANCEL == 0 {
            return Err(libc::EINVAL);
        }
        let id = cx.knote(kn).ident();
        let table = self.table.clone();
        let mut t = lock(&table);
        let Some(op) = t.get(id) else { return Ok(()) };
        if op.st != St::Pending || op.cancel {
            return Ok(());
        }
        op.cancel = true;
        if op.kernel {
            cx.cancel_op(id)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            return Ok(());
        }
        let (fd, sent) = (op.fd, op.sent);
        self.unwait(fd, id);
        let r = if sent > 0 {
            sent as i64
        } else {
            -i64::from(libc::ECANCELED)
        };
        finish(cx, &mut t, id, r);
        Ok(())
    }

    fn detach(&mut self, cx: &mut Context<'_>, kn: KnoteId) {
        let id = cx.knote(kn).ident();
        let table = self.table.clone();
        let mut t = lock(&table);
        let Some(op) = t.get(id) else { return };
        op.knote = None;
        match op.st {
            St::Done => {
                op.delivered = true;
                t.maybe_free(id);
            }
            St::New => {}
            St::Pending if op.kernel => {
                // Deleted before completion: cancel; the final completion
                // cleans up (`finish` with no knote).
                op.cancel = true;
                let _ = cx.cancel_op(id);
            }
            St::Pending => {
                let fd = op.fd;
                self.unwait(fd, id);
                finish(cx, &mut t, id, -i64::from(libc::ECANCELED));
            }
        }
    }

    fn os_event(&mut self, cx: &mut Context<'_>, payload: u64, ready: Readiness) {
        if payload & FD_BIT == 0 {
            return;
        }
        let fd = (payload & 0xffff_ffff) as u32 as RawFd;
        let table = self.table.clone();
        let mut t = lock(&table);
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
            let Some(w) = self.waiters.get_mut(&fd) else {
                return;
            };
            let list = if write { &mut w.write } else { &mut w.read };
            std::mem::swap(list, &mut self.scratch);
            let mut keep = std::mem::take(list);
            for &id in &self.scratch {
                let Some(op) = t.get(id) else { continue };
                match attempt(op) {
                    Try::Done(r) => finish(cx, &mut t, id, r),
                    Try::Again(_) => keep.push(id),
                }
            }
            self.scratch.clear();
            if let Some(w) = self.waiters.get_mut(&fd) {
                let list = if write { &mut w.write } else { &mut w.read };
                *list = keep;
            }
        }
    }

    fn completion(&mut self, cx: &mut Context<'_>, payload: u64, result: i32, _flags: u32) {
        let id = payload;
        let table = self.table.clone();
        let mut t = lock(&table);
        let Some(op) = t.get(id) else { return };
        op.kernel = false;
        let res = i64::from(result);
        let cancel = op.cancel;
        let mut again = false;
        let mut fin = None;
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
                        again = true;
                    } else {
                        // End of file (0), an error or a cancel: the pipe
                        // is empty unless a cancel raced a result.
                        if let Some(p) = pipe.take() {
                            if result <= 0 {
                                self.pipes.push(p);
                            }
                        }
                        fin = Some(if op.sent > 0 || result == 0 {
                            op.sent as i64
                        } else {
                            res
                        });
                    }
                } else if result > 0 {
                    op.sent += result as usize;
                    if result as usize == *chunk && op.sent < *len && !cancel {
                        *phase = 0;
                        again = true;
                    } else {
                        // A short splice leaves bytes in the pipe: drop it.
                        if let Some(p) = pipe.take() {
                            if result as usize == *chunk {
                                self.pipes.push(p);
                            }
                        }
                        fin = Some(op.sent as i64);
                    }
                } else {
                    drop(pipe.take());
                    fin = Some(if op.sent > 0 { op.sent as i64 } else { res });
                }
            }
            Kind::Send => {
                fin = Some(if result < 0 && op.sent > 0 {
                    op.sent as i64
                } else {
                    if result > 0 {
                        op.sent += result as usize;
                    }
                    res
                })
            }
            Kind::Accept | Kind::Recv => fin = Some(res),
        }
        if again {
            if let Err(e) = self.submit_ring(cx, id, op) {
                let r = if op.sent > 0 {
                    op.sent as i64
                } else {
                    -i64::from(e)
                };
                finish(cx, &mut t, id, r);
            }
            return;
        }
        if let Some(r) = fin {
            finish(cx, &mut t, id, r);
        }
    }
}

impl Drop for AioStorage {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        for op in t.slots.iter_mut().flatten() {
            if op.kernel {
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
    }
}
