//! `--mode readiness` (the default): non-blocking reads and writes on
//! `READ`/`WRITE` knotes. The listener's knote is edge-triggered and
//! carries the backlog length; a connection's `READ` knote is edge and
//! `NODATA` (a short read means the socket is drained); `WRITE` is a
//! oneshot armed only when a response did not fit in the socket.
//!
//! Responses go out with as few syscalls as the bytes allow: the common
//! one (HTTP/1.1 keep-alive GET or HEAD) is one `send` of a slice of the
//! cache entry's buffer; the other variants are the head (copied into the
//! connection's buffer with the current `Date`) and the cached body in one
//! `sendmsg`; `--sendfile on` sends the head with `MSG_MORE`, then the
//! file with `sendfile(2)`. A file that shrank under its `sendfile`
//! finishes from the cached body (the version the head describes), or the
//! connection closes.

use crate::request::{Body, Reply, RBUF};
use crate::worker::{self, Base, Config, Mode, Refusal, U_LISTENER};
use kevent::kevent_net::{Interest, KnoteOpts, TcpListener, TcpStream};
use kevent::{Filter, Kevent, Kqueue};
use std::io::{self, IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use crate::cache::{ConnHdr, Entry};
use crate::request::render_error;

/// What is left to send of the current response.
#[derive(Debug)]
enum Pending {
    None,
    /// The hot path: `entry.ka[off..end]` (keep-alive head, and the body
    /// unless `then_file`), then the file by `sendfile` if `then_file`.
    Whole {
        entry: Arc<Entry>,
        off: usize,
        end: usize,
        then_file: bool,
    },
    /// The connection's `out` (a head, or a whole error response) from
    /// `off`, then the body: `off` counts over `out` followed by it.
    Out {
        off: usize,
        body: Body,
    },
    /// `sendfile` of a cached entry's file, bytes `off..end`.
    File {
        entry: Arc<Entry>,
        off: i64,
        end: i64,
    },
}

#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    gen: u32,
    rbuf: Box<[u8]>,
    rlen: usize,
    out: Vec<u8>,
    pending: Pending,
    /// Close once the pending response is out.
    close_after: bool,
    /// Write side shut; waiting for the peer's EOF.
    closing: bool,
    write_armed: bool,
    last: Instant,
    req_start: Instant,
}

/// One readiness worker: a queue, a listener, its connections.
#[derive(Debug)]
pub(crate) struct Worker {
    base: Base<Conn>,
    listener: Option<TcpListener>,
    spare_bufs: Vec<(Box<[u8]>, Vec<u8>)>,
}

impl Worker {
    /// A worker on `kq` accepting on `listener`; `signals`: this one
    /// takes SIGINT/SIGTERM and tells `others`.
    pub(crate) fn new(
        kq: Arc<Kqueue>,
        mut listener: TcpListener,
        cfg: &Config,
        others: Vec<Arc<Kqueue>>,
        signals: bool,
    ) -> io::Result<Worker> {
        listener.register(&kq, Interest::READ, KnoteOpts::edge(U_LISTENER))?;
        Ok(Worker {
            base: Base::new(kq, cfg, u64::MAX, others, signals)?,
            listener: Some(listener),
            spare_bufs: Vec::new(),
        })
    }

