//! `--mode aio`: the same server driven by network AIO completions
//! (`kevent_net::aio`) instead of readiness — the seed's `aio_accept`,
//! `aio_recv`, `aio_send`, `aio_sendfile`.
//!
//! Per worker thread: one queue holding an [`Aio`] storage, one multishot
//! accept on its listener, and per connection one pooled multishot
//! receive plus at most one send (or sendfile) in flight. On io_uring
//! those are real ring ops submitted with the wait (multishot `ACCEPT`,
//! `RECV` from the provided-buffer ring, `SEND`, `SPLICE`); on epoll the
//! same API runs on readiness.
//!
//! The HTTP behaviour is readiness mode's: requests go through the same
//! [`Responder`](crate::request::Responder) (parser, limits, cache,
//! answers), the same worker skeleton (`worker.rs`: idle sweep, 408 then
//! a graceful close, SIGINT/SIGTERM drain, the exit line) and the same
//! refusal of connections when out of descriptors. Only the I/O differs:
//!
//! - Receive chunks arrive in pool buffers and are copied into the
//!   connection's request buffer, then given back at once. Every complete
//!   request buffered is answered into one send buffer (pipelining: one
//!   send per batch); the hot path's slice of the cache entry, a head and
//!   a cached body are copied into it (a send owns its buffer). Bodies
//!   larger than `COPY_MAX`, all bodies with `--sendfile on`, and bodies
//!   not cached go by sendfile from the entry's open file, the entry
//!   (`Arc`) held until the op ends: a revalidation that replaces it
//!   changes nothing in flight, and a file that shrank under the sendfile
//!   finishes from the cached body (the version the head describes), or
//!   the connection closes.
//! - Out of descriptors the multishot accept ends with `EMFILE`. Re-arming
//!   it would fail at once (the kernel allocates the fd before it looks at
//!   the backlog), so instead the waiting connections are refused with the
//!   reserve fd, as readiness mode does, and a `READ` knote on a second
//!   descriptor of the listener (which needs no free fd to wait) says when
//!   the next one arrives; then the accept is re-armed. While waiting, the
//!   reserve is held: a file not cached yet is answered 503, as in
//!   readiness mode.
//! - A client that pipelines without reading its answers has its receive
//!   cancelled once `PAUSE_AT` bytes of requests wait, and resumed when
//!   they drained.
//!
//! Connection slots, request and send buffers are recycled: after warm-up
//! a request allocates nothing. Closing a connection: `shutdown(2)` both
//! ways if an op is still in flight, which ends its receive (end of file)
//! and any send; the fd is closed once both ops reported their final
//! results (on io_uring the kernel holds the socket until then). A
//! connection whose receive ended by itself (the peer's reset or EOF) with
//! no send in flight is just closed.

use crate::cache::{ConnHdr, Entry};
use crate::request::{render_error, Body, Reply, RBUF};
use crate::worker::{self, Base, Config, Mode, Refusal, ACCEPT_PAUSE, U_LISTENER};
use kevent::kevent_net::aio::Aio;
use kevent::kevent_net::TcpListener;
use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

/// Pool of receive buffers per worker (2 MiB).
const POOL_BUFS: u16 = 1024;
const POOL_BUF: u32 = 2048;
/// Cached bodies up to this size are copied into the send buffer; larger
/// ones go by sendfile.
const COPY_MAX: u64 = 64 << 10;
/// Stop batching pipelined responses into one send past this size (and
/// the chunk of a cached body finishing a shrunk file).
const BATCH_MAX: usize = 64 << 10;
/// Request bytes buffered past which the receive is paused (a client that
/// pipelines without reading its responses).
const PAUSE_AT: usize = 4 * RBUF;
/// Connections refused in one go when out of descriptors.
const REFUSE_BATCH: usize = 4096;

/// What follows the send in flight.
#[derive(Debug)]
enum Then {
    None,
    /// Sendfile this entry's body.
    File(Arc<Entry>),
    /// Send this entry's cached body from this offset (a shrunk file's
    /// sendfile fell short there).
    Tail(Arc<Entry>, usize),
}

