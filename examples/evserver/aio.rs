//! `--mode aio`: the same server driven by network AIO completions
//! (`kevent_net::aio`) instead of readiness — the seed's `aio_accept`,
//! `aio_recv`, `aio_send`, `aio_sendfile`.
//!
//! Per worker thread: one queue holding an [`Aio`] storage, one multishot
//! accept on its `SO_REUSEPORT` listener, and per connection one pooled
//! multishot receive plus at most one send (or sendfile) in flight. On
//! io_uring those are real ring ops submitted with the wait (multishot
//! `ACCEPT`, `RECV` from the provided-buffer ring, `SEND`, `SPLICE`); on
//! epoll the same API runs on readiness.
//!
//! The HTTP behaviour is readiness mode's (same parser limits, the same
//! cached renderings from `cache.rs`, `http.rs` helpers and error
//! responses): keep-alive, pipelining (every complete request buffered is
//! answered in one send), GET/HEAD, 304, 400/404/405/408/413/414/431,
//! idle connections closed by a `Filter::Timer` sweep, SIGINT/SIGTERM
//! through `Filter::Signal`, and `EMFILE` survived without spinning (see
//! `Worker::accepted`: the reserve fd gives the re-armed accept a slot to
//! wait with; connections that cannot be served are refused with RST and
//! counted).
//!
//! Buffers: receive chunks arrive in pool buffers and are copied into the
//! connection's request buffer, then given back at once; each response
//! batch is copied from the cache into the connection's own send buffer
//! (the cache's `Date` is patched in place every second, so a send must
//! not borrow it). Bodies larger than `COPY_MAX`, and all bodies with
//! `--sendfile on`, go by sendfile from the cached open file. Connection
//! slots, request and send buffers are recycled: after warm-up a request
//! allocates nothing.
//!
//! Closing a connection: `shutdown(2)` both ways, which ends its receive
//! (end of file) and any send in flight; the fd is closed once both ops
//! reported their final results (on io_uring the kernel holds the socket
//! until then).

use super::cache::{Cache, Lookup};
use super::http;
use super::{add_change, render_error, unix_secs, Args, OnOff, Stats};
use super::{DRAIN, MAX_HEADERS, MAX_TARGET, RBUF, STOP_IDENT, TIMER_IDENT};
use kevent::kevent_net::aio::Aio;
use kevent::kevent_net::TcpListener;
use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

// udata tags (top bit set); a connection's ops carry `gen << 32 | slot`.
const TAG: u64 = 1 << 63;
const U_ACCEPT: u64 = TAG | 1;
const U_TIMER: u64 = TAG | 2;
const U_SIGNAL: u64 = TAG | 3;
const U_STOP: u64 = TAG | 4;

/// Pool of receive buffers per worker (2 MiB).
const POOL_BUFS: u16 = 1024;
const POOL_BUF: u32 = 2048;
/// Cached bodies up to this size are copied into the send buffer; larger
/// ones go by sendfile.
const COPY_MAX: u64 = 64 << 10;
/// Stop batching pipelined responses into one send past this size.
const BATCH_MAX: usize = 64 << 10;
/// Request bytes buffered past which the receive is paused (a client that
/// pipelines without reading its responses).
const PAUSE_AT: usize = 4 * RBUF;
/// Retry delay of an accept that failed for want of resources.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
    gen: u32,
    /// The pooled receive, until its final result.
    recv_op: Option<u64>,
    /// The send or sendfile in flight.
    send_op: Option<u64>,
    /// Bytes it must move (anything less is a broken connection).
    send_len: i64,
    /// Request bytes received and not yet answered.
    rbuf: Vec<u8>,
    /// The send buffer while no send is in flight.
    out: Option<Vec<u8>>,
    /// After the head in flight: sendfile this cache entry's body.
    file_next: Option<u32>,
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

struct Worker {
    kq: Arc<Kqueue>,
    aio: Aio,
    listener: Option<TcpListener>,
    accept_op: Option<u64>,
    accept_at: Option<Instant>,
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    live: usize,
    next_gen: u32,
    spare: Vec<(Vec<u8>, Vec<u8>)>,
    cache: Cache,
    /// Shared clones of the cache's open files, for sendfile ops.
    files: Vec<Option<Arc<File>>>,
    norm: Vec<u8>,
    sendfile: bool,
    idle: Duration,
    sweep_every: Duration,
    timer_knote: bool,
    last_sweep: Instant,
    reserve: Option<File>,
    now: Instant,
    draining: Option<Instant>,
    others: Vec<Arc<Kqueue>>,
    stats: Stats,
}