    /// The listener's knote is `CLEAR` and its `data` is the backlog length
    /// when the event was collected: accept that many (no `EAGAIN` call);
    /// a connection arriving later makes a new edge.
    fn accept(&mut self, backlog: i64) {
        let budget = backlog.max(1);
        for _ in 0..budget {
            let Some(l) = &self.listener else { return };
            match l.accept() {
                Ok((s, _)) => self.add_conn(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // The knote is edge-triggered: refuse the rest of the
                    // backlog too rather than leave it without an edge.
                    match self.base.reserve.refuse_one(l, &mut self.base.stats) {
                        Refusal::Refused => {}
                        Refusal::Empty => return,
                        Refusal::NoReserve => {
                            // Stop the listener's knote briefly rather
                            // than spin on a level event we cannot clear.
                            if let Some(l) = &mut self.listener {
                                let _ = l.deregister(Interest::READ);
                            }
                            self.base.resume_at = Some(self.base.now + worker::ACCEPT_PAUSE);
                            return;
                        }
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn add_conn(&mut self, s: TcpStream) {
        let (slot, gen) = self.base.conns.reserve();
        let now = self.base.now;
        let (rbuf, out) = self
            .spare_bufs
            .pop()
            .unwrap_or_else(|| (vec![0u8; RBUF].into_boxed_slice(), Vec::with_capacity(512)));
        let mut c = Conn {
            stream: s,
            gen,
            rbuf,
            rlen: 0,
            out,
            pending: Pending::None,
            close_after: false,
            closing: false,
            write_armed: false,
            last: now,
            req_start: now,
        };
        let udata = worker::conn_udata(gen, slot);
        if c.stream
            .register(
                &self.base.kq,
                Interest::READ,
                KnoteOpts::edge(udata).with_nodata(),
            )
            .is_err()
        {
            self.spare_bufs.push((c.rbuf, c.out));
            self.base.conns.unreserve(slot);
            return;
        }
        self.base.stats.conns += 1;
        self.base.conns.fill(slot, c);
        // The request is usually there already (the client sent it right
        // after its handshake): read now rather than wait for the edge.
        self.drive(slot);
    }

    fn close(&mut self, slot: u32) {
        if let Some(c) = self.base.conns.take(slot) {
            let Conn {
                stream,
                rbuf,
                mut out,
                ..
            } = c;
            // No EV_DELETE: closing drops the knote, as on FreeBSD.
            stream.close_unregistered();
            out.clear();
            self.spare_bufs.push((rbuf, out));
        }
    }

    /// Make all the progress possible on a connection: flush, parse,
    /// respond, read, until it would block.
    fn drive(&mut self, slot: u32) {
        loop {
            if !self.respond_all(slot) {
                self.close(slot);
                return;
            }
            let now = self.base.now;
            let c = self.base.conns.live_mut(slot);
            if !matches!(c.pending, Pending::None) {
                // Waiting for the WRITE knote.
                return;
            }
            if c.closing {
                // Discard input until the peer's EOF.
                c.rlen = 0;
            } else if c.rlen == c.rbuf.len() {
                return;
            }
            let asked = c.rbuf.len() - c.rlen;
            match c.stream.read(&mut c.rbuf[c.rlen..]) {
                Ok(0) => {
                    self.close(slot);
                    return;
                }
                Ok(n) => {
                    // Closing: input is discarded, and it does not keep
                    // the connection: the idle limit counts from the
                    // start of the close (as nginx's lingering_time).
                    if c.closing {
                        continue;
                    }
                    c.last = now;
                    if c.rlen == 0 {
                        c.req_start = now;
                    }
                    c.rlen += n;
                    if n < asked {
                        // A short read drained the receive queue: answer
                        // and wait for the next edge (no EAGAIN read).
                        if !self.respond_all(slot) {
                            self.close(slot);
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(slot);
                    return;
                }
            }
        }
    }

    /// Answer every complete request buffered, flushing as we go. Returns
    /// false if the connection must close now.
    fn respond_all(&mut self, slot: u32) -> bool {
        let draining = self.base.draining.is_some();
        let now = self.base.now;
        loop {
            let Base {
                kq,
                http,
                stats,
                conns,
                ..
            } = &mut self.base;
            let c = conns.live_mut(slot);
            if !matches!(c.pending, Pending::None) {
                match flush(c) {
                    Ok(true) => {
                        if c.close_after {
                            c.close_after = false;
                            start_closing(c, now);
                            return true;
                        }
                    }
                    Ok(false) => {
                        if !c.write_armed {
                            let udata = worker::conn_udata(c.gen, slot);
                            if c.stream
                                .register(&*kq, Interest::WRITE, KnoteOpts::oneshot(udata))
                                .is_err()
                            {
                                return false;
                            }
                            c.write_armed = true;
                        }
                        return true;
                    }
                    Err(_) => return false,
                }
            }
            if c.closing {
                return true;
            }
            if c.rlen == 0 {
                // While draining, a connection closes once its response
                // is out (even one begun before the signal, when
                // keep-alive was promised).
                if draining {
                    start_closing(c, now);
                }
                return true;
            }
            c.out.clear();
            let Some(a) = http.respond(&c.rbuf[..c.rlen], draining, stats, &mut c.out) else {
                return true;
            };
            consume(c, a.consumed);
            c.close_after = a.close;
            c.pending = match a.reply {
                Reply::Out(body) => Pending::Out { off: 0, body },
                Reply::Whole {
                    entry,
                    end,
                    then_file,
                } => Pending::Whole {
                    entry,
                    off: 0,
                    end,
                    then_file,
                },
            };
        }
    }
}

impl Mode for Worker {
    type Conn = Conn;

    fn base(&mut self) -> &mut Base<Conn> {
        &mut self.base
    }

    fn listener_event(&mut self, ev: &Kevent) {
        self.accept(ev.data);
    }

    fn conn_event(&mut self, udata: u64, ev: &Kevent) {
        let (slot, gen) = worker::split_udata(udata);
        match self.base.conns.get_mut(slot) {
            Some(c) if c.gen == gen => {
                if ev.filter == Filter::Write {
                    c.write_armed = false;
                }
            }
            _ => return,
        }
        if ev.filter == Filter::Read && ev.is_eof() && ev.fflags != 0 {
            // Reset (the socket error is in fflags): nothing more can be
            // sent. A plain EOF is read to the end by `drive` (the READ
            // knote is NODATA: `data` says nothing of what is left).
            self.close(slot);
            return;
        }
        self.drive(slot);
    }

    fn sweep(&mut self, slot: u32) {
        let b = &mut self.base;
        let Some(c) = b.conns.get_mut(slot) else {
            return;
        };
        let waiting_request = c.rlen > 0 && matches!(c.pending, Pending::None) && !c.closing;
        if !worker::expired(b.now, b.idle, waiting_request, c.req_start, c.last) {
            return;
        }
        b.stats.idle_closed += 1;
        if waiting_request {
            // An unfinished request: tell the client (408), then close
            // gracefully — shut our side, discard what the client still
            // sends until its EOF (a close with unread input would reset
            // the connection and could destroy the 408 before the client
            // reads it). The closing state has its own idle limit.
            c.out.clear();
            render_error(&mut c.out, 408, b.http.cache.date(), ConnHdr::Close, false);
            if matches!(send(&c.stream, &c.out, 0), Ok(Some(n)) if n == c.out.len()) {
                c.out.clear();
                c.rlen = 0;
                start_closing(c, b.now);
                self.drive(slot);
                return;
            }
        }
        self.close(slot);
    }

    fn stop_accepting(&mut self) {
        self.listener = None;
    }

    fn drain(&mut self, slot: u32) {
        if matches!(self.base.conns.get(slot), Some(c) if c.rlen == 0 && matches!(c.pending, Pending::None))
        {
            self.close(slot);
        }
    }

    fn resume(&mut self) {
        if let Some(l) = &mut self.listener {
            let _ = l.register(&self.base.kq, Interest::READ, KnoteOpts::edge(U_LISTENER));
        }
    }
}

/// Shut the write side and discard input until the peer's EOF; the
/// closing state's idle limit counts from `now`.
fn start_closing(c: &mut Conn, now: Instant) {
    let _ = c.stream.shutdown(Shutdown::Write);
    c.closing = true;
    c.last = now;
}

fn consume(c: &mut Conn, n: usize) {
    let n = n.min(c.rlen);
    c.rbuf.copy_within(n..c.rlen, 0);
    c.rlen -= n;
    if c.rlen > 0 {
        c.req_start = c.last;
    }
}

/// Write what is pending. `Ok(true)` when all of it is out.
fn flush(c: &mut Conn) -> io::Result<bool> {
    loop {
        match &mut c.pending {
            Pending::None => return Ok(true),
            Pending::Whole {
                entry,
                off,
                end,
                then_file,
            } => {
                let flags = if *then_file { libc::MSG_MORE } else { 0 };
                let Some(n) = send(&c.stream, &entry.ka[*off..*end], flags)? else {
                    return Ok(false);
                };
                *off += n;
                if *off < *end {
                    continue;
                }
                c.pending = if *then_file {
                    let end = entry.len as i64;
                    Pending::File {
                        entry: entry.clone(),
                        off: 0,
                        end,
                    }
                } else {
                    Pending::None
                };
            }
            Pending::Out { off, body } => {
                let head = c.out.len();
                let n = match body {
                    Body::Mem(e) => {
                        let b = e.body().unwrap_or(&[]);
                        if *off < head {
                            sendv(&c.stream, &[&c.out[*off..], b])?
                        } else {
                            send(&c.stream, &b[*off - head..], 0)?
                        }
                    }
                    Body::File(_) => send(&c.stream, &c.out[*off..], libc::MSG_MORE)?,
                    Body::None => send(&c.stream, &c.out[*off..], 0)?,
                };
                let Some(n) = n else { return Ok(false) };
                *off += n;
                let total = head
                    + match body {
                        Body::Mem(e) => e.body().map_or(0, <[u8]>::len),
                        _ => 0,
                    };
                if *off < total {
                    continue;
                }
                c.pending = match std::mem::replace(body, Body::None) {
                    Body::File(entry) => {
                        let end = entry.len as i64;
                        Pending::File { entry, off: 0, end }
                    }
                    _ => Pending::None,
                };
                c.out.clear();
            }
            Pending::File { entry, off, end } => {
                let mut o: libc::off_t = *off;
                let (sock, file) = (c.stream.as_raw_fd(), entry.file.as_raw_fd());
                let want = (*end - *off) as usize;
                // SAFETY: both fds are open for the call; `o` is a valid
                // offset pointer.
                let Some(n) = sent(|| unsafe { libc::sendfile(sock, file, &mut o, want) })? else {
                    return Ok(false);
                };
                if n == 0 {
                    // The file shrank under us. If its body is cached (the
                    // version the head describes), finish from that copy;
                    // else the promised length cannot be kept.
                    if entry.body_cached {
                        let rest = *off as usize;
                        let e = entry.clone();
                        c.out.clear();
                        c.pending = Pending::Out {
                            off: rest,
                            body: Body::Mem(e),
                        };
                        continue;
                    }
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                }
                if o < *end {
                    *off = o;
                } else {
                    c.pending = Pending::None;
                }
            }
        }
    }
}

/// The result of a send-like syscall (`-1` and errno on failure):
/// `Ok(None)` when it would block; `EINTR` retried.
fn sent(mut call: impl FnMut() -> isize) -> io::Result<Option<usize>> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// `sendmsg(2)` of several slices without SIGPIPE; `Ok(None)` when it
/// would block.
fn sendv(s: &TcpStream, bufs: &[&[u8]; 2]) -> io::Result<Option<usize>> {
    let iov = [IoSlice::new(bufs[0]), IoSlice::new(bufs[1])];
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    // SAFETY: `msg` points at `iov`, whose slices are valid for reads for
    // the duration of the call.
    sent(|| unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
}

/// `send(2)` without SIGPIPE; `Ok(None)` when it would block.
fn send(s: &TcpStream, buf: &[u8], flags: i32) -> io::Result<Option<usize>> {
    let flags = flags | libc::MSG_NOSIGNAL;
    // SAFETY: `buf` is valid for reads of its length for the call.
    sent(|| unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) })
}