#[derive(Debug)]
pub(crate) struct Conn {
    fd: OwnedFd,
    gen: u32,
    /// The pooled receive, until its final result.
    recv_op: Option<u64>,
    /// The send or sendfile in flight.
    send_op: Option<u64>,
    /// Bytes it must move (anything less: an error, or a shrunk file).
    send_len: i64,
    /// The entry whose file the sendfile in flight sends.
    sending: Option<Arc<Entry>>,
    then: Then,
    /// Request bytes received and not yet answered.
    rbuf: Vec<u8>,
    /// The send buffer while no send is in flight.
    out: Option<Vec<u8>>,
    /// Close once the responses queued are out.
    close_after: bool,
    /// Write side shut: input is discarded until the peer's EOF.
    closing: bool,
    /// Shut down both ways: close once the ops have ended.
    dying: bool,
    /// The peer's EOF arrived: close once the responses are out.
    peer_eof: bool,
    /// The receive was cancelled to stop buffering (resubmit when drained).
    paused: bool,
    last: Instant,
    req_start: Instant,
}

/// A queue with an AIO storage (and its pool), for one worker.
pub(crate) fn queue(backend: Backend) -> io::Result<(Arc<Kqueue>, Aio)> {
    let (aio, storage) = Aio::with_pool(POOL_BUFS, POOL_BUF)?;
    let kq = Kqueue::builder(backend)?.storage(storage).build()?;
    Ok((Arc::new(kq), aio))
}