/// Run the server in AIO mode (the caller parsed the arguments, resolved
/// the root and blocked SIGINT/SIGTERM).
pub(crate) fn run(args: &Args, root: PathBuf, backend: Backend) -> io::Result<()> {
    let threads = args.threads.max(1);
    let mut queues = Vec::with_capacity(threads);
    let mut aios = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (aio, storage) = Aio::with_pool(POOL_BUFS, POOL_BUF)?;
        let kq = Kqueue::builder(backend)?.storage(storage).build()?;
        queues.push(Arc::new(Kqueue::from(kq)));
        aios.push(aio);
    }
    let first = TcpListener::bind_with(args.addr, true, 4096)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(TcpListener::bind_with(addr, true, 4096)?);
    }
    println!("listening on {addr}");
    let _ = io::stdout().flush();
    if !args.quiet {
        eprintln!(
            "evserver: {} thread(s), mode aio, backend {:?}, root {}, sendfile {:?}, idle timeout {} s",
            threads,
            queues[0].backend(),
            root.display(),
            args.sendfile,
            args.idle_timeout
        );
    }
    let idle = Duration::from_secs_f64(args.idle_timeout.max(0.01));
    let mut workers = Vec::new();
    for (i, (l, aio)) in listeners.into_iter().zip(aios).enumerate() {
        let others = if i == 0 {
            queues[1..].to_vec()
        } else {
            Vec::new()
        };
        workers.push(Worker::new(
            queues[i].clone(),
            aio,
            l,
            root.clone(),
            args.sendfile == OnOff::On,
            idle,
            others,
            i == 0,
        )?);
    }
    let mut handles = Vec::new();
    let mut iter = workers.into_iter();
    let mut w0 = iter.next().expect("one worker");
    for mut w in iter {
        handles.push(std::thread::spawn(move || {
            let r = w.run();
            (w.stats, r)
        }));
    }
    let r0 = w0.run();
    let mut total = w0.stats;
    for h in handles {
        if let Ok((s, r)) = h.join() {
            if let Err(e) = r {
                eprintln!("evserver: worker: {e}");
            }
            total.conns += s.conns;
            total.requests += s.requests;
            total.refused += s.refused;
            total.idle_closed += s.idle_closed;
            total.errors += s.errors;
        }
    }
    if !args.quiet {
        eprintln!(
            "evserver: done: {} connections, {} requests, {} error responses, {} idle closed, {} refused (out of fds)",
            total.conns, total.requests, total.errors, total.idle_closed, total.refused
        );
    }
    r0
}