/// One AIO worker: a queue, a listener, its connections.
#[derive(Debug)]
pub(crate) struct Worker {
    base: Base<Conn>,
    aio: Aio,
    listener: Option<TcpListener>,
    accept_op: Option<u64>,
    /// A second descriptor of the listener, whose `READ` knote waits for
    /// a connection while out of fds (armed: `watching`).
    watch: Option<OwnedFd>,
    watching: bool,
    spare: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Worker {
    /// A worker on `kq` (made by [`queue`], with `aio`) accepting on
    /// `listener`; `signals`: this one takes SIGINT/SIGTERM and tells
    /// `others`.
    pub(crate) fn new(
        kq: Arc<Kqueue>,
        aio: Aio,
        listener: TcpListener,
        cfg: &Config,
        others: Vec<Arc<Kqueue>>,
        signals: bool,
    ) -> io::Result<Worker> {
        let base = Base::new(kq, cfg, COPY_MAX, others, signals)?;
        let accept_op = Some(aio.accept_multi(&base.kq, listener.as_raw_fd(), U_LISTENER)?);
        let watch = Some(listener.as_fd().try_clone_to_owned()?);
        Ok(Worker {
            base,
            aio,
            listener: Some(listener),
            accept_op,
            watch,
            watching: false,
            spare: Vec::new(),
        })
    }

    fn rearm_accept(&mut self) {
        if self.base.draining.is_some() || self.accept_op.is_some() {
            return;
        }
        let Some(l) = &self.listener else { return };
        match self
            .aio
            .accept_multi(&self.base.kq, l.as_raw_fd(), U_LISTENER)
        {
            Ok(op) => self.accept_op = Some(op),
            Err(_) => self.base.resume_at = Some(self.base.now + ACCEPT_PAUSE),
        }
    }

    /// Results of the multishot accept.
    fn accepted(&mut self, op: u64) {
        while let Some(r) = self.aio.next_result(op) {
            if r.result >= 0 {
                // SAFETY: the accept handed us this fd; it is ours alone.
                let fd = unsafe { OwnedFd::from_raw_fd(r.result as RawFd) };
                self.add_conn(fd);
                continue;
            }
            // The accept ended.
            self.accept_op = None;
            if self.base.draining.is_some() {
                self.listener = None;
            } else if matches!(-r.result as i32, libc::EMFILE | libc::ENFILE) {
                self.out_of_fds();
            } else {
                // ENOMEM and the like: try again shortly rather than spin.
                self.base.resume_at = Some(self.base.now + ACCEPT_PAUSE);
            }
        }
    }

    /// The accept ended for want of descriptors: refuse what waits, then
    /// wait for the next connection on the watch's `READ` knote.
    fn out_of_fds(&mut self) {
        let Some(l) = &self.listener else { return };
        for _ in 0..REFUSE_BATCH {
            match self.base.reserve.refuse_one(l, &mut self.base.stats) {
                Refusal::Refused => {}
                Refusal::Empty => break,
                Refusal::NoReserve => {
                    self.base.resume_at = Some(self.base.now + ACCEPT_PAUSE);
                    return;
                }
            }
        }
        let armed = self.watch.as_ref().is_some_and(|w| {
            let ch = Kevent::new(
                w.as_raw_fd() as u64,
                Filter::Read,
                Flags::ADD | Flags::ONESHOT,
                0,
                0,
                U_LISTENER,
            );
            worker::add_change(&self.base.kq, ch).is_ok()
        });
        self.watching = armed;
        if !armed {
            self.base.resume_at = Some(self.base.now + ACCEPT_PAUSE);
        }
    }

    fn add_conn(&mut self, fd: OwnedFd) {
        if self.base.draining.is_some() {
            return;
        }
        let (slot, gen) = self.base.conns.reserve();
        let udata = worker::conn_udata(gen, slot);
        let Ok(recv_op) = self.aio.recv_pooled(&self.base.kq, fd.as_raw_fd(), udata) else {
            self.base.conns.unreserve(slot);
            return;
        };
        let (rbuf, out) = self
            .spare
            .pop()
            .unwrap_or_else(|| (Vec::with_capacity(RBUF), Vec::with_capacity(8192)));
        self.base.stats.conns += 1;
        let now = self.base.now;
        self.base.conns.fill(
            slot,
            Conn {
                fd,
                gen,
                recv_op: Some(recv_op),
                send_op: None,
                send_len: 0,
                sending: None,
                then: Then::None,
                rbuf,
                out: Some(out),
                close_after: false,
                closing: false,
                dying: false,
                peer_eof: false,
                paused: false,
                last: now,
                req_start: now,
            },
        );
    }

    /// Results of a connection's pooled receive.
    fn received(&mut self, slot: u32, op: u64) {
        let now = self.base.now;
        let mut failed = false;
        let c = self.base.conns.live_mut(slot);
        while let Some(r) = self.aio.next_result(op) {
            match r.buf {
                Some(buf) if r.result > 0 => {
                    // Closing: input is discarded, and it does not keep
                    // the connection: the idle limit counts from the
                    // start of the close (as nginx's lingering_time).
                    if c.closing || c.dying {
                        continue;
                    }
                    c.last = now;
                    if c.rbuf.is_empty() {
                        c.req_start = now;
                    }
                    c.rbuf.extend_from_slice(&buf);
                    // `buf` goes back to the pool here.
                }
                _ => {
                    // The receive ended: EOF (0), an error, or our cancel
                    // (a pause).
                    c.recv_op = None;
                    if c.paused && r.result == -i64::from(libc::ECANCELED) {
                        continue;
                    }
                    c.paused = false;
                    if r.result == 0 {
                        c.peer_eof = true;
                    } else {
                        failed = true;
                    }
                }
            }
        }
        if failed {
            self.kill(slot);
        }
        self.respond_all(slot);
    }

    /// The send (or sendfile) in flight completed with `data`.
    fn sent(&mut self, slot: u32, op: u64, data: i64) {
        let buf = self.aio.take_buffer(op);
        let draining = self.base.draining.is_some();
        let now = self.base.now;
        let c = self.base.conns.live_mut(slot);
        c.send_op = None;
        if let Some(mut b) = buf {
            b.clear();
            c.out = Some(b);
        }
        let file = c.sending.take();
        if c.dying {
            return;
        }
        if data != c.send_len {
            // An error after some progress, or a file that shrank under
            // its sendfile. If the body is cached (the version the head
            // describes), finish from that copy (an error shows again on
            // that send); else the promised length cannot be kept.
            match file {
                Some(e) if e.body_cached && data >= 0 && (data as u64) < e.len => {
                    c.then = Then::Tail(e, data as usize);
                }
                _ => {
                    self.kill(slot);
                    return;
                }
            }
        }
        match std::mem::replace(&mut c.then, Then::None) {
            Then::File(e) => return self.send_file(slot, e),
            Then::Tail(e, off) => return self.send_tail(slot, e, off),
            Then::None => {}
        }
        // While draining, a connection closes once its response is out
        // (even one begun before the signal, when keep-alive was
        // promised).
        if c.close_after || (draining && c.rbuf.is_empty()) {
            c.close_after = false;
            c.closing = true;
            c.last = now;
            c.rbuf.clear();
            // SAFETY: shutdown(2) on our own socket fd.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_WR) };
            // Input is discarded until the EOF: a paused receive resumes.
            self.flow(slot);
            return;
        }
        self.respond_all(slot);
    }

    /// Send `out` (the connection's send buffer), or close on failure.
    fn submit(&mut self, slot: u32, out: Vec<u8>) {
        let c = self.base.conns.live_mut(slot);
        if c.dying {
            c.out = Some(out);
            return;
        }
        let udata = worker::conn_udata(c.gen, slot);
        let len = out.len() as i64;
        match self.aio.send(&self.base.kq, c.fd.as_raw_fd(), out, udata) {
            Ok(op) => {
                c.send_op = Some(op);
                c.send_len = len;
            }
            Err(e) => {
                c.out = Some(e.buf);
                self.kill(slot);
            }
        }
    }

    /// Sendfile the body of `e`, holding the entry until the op ends.
    fn send_file(&mut self, slot: u32, e: Arc<Entry>) {
        let c = self.base.conns.live_mut(slot);
        let udata = worker::conn_udata(c.gen, slot);
        let (file, len) = (e.file.clone(), e.len);
        match self.aio.sendfile(
            &self.base.kq,
            c.fd.as_raw_fd(),
            file,
            0,
            len as usize,
            udata,
        ) {
            Ok(op) => {
                c.send_op = Some(op);
                c.send_len = len as i64;
                c.sending = Some(e);
            }
            Err(_) => self.kill(slot),
        }
    }

    /// Send the next chunk of `e`'s cached body from `off`.
    fn send_tail(&mut self, slot: u32, e: Arc<Entry>, off: usize) {
        let c = self.base.conns.live_mut(slot);
        let Some(mut out) = c.out.take() else {
            return self.kill(slot);
        };
        out.clear();
        let body = e.body().unwrap_or(&[]);
        let end = body.len().min(off + BATCH_MAX);
        out.extend_from_slice(&body[off.min(end)..end]);
        if end < body.len() {
            c.then = Then::Tail(e, end);
        }
        self.submit(slot, out);
    }

    /// Answer the complete requests buffered (when no send is in flight),
    /// in one send; then pause or resume the receive ([`Self::flow`]) —
    /// also while a send is in flight, which is when requests pile up.
    fn respond_all(&mut self, slot: u32) {
        self.answer(slot);
        self.flow(slot);
    }

    fn answer(&mut self, slot: u32) {
        let draining = self.base.draining.is_some();
        let Base {
            http, stats, conns, ..
        } = &mut self.base;
        let c = conns.live_mut(slot);
        if c.send_op.is_some() || c.dying {
            return;
        }
        let Some(mut out) = c.out.take() else { return };
        out.clear();
        while !c.rbuf.is_empty()
            && !c.closing
            && !c.close_after
            && matches!(c.then, Then::None)
            && out.len() < BATCH_MAX
        {
            let Some(a) = http.respond(&c.rbuf, draining, stats, &mut out) else {
                break;
            };
            consume(c, a.consumed);
            c.close_after = a.close;
            match a.reply {
                Reply::Out(Body::None) => {}
                Reply::Out(Body::Mem(e)) => out.extend_from_slice(e.body().unwrap_or(&[])),
                Reply::Out(Body::File(e)) => c.then = Then::File(e),
                Reply::Whole {
                    entry,
                    end,
                    then_file,
                } => {
                    out.extend_from_slice(&entry.ka[..end]);
                    if then_file {
                        c.then = Then::File(entry);
                    }
                }
            }
        }
        if !out.is_empty() {
            self.submit(slot, out);
        } else {
            c.out = Some(out);
            if let Then::File(e) = std::mem::replace(&mut c.then, Then::None) {
                self.send_file(slot, e);
            }
        }
    }

    /// Pause the receive of a client far ahead of reading its answers;
    /// resume it once they drained (or the input is being discarded).
    fn flow(&mut self, slot: u32) {
        let c = self.base.conns.live_mut(slot);
        if c.dying {
            return;
        }
        if c.paused && c.recv_op.is_none() && c.rbuf.len() < RBUF {
            c.paused = false;
            let udata = worker::conn_udata(c.gen, slot);
            match self.aio.recv_pooled(&self.base.kq, c.fd.as_raw_fd(), udata) {
                Ok(op) => c.recv_op = Some(op),
                Err(_) => self.kill(slot),
            }
        } else if !c.paused && c.rbuf.len() > PAUSE_AT {
            if let Some(op) = c.recv_op {
                c.paused = true;
                let _ = self.aio.cancel(&self.base.kq, op);
            }
        }
    }

    /// Shut the connection down both ways; it is closed once its ops end.
    fn kill(&mut self, slot: u32) {
        let Some(c) = self.base.conns.get_mut(slot) else {
            return;
        };
        if !c.dying {
            c.dying = true;
            c.then = Then::None;
            if c.recv_op.is_some() || c.send_op.is_some() {
                // SAFETY: shutdown(2) on our own socket fd. It ends the
                // receive (EOF) and a send in flight (EPIPE). (With no op
                // in flight — a reset ended the receive — the close that
                // follows is all there is to do.)
                unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
    }

    /// Close and free the slot once nothing is in flight and nothing more
    /// is due.
    fn maybe_close(&mut self, slot: u32) {
        let Some(c) = self.base.conns.get(slot) else {
            return;
        };
        if c.send_op.is_some() {
            return;
        }
        if c.peer_eof && !c.dying {
            // The peer sent everything and every complete request is
            // answered (`respond_all` ran first): go.
            self.kill(slot);
        }
        let c = self.base.conns.live_mut(slot);
        if !c.dying || c.recv_op.is_some() {
            return;
        }
        if let Some(c) = self.base.conns.take(slot) {
            let Conn {
                fd, mut rbuf, out, ..
            } = c;
            drop(fd);
            rbuf.clear();
            self.spare.push((rbuf, out.unwrap_or_default()));
        }
    }
}

impl Mode for Worker {
    type Conn = Conn;

    fn base(&mut self) -> &mut Base<Conn> {
        &mut self.base
    }

    fn listener_event(&mut self, ev: &Kevent) {
        if ev.filter == Filter::Aio {
            if self.accept_op == Some(ev.ident) {
                self.accepted(ev.ident);
            }
        } else if self.watching {
            // A connection waits: try the accept again.
            self.watching = false;
            self.rearm_accept();
        }
    }

    fn conn_event(&mut self, udata: u64, ev: &Kevent) {
        if ev.filter != Filter::Aio {
            return;
        }
        let (slot, gen) = worker::split_udata(udata);
        let (is_recv, is_send) = match self.base.conns.get(slot) {
            Some(c) if c.gen == gen => (c.recv_op == Some(ev.ident), c.send_op == Some(ev.ident)),
            _ => return,
        };
        if is_recv {
            self.received(slot, ev.ident);
        } else if is_send {
            self.sent(slot, ev.ident, ev.data);
        }
        self.maybe_close(slot);
    }

    fn sweep(&mut self, slot: u32) {
        let b = &mut self.base;
        let Some(c) = b.conns.get_mut(slot).filter(|c| !c.dying) else {
            return;
        };
        let waiting_request = !c.rbuf.is_empty() && c.send_op.is_none() && !c.closing;
        if !worker::expired(b.now, b.idle, waiting_request, c.req_start, c.last) {
            return;
        }
        b.stats.idle_closed += 1;
        if let (true, Some(mut out)) = (waiting_request, c.out.take()) {
            // An unfinished request: tell the client (408), then close
            // gracefully, as readiness mode does — shut our side once it
            // is out and discard what the client still sends until its
            // EOF (a close with unread input would reset the connection
            // and could destroy the 408). The closing state has its own
            // idle limit.
            out.clear();
            render_error(&mut out, 408, b.http.cache.date(), ConnHdr::Close, false);
            c.rbuf.clear();
            c.close_after = true;
            c.last = b.now;
            self.submit(slot, out);
            return;
        }
        self.kill(slot);
        self.maybe_close(slot);
    }

    fn stop_accepting(&mut self) {
        if let Some(w) = self.watch.take() {
            if self.watching {
                let ch = Kevent::new(w.as_raw_fd() as u64, Filter::Read, Flags::DELETE, 0, 0, 0);
                let _ = worker::add_change(&self.base.kq, ch);
            }
        }
        match self.accept_op {
            // The listener goes once its accept has ended (the kernel
            // holds it until then on io_uring).
            Some(op) => {
                let _ = self.aio.cancel(&self.base.kq, op);
            }
            None => self.listener = None,
        }
    }

    fn drain(&mut self, slot: u32) {
        if matches!(self.base.conns.get(slot), Some(c) if c.rbuf.is_empty() && c.send_op.is_none())
        {
            self.kill(slot);
            self.maybe_close(slot);
        }
    }

    fn resume(&mut self) {
        self.rearm_accept();
    }
}

fn consume(c: &mut Conn, n: usize) {
    let n = n.min(c.rbuf.len());
    c.rbuf.drain(..n);
    if !c.rbuf.is_empty() {
        c.req_start = c.last;
    }
}