/// What answering one buffered request did.
enum Step {
    /// A response was appended to the send buffer.
    Responded,
    /// The request is not complete yet.
    NeedMore,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kq: Arc<Kqueue>,
        aio: Aio,
        listener: TcpListener,
        root: PathBuf,
        sendfile: bool,
        idle: Duration,
        others: Vec<Arc<Kqueue>>,
        signals: bool,
    ) -> io::Result<Worker> {
        // Accepted connections inherit TCP_NODELAY from the listener.
        let _ = listener.set_nodelay(true);
        add_change(
            &kq,
            Kevent::new(
                STOP_IDENT,
                Filter::User,
                Flags::ADD | Flags::CLEAR,
                0,
                0,
                U_STOP,
            ),
        )?;
        if signals {
            for s in [libc::SIGINT, libc::SIGTERM] {
                add_change(
                    &kq,
                    Kevent::new(s as u64, Filter::Signal, Flags::ADD, 0, 0, U_SIGNAL),
                )?;
            }
        }
        let sweep_every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let timer_knote = add_change(
            &kq,
            Kevent::new(
                TIMER_IDENT,
                Filter::Timer,
                Flags::ADD,
                kevent::note::MSECONDS,
                sweep_every.as_millis() as i64,
                U_TIMER,
            ),
        )
        .is_ok();
        let accept_op = Some(aio.accept_multi(&kq, listener.as_raw_fd(), U_ACCEPT)?);
        let now = Instant::now();
        Ok(Worker {
            kq,
            aio,
            listener: Some(listener),
            accept_op,
            accept_at: None,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 0,
            spare: Vec::new(),
            cache: Cache::new(root, unix_secs()),
            files: Vec::new(),
            norm: Vec::with_capacity(MAX_TARGET),
            sendfile,
            idle,
            sweep_every,
            timer_knote,
            last_sweep: now,
            reserve: File::open("/dev/null").ok(),
            now,
            draining: None,
            others,
            stats: Stats::default(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = vec![Kevent::default(); 256];
        loop {
            let mut timeout = if self.timer_knote {
                None
            } else {
                Some((self.last_sweep + self.sweep_every).saturating_duration_since(Instant::now()))
            };
            if let Some(p) = self.accept_at {
                let t = p.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(t, |x| x.min(t)));
            }
            if self.draining.is_some() {
                let t = Duration::from_millis(50);
                timeout = Some(timeout.map_or(t, |x| x.min(t)));
            }
            let n = match self.kq.kevent(&[], &mut events, timeout) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            self.now = Instant::now();
            self.cache.tick(unix_secs());
            for ev in &events[..n] {
                match ev.udata {
                    U_ACCEPT => self.accepted(ev.ident),
                    U_TIMER => self.sweep(),
                    U_SIGNAL | U_STOP => self.start_drain(ev.udata == U_SIGNAL),
                    u if u & TAG == 0 && ev.filter == Filter::Aio => self.conn_event(u, ev),
                    _ => {}
                }
            }
            if !self.timer_knote && self.now >= self.last_sweep + self.sweep_every {
                self.sweep();
            }
            if self.accept_at.is_some_and(|p| self.now >= p) {
                self.accept_at = None;
                self.rearm_accept();
            }
            if let Some(deadline) = self.draining {
                if self.live == 0 || self.now >= deadline {
                    return Ok(());
                }
            }
        }
    }

    fn rearm_accept(&mut self) {
        if self.draining.is_some() || self.accept_op.is_some() {
            return;
        }
        let Some(l) = &self.listener else { return };
        match self.aio.accept_multi(&self.kq, l.as_raw_fd(), U_ACCEPT) {
            Ok(op) => self.accept_op = Some(op),
            Err(_) => self.accept_at = Some(self.now + ACCEPT_PAUSE),
        }
    }

    /// Results of the multishot accept.
    ///
    /// Out of descriptors the kernel fails an accept before it looks at
    /// the backlog (the fd is allocated first), so retrying at once would
    /// spin. Instead the reserve fd is closed and the accept re-armed: it
    /// now has a slot, so it waits for a connection. A connection arriving
    /// while the reserve is gone is served if the reserve can be had
    /// again, else refused (closed with RST, its slot taken back by the
    /// reserve) and counted.
    fn accepted(&mut self, op: u64) {
        while let Some(r) = self.aio.next_result(op) {
            if r.result >= 0 {
                // SAFETY: the accept handed us this fd; it is ours alone.
                let fd = unsafe { OwnedFd::from_raw_fd(r.result as RawFd) };
                if self.reserve.is_none() {
                    self.reserve = File::open("/dev/null").ok();
                    if self.reserve.is_none() {
                        refuse(fd);
                        self.stats.refused += 1;
                        self.reserve = File::open("/dev/null").ok();
                        continue;
                    }
                }
                self.add_conn(fd);
                continue;
            }
            // The accept ended.
            self.accept_op = None;
            let e = -r.result as i32;
            if self.draining.is_some() {
                self.listener = None;
                continue;
            }
            if e == libc::ECANCELED {
                continue;
            }
            if matches!(e, libc::EMFILE | libc::ENFILE) {
                if let Some(reserve) = self.reserve.take() {
                    drop(reserve);
                    self.rearm_accept();
                    continue;
                }
            }
            // No reserve to give up, or another error (ENOMEM, ...): try
            // again shortly rather than spin.
            self.accept_at = Some(self.now + ACCEPT_PAUSE);
        }
    }

    fn add_conn(&mut self, fd: OwnedFd) {
        if self.draining.is_some() {
            return;
        }
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let udata = (gen as u64) << 32 | slot as u64;
        let recv_op = match self.aio.recv_pooled(&self.kq, fd.as_raw_fd(), udata) {
            Ok(op) => op,
            Err(_) => {
                self.free.push(slot);
                return;
            }
        };
        let (rbuf, out) = self
            .spare
            .pop()
            .unwrap_or_else(|| (Vec::with_capacity(RBUF), Vec::with_capacity(8192)));
        self.stats.conns += 1;
        self.live += 1;
        self.slots[slot as usize] = Some(Conn {
            fd,
            gen,
            recv_op: Some(recv_op),
            send_op: None,
            send_len: 0,
            rbuf,
            out: Some(out),
            file_next: None,
            close_after: false,
            closing: false,
            dying: false,
            peer_eof: false,
            paused: false,
            last: self.now,
            req_start: self.now,
        });
    }

    fn conn(&mut self, slot: u32) -> &mut Conn {
        // Callers hold a slot checked live (conn_event's generation test).
        self.slots[slot as usize].as_mut().expect("live conn")
    }

    fn conn_event(&mut self, udata: u64, ev: &Kevent) {
        let slot = (udata & 0xffff_ffff) as u32;
        let gen = (udata >> 32) as u32;
        let (is_recv, is_send) = match self.slots.get(slot as usize) {
            Some(Some(c)) if c.gen == gen => {
                (c.recv_op == Some(ev.ident), c.send_op == Some(ev.ident))
            }
            _ => return,
        };
        if is_recv {
            self.received(slot, ev.ident);
        } else if is_send {
            self.sent(slot, ev.ident, ev.data);
        }
        self.maybe_close(slot);
    }

    /// Results of a connection's pooled receive.
    fn received(&mut self, slot: u32, op: u64) {
        let now = self.now;
        let mut failed = false;
        {
            let Worker { aio, slots, .. } = self;
            let c = slots[slot as usize].as_mut().expect("live conn");
            while let Some(r) = aio.next_result(op) {
                match r.buf {
                    Some(buf) if r.result > 0 => {
                        c.last = now;
                        if c.closing || c.dying {
                            continue;
                        }
                        if c.rbuf.is_empty() {
                            c.req_start = now;
                        }
                        c.rbuf.extend_from_slice(&buf);
                        // `buf` goes back to the pool here.
                    }
                    _ => {
                        // The receive ended: EOF (0), an error, or our
                        // cancel (a pause).
                        c.recv_op = None;
                        if c.paused && r.result == -(libc::ECANCELED as i64) {
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
        }
        if failed {
            self.kill(slot);
        }
        self.respond_all(slot);
    }

    /// The send (or sendfile) in flight completed with `data`.
    fn sent(&mut self, slot: u32, op: u64, data: i64) {
        let buf = self.aio.take_buffer(op);
        let c = self.conn(slot);
        c.send_op = None;
        if let Some(mut b) = buf {
            b.clear();
            c.out = Some(b);
        }
        if data != c.send_len || c.dying {
            // An error, or a file that shrank under its sendfile.
            self.kill(slot);
            return;
        }
        if let Some(entry) = c.file_next.take() {
            self.send_file(slot, entry);
            return;
        }
        let c = self.conn(slot);
        if c.close_after {
            c.close_after = false;
            c.closing = true;
            c.rbuf.clear();
            // SAFETY: shutdown(2) on our own socket fd.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_WR) };
            return;
        }
        self.respond_all(slot);
    }

    /// Sendfile the body of cache entry `entry`.
    fn send_file(&mut self, slot: u32, entry: u32) {
        let i = entry as usize;
        if self.files.len() <= i {
            self.files.resize(i + 1, None);
        }
        if self.files[i].is_none() {
            self.files[i] = self.cache.entries[i].file.try_clone().ok().map(Arc::new);
        }
        let len = self.cache.entries[i].len as usize;
        let Some(file) = self.files[i].clone() else {
            self.kill(slot);
            return;
        };
        let c = self.slots[slot as usize].as_mut().expect("live conn");
        let udata = (c.gen as u64) << 32 | slot as u64;
        match self
            .aio
            .sendfile(&self.kq, c.fd.as_raw_fd(), file, 0, len, udata)
        {
            Ok(op) => {
                c.send_op = Some(op);
                c.send_len = len as i64;
            }
            Err(_) => self.kill(slot),
        }
    }

    /// Answer the complete requests buffered (when no send is in flight),
    /// in one send.
    fn respond_all(&mut self, slot: u32) {
        let draining = self.draining.is_some();
        let c = self.conn(slot);
        if c.send_op.is_some() || c.dying {
            return;
        }
        let Some(mut out) = c.out.take() else { return };
        out.clear();
        loop {
            let c = self.conn(slot);
            if c.rbuf.is_empty() || c.closing || c.close_after || c.file_next.is_some() {
                break;
            }
            if out.len() >= BATCH_MAX {
                break;
            }
            match self.respond(slot, &mut out, draining) {
                Step::Responded => {}
                Step::NeedMore => break,
            }
        }
        let c = self.slots[slot as usize].as_mut().expect("live conn");
        // Resume a paused receive once the buffer drained.
        if c.paused && c.recv_op.is_none() && c.rbuf.len() < RBUF {
            c.paused = false;
            let udata = (c.gen as u64) << 32 | slot as u64;
            match self.aio.recv_pooled(&self.kq, c.fd.as_raw_fd(), udata) {
                Ok(op) => c.recv_op = Some(op),
                Err(_) => c.dying = true,
            }
        } else if !c.paused && c.recv_op.is_some() && c.rbuf.len() > PAUSE_AT {
            // Too much input ahead of its answers: stop receiving.
            c.paused = true;
            if let Some(op) = c.recv_op {
                let _ = self.aio.cancel(&self.kq, op);
            }
        }
        if out.is_empty() {
            if let Some(entry) = c.file_next.take() {
                c.out = Some(out);
                self.send_file(slot, entry);
                return;
            }
            c.out = Some(out);
            return;
        }
        let udata = (c.gen as u64) << 32 | slot as u64;
        let len = out.len() as i64;
        match self.aio.send(&self.kq, c.fd.as_raw_fd(), out, udata) {
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

    /// Parse one request from the buffer and append its response to `out`
    /// (readiness mode's `respond`, with the same limits and answers).
    fn respond(&mut self, slot: u32, out: &mut Vec<u8>, draining: bool) -> Step {
        let c = self.slots[slot as usize].as_mut().expect("live conn");
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        // At most RBUF bytes of head, as readiness mode's buffer.
        let status = req.parse(&c.rbuf[..c.rbuf.len().min(RBUF)]);
        let date = self.cache.date();
        let head_len = match status {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if c.rbuf.len() < RBUF {
                    return Step::NeedMore;
                }
                // A full buffer without a complete head.
                let line_done = c.rbuf[..RBUF].windows(2).any(|w| w == b"\r\n");
                let code = if line_done { 431 } else { 414 };
                return error_close(c, out, code, date, &mut self.stats);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return error_close(c, out, 431, date, &mut self.stats)
            }
            Err(_) => return error_close(c, out, 400, date, &mut self.stats),
        };
        self.stats.requests += 1;
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("").as_bytes();
        let version = req.version.unwrap_or(0);
        let mut close = version == 0 || draining;
        let mut inm: Option<&[u8]> = None;
        let mut ims: Option<&[u8]> = None;
        let mut body_len = 0u64;
        let mut chunked = false;
        for h in req.headers.iter() {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"connection") {
                if http::has_token(h.value, b"close") {
                    close = true;
                } else if version == 1 && http::has_token(h.value, b"keep-alive") {
                    close = draining;
                }
            } else if n.eq_ignore_ascii_case(b"if-none-match") {
                inm = Some(h.value);
            } else if n.eq_ignore_ascii_case(b"if-modified-since") {
                ims = Some(h.value);
            } else if n.eq_ignore_ascii_case(b"content-length") {
                match http::parse_len(h.value) {
                    Some(l) => body_len = l,
                    None => return error_close(c, out, 400, date, &mut self.stats),
                }
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            }
        }
        if chunked || body_len > 0 {
            // GET and HEAD carry no body here; refuse rather than guess.
            return error_close(c, out, 413, date, &mut self.stats);
        }
        if target.len() > MAX_TARGET {
            return error_close(c, out, 414, date, &mut self.stats);
        }
        let head = method == "HEAD";
        if method != "GET" && !head {
            consume(c, head_len);
            render_error(out, 405, date, close, false);
            c.close_after = close;
            self.stats.errors += 1;
            return Step::Responded;
        }
        let var = close as usize;
        let found = match http::normalise(target, &mut self.norm) {
            Ok(is_dir) => self.cache.lookup(&self.norm, is_dir),
            Err(http::PathError::Escape) => Lookup::NotFound,
            Err(http::PathError::Bad) => return error_close(c, out, 400, date, &mut self.stats),
        };
        let date = self.cache.date();
        let entry = match found {
            Lookup::Hit(i) => i,
            Lookup::NotFound | Lookup::Full => {
                let code = if found == Lookup::Full { 503 } else { 404 };
                consume(c, head_len);
                render_error(out, code, date, close, head);
                c.close_after = close;
                self.stats.errors += 1;
                return Step::Responded;
            }
        };
        let e = &self.cache.entries[entry as usize];
        let not_modified = match (inm, ims) {
            (Some(v), _) => http::etag_matches(v, &e.etag),
            (None, Some(v)) => v.trim_ascii() == e.last_modified,
            _ => false,
        };
        consume(c, head_len);
        c.close_after = close;
        if not_modified {
            let r = &e.not_modified[var];
            out.extend_from_slice(&r.buf[..r.head_len]);
            return Step::Responded;
        }
        let r = &e.resp[var];
        let by_file = !head && e.len > 0 && (!e.body_cached || self.sendfile || e.len > COPY_MAX);
        if head || by_file {
            out.extend_from_slice(&r.buf[..r.head_len]);
        } else {
            out.extend_from_slice(&r.buf);
        }
        if by_file {
            c.file_next = Some(entry);
        }
        Step::Responded
    }

    /// Shut the connection down both ways; it is closed once its ops end.
    fn kill(&mut self, slot: u32) {
        let Some(Some(c)) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if !c.dying {
            c.dying = true;
            c.file_next = None;
            // SAFETY: shutdown(2) on our own socket fd. It ends the
            // receive (EOF) and a send in flight (EPIPE).
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
            if c.paused && c.recv_op.is_none() {
                c.paused = false;
            }
        }
    }

    /// Close and free the slot once nothing is in flight and nothing more
    /// is due.
    fn maybe_close(&mut self, slot: u32) {
        let Some(Some(c)) = self.slots.get(slot as usize) else {
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
        let c = self.slots[slot as usize].as_mut().expect("live conn");
        if !c.dying || c.recv_op.is_some() {
            return;
        }
        if let Some(c) = self.slots[slot as usize].take() {
            let Conn {
                fd, mut rbuf, out, ..
            } = c;
            drop(fd);
            rbuf.clear();
            self.spare.push((rbuf, out.unwrap_or_default()));
            self.free.push(slot);
            self.live -= 1;
        }
    }

    fn start_drain(&mut self, from_signal: bool) {
        if self.draining.is_some() {
            return;
        }
        if from_signal {
            for q in &self.others {
                let _ = q.trigger(STOP_IDENT);
            }
        }
        self.draining = Some(Instant::now() + DRAIN);
        self.accept_at = None;
        match self.accept_op {
            // The listener goes once its accept has ended (the kernel
            // holds it until then on io_uring).
            Some(op) => {
                let _ = self.aio.cancel(&self.kq, op);
            }
            None => self.listener = None,
        }
        for i in 0..self.slots.len() {
            let idle =
                matches!(&self.slots[i], Some(c) if c.rbuf.is_empty() && c.send_op.is_none());
            if idle {
                self.kill(i as u32);
                self.maybe_close(i as u32);
            }
        }
    }

    fn sweep(&mut self) {
        self.last_sweep = self.now;
        let now = self.now;
        for i in 0..self.slots.len() {
            let Some(c) = &mut self.slots[i] else {
                continue;
            };
            if c.dying {
                continue;
            }
            let waiting_request = !c.rbuf.is_empty() && c.send_op.is_none() && !c.closing;
            let expired = if waiting_request {
                now.duration_since(c.req_start) >= self.idle
            } else {
                now.duration_since(c.last) >= self.idle
            };
            if expired {
                if waiting_request {
                    // An unfinished request: tell the client (408), best
                    // effort, then close.
                    let mut msg = c.out.take().unwrap_or_default();
                    msg.clear();
                    render_error(&mut msg, 408, self.cache.date(), true, false);
                    // SAFETY: `msg` is valid for reads of its length.
                    unsafe {
                        libc::send(
                            c.fd.as_raw_fd(),
                            msg.as_ptr().cast(),
                            msg.len(),
                            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                        )
                    };
                    msg.clear();
                    c.out = Some(msg);
                }
                self.stats.idle_closed += 1;
                self.kill(i as u32);
                self.maybe_close(i as u32);
            }
        }
    }
}

fn consume(c: &mut Conn, n: usize) {
    let n = n.min(c.rbuf.len());
    c.rbuf.drain(..n);
    if !c.rbuf.is_empty() {
        c.req_start = c.last;
    }
}

/// Close a connection we cannot serve with RST (`SO_LINGER` 0).
fn refuse(fd: OwnedFd) {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a live socket fd and a `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(fd);
}

/// Queue an error response and close after it (the request stream can no
/// longer be trusted). Unread input is dropped.
fn error_close(
    c: &mut Conn,
    out: &mut Vec<u8>,
    code: u16,
    date: &[u8; http::DATE_LEN],
    stats: &mut Stats,
) -> Step {
    stats.errors += 1;
    c.rbuf.clear();
    render_error(out, code, date, true, false);
    c.close_after = true;
    Step::Responded
}
