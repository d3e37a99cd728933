//! evserver: a static HTTP/1.1 file server on one kevent queue per thread.
//!
//! Sockets, the idle-connection timer and SIGINT/SIGTERM all arrive
//! through the same queue — the point of kevent (the 2006 seed's
//! `evserver_kqueue.c`, done properly).
//!
//! ```text
//! cargo run --release --example evserver -- --addr 127.0.0.1:8080
//! cargo run --release --example evserver -- --threads 2 --backend uring
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! - GET and HEAD, keep-alive and pipelining; `Date`, `Content-Type`,
//!   `Content-Length`, `Last-Modified`, `ETag`; `304` on `If-None-Match` /
//!   `If-Modified-Since`; 400/404/405/408/413/414/431 where due.
//! - Paths are percent-decoded, then dot-segments resolved; a target that
//!   climbs above the root, or whose canonical path (symlinks followed)
//!   leaves the canonical root, is answered 404.
//! - Each file's heads are rendered once (one per `Connection` variant) and
//!   its body (up to 1 MiB) read once; a response is the head copied into
//!   the connection's buffer with the current `Date`, sent with the body in
//!   one `sendmsg`; `--sendfile on` sends the head with `MSG_MORE` and the
//!   body with `sendfile(2)`. A cached file is re-checked (inode, size,
//!   mtime) at most once a second and reloaded when it changed. After
//!   warm-up the request path allocates nothing: read buffers and
//!   connection slots are reused.
//! - The listener has `TCP_DEFER_ACCEPT` (`--defer-accept`, 1 s): a
//!   connection is accepted once its request is there, so accept, read and
//!   reply take one wake-up (voluntary context switches per connection at
//!   2000 conn/s: 2.0 without, 1.5 with).
//! - HTTP/1.1 keep-alive by default; HTTP/1.0 only with
//!   `Connection: keep-alive` (answered with the same header).
//! - Idle connections (and slow requests: slowloris) are closed after
//!   `--idle-timeout`, by a `Filter::Timer` knote when the queue has a
//!   timer storage, else by a sweep bounded by the wait's timeout.
//! - Out of descriptors (`EMFILE`), it closes a reserve fd, accepts and
//!   closes the waiting connection, and reopens the reserve, counting the
//!   refusal; if that fails the listener's knote is disabled for 100 ms.
//!   It never spins and never exits on it.
//! - SIGINT/SIGTERM (`Filter::Signal`, blocked first in every thread) stop
//!   accepting, finish responses in flight (then close those connections)
//!   and exit within 2 s.
//! - `SO_REUSEPORT` only with `--threads` > 1, so a second server on a
//!   busy port fails ("address in use") instead of splitting its traffic.
//!
//! The first line on stdout is `listening on ADDR` (with the real port
//! when `--addr` ends in `:0`). Unless `--quiet`, the last line on stderr
//! is `evserver: done: ...` with the counts (connections, requests,
//! refusals for lack of fds, connections per thread).

mod cache;
mod http;

use cache::{Cache, ConnHdr, Entry, Lookup};
use clap::{Parser, ValueEnum};
use kevent::kevent_net::{Interest, KnoteOpts, TcpListener, TcpStream};
use kevent::{Backend, Filter, Flags, Kevent, Kqueue};
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug, Clone)]
#[command(about = "Static HTTP/1.1 server on kevent (one queue per thread)")]
struct Args {
    /// Address to listen on (`:0` picks a free port; see stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Directory to serve (default: the bundled examples/www).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Kernel interface under the queue.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Worker threads, one queue and one SO_REUSEPORT listener each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Readiness (read/write on events) or network AIO completions.
    #[arg(long, value_enum, default_value_t = Mode::Readiness)]
    mode: Mode,
    /// Send bodies with sendfile(2) instead of one write from the cache.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    sendfile: OnOff,
    /// Close connections idle (or with an unfinished request) this long, in seconds.
    #[arg(long, allow_negative_numbers = true, default_value = "30", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// Lower RLIMIT_NOFILE to this (tests of fd exhaustion).
    #[arg(long, hide = true)]
    max_fds: Option<u64>,
    /// TCP_DEFER_ACCEPT seconds on the listener (0: off): connections are
    /// accepted once their request has arrived.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=3600))]
    defer_accept: u32,
    /// Keep bodies up to this many bytes in memory (default 1 MiB; tests).
    #[arg(long, hide = true, default_value_t = cache::BODY_CACHE_MAX,
          value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    cache_max: u64,
    /// Print nothing but the listening line and errors.
    #[arg(long)]
    quiet: bool,
}

/// A duration in seconds (fractions allowed): finite, > 0, at most a year.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    let d = Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{s:?}: seconds must be finite and not negative"))?;
    if d.is_zero() || d > Duration::from_secs(365 * 86_400) {
        return Err(format!("{s:?}: seconds must be > 0 and at most a year"));
    }
    Ok(d)
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum BackendArg {
    Auto,
    Epoll,
    Uring,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Aio,
    Readiness,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

// udata tags (top bit set); a connection's udata is `gen << 32 | slot`.
const TAG: u64 = 1 << 63;
const U_LISTENER: u64 = TAG | 1;
const U_TIMER: u64 = TAG | 2;
const U_SIGNAL: u64 = TAG | 3;
const U_STOP: u64 = TAG | 4;
const STOP_IDENT: u64 = 1;
const TIMER_IDENT: u64 = 1;

const RBUF: usize = 8192;
const MAX_TARGET: usize = 2048;
const MAX_HEADERS: usize = 48;
const DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    conns: u64,
    requests: u64,
    refused: u64,
    idle_closed: u64,
    errors: u64,
    reloads: u64,
}

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

/// The body after a head in `out`.
#[derive(Debug)]
enum Body {
    /// Nothing (HEAD, 304, error responses: all in `out`).
    None,
    /// The entry's cached body, in the same `sendmsg` as the head.
    Mem(Arc<Entry>),
    /// The entry's file by `sendfile`, after the head (sent with
    /// `MSG_MORE`).
    File(Arc<Entry>),
}

#[derive(Debug)]
struct Conn {
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

struct Worker {
    kq: Arc<Kqueue>,
    listener: Option<TcpListener>,
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    live: usize,
    next_gen: u32,
    spare_bufs: Vec<(Box<[u8]>, Vec<u8>)>,
    cache: Cache,
    norm: Vec<u8>,
    sendfile: bool,
    idle: Duration,
    sweep_every: Duration,
    timer_knote: bool,
    last_sweep: Instant,
    paused_until: Option<Instant>,
    reserve: Option<File>,
    now: Instant,
    draining: Option<Instant>,
    others: Vec<Arc<Kqueue>>,
    stats: Stats,
}

/// A bind failure, said plainly (the port is the usual culprit).
fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::EADDRINUSE) {
        io::Error::new(
            e.kind(),
            format!("--addr {addr}: address in use (another server listens there)"),
        )
    } else {
        io::Error::new(e.kind(), format!("--addr {addr}: cannot listen: {e}"))
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("evserver: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    if let Some(n) = args.max_fds {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if args.mode == Mode::Aio {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "--mode aio: network AIO is not implemented yet; use --mode readiness",
        ));
    }
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/www")));
    let root = std::fs::canonicalize(&root)
        .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", root.display())))?;
    let backend = match args.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Epoll => Backend::Epoll,
        BackendArg::Uring => Backend::IoUring,
    };
    // Block the signals before any thread exists so every thread inherits
    // the mask and only the queue sees them.
    kevent::block_signals(&[libc::SIGINT, libc::SIGTERM])?;
    let threads = usize::from(args.threads.max(1));
    let mut queues = Vec::with_capacity(threads);
    for _ in 0..threads {
        queues.push(Arc::new(Kqueue::with_backend(backend)?));
    }
    // One listener per thread needs SO_REUSEPORT; one alone must not set
    // it, or a second server on the same port would bind and silently
    // take half the connections.
    let reuse_port = threads > 1;
    let first = TcpListener::bind_with(args.addr, reuse_port, 4096)
        .map_err(|e| bind_error(args.addr, e))?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners
            .push(TcpListener::bind_with(addr, reuse_port, 4096).map_err(|e| bind_error(addr, e))?);
    }
    println!("listening on {addr}");
    let _ = io::stdout().flush();
    if !args.quiet {
        eprintln!(
            "evserver: {} thread(s), backend {:?}, root {}, sendfile {:?}, idle timeout {:?}",
            threads,
            queues[0].backend(),
            root.display(),
            args.sendfile,
            args.idle_timeout
        );
    }
    let idle = args.idle_timeout;
    let mut workers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let others = if i == 0 {
            queues[1..].to_vec()
        } else {
            Vec::new()
        };
        workers.push(Worker::new(
            queues[i].clone(),
            l,
            root.clone(),
            args.sendfile == OnOff::On,
            args.cache_max,
            args.defer_accept,
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
    let mut per_thread = vec![w0.stats.conns.to_string()];
    for h in handles {
        match h.join() {
            Ok((s, r)) => {
                if let Err(e) = r {
                    eprintln!("evserver: worker: {e}");
                }
                total.conns += s.conns;
                total.requests += s.requests;
                total.refused += s.refused;
                total.idle_closed += s.idle_closed;
                total.errors += s.errors;
                total.reloads += s.reloads;
                per_thread.push(s.conns.to_string());
            }
            Err(_) => per_thread.push("?".into()),
        }
    }
    if !args.quiet {
        eprintln!(
            "evserver: done: {} connections, {} requests, {} error responses, {} idle closed, {} refused (out of fds), {} files reloaded; connections per thread: {}",
            total.conns,
            total.requests,
            total.errors,
            total.idle_closed,
            total.refused,
            total.reloads,
            per_thread.join(",")
        );
    }
    r0
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn add_change(kq: &Kqueue, ch: Kevent) -> io::Result<()> {
    let mut out = [Kevent::default(); 1];
    let ch = Kevent {
        flags: ch.flags | Flags::RECEIPT,
        ..ch
    };
    kq.kevent(&[ch], &mut out, None)?;
    if out[0].data != 0 {
        return Err(io::Error::from_raw_os_error(out[0].data as i32));
    }
    Ok(())
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kq: Arc<Kqueue>,
        mut listener: TcpListener,
        root: PathBuf,
        sendfile: bool,
        cache_max: u64,
        defer_accept: u32,
        idle: Duration,
        others: Vec<Arc<Kqueue>>,
        signals: bool,
    ) -> io::Result<Worker> {
        // Accepted connections inherit TCP_NODELAY from the listener.
        let _ = listener.set_nodelay(true);
        if defer_accept > 0 {
            let _ = listener.set_defer_accept(defer_accept);
        }
        listener.register(&kq, Interest::READ, KnoteOpts::edge(U_LISTENER))?;
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
        // The timer storage, if the queue has one; else sweep on timeouts.
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
        let now = Instant::now();
        Ok(Worker {
            kq,
            listener: Some(listener),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 0,
            spare_bufs: Vec::new(),
            cache: Cache::new(root, unix_secs(), cache_max),
            norm: Vec::with_capacity(MAX_TARGET),
            sendfile,
            idle,
            sweep_every,
            timer_knote,
            last_sweep: now,
            paused_until: None,
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
            if let Some(p) = self.paused_until {
                let t = p.saturating_duration_since(Instant::now());
                timeout = Some(timeout.map_or(t, |x| x.min(t)));
            }
            if self.draining.is_some() {
                timeout = Some(timeout.map_or(Duration::from_millis(50), |x| {
                    x.min(Duration::from_millis(50))
                }));
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
                    U_LISTENER => self.accept(ev.data),
                    U_TIMER => self.sweep(),
                    U_SIGNAL | U_STOP => self.start_drain(ev.udata == U_SIGNAL),
                    u if u & TAG == 0 => self.conn_event(u, ev),
                    _ => {}
                }
            }
            if !self.timer_knote && self.now >= self.last_sweep + self.sweep_every {
                self.sweep();
            }
            if let Some(p) = self.paused_until {
                if self.now >= p {
                    self.paused_until = None;
                    if let Some(l) = &mut self.listener {
                        let _ = l.register(&self.kq, Interest::READ, KnoteOpts::edge(U_LISTENER));
                    }
                }
            }
            if let Some(deadline) = self.draining {
                if self.live == 0 || self.now >= deadline {
                    self.stats.reloads = self.cache.reloads;
                    return Ok(());
                }
            }
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
        self.listener = None;
        for i in 0..self.slots.len() {
            let idle = matches!(&self.slots[i], Some(c) if c.rlen == 0 && matches!(c.pending, Pending::None));
            if idle {
                self.close(i as u32);
            }
        }
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
                    self.stats.refused += 1;
                    if let Some(r) = self.reserve.take() {
                        drop(r);
                        if let Ok((s, _)) = l.accept() {
                            let _ = s.set_linger_abort(true);
                            drop(s);
                        }
                        self.reserve = File::open("/dev/null").ok();
                    }
                    if self.reserve.is_none() {
                        // No reserve: stop the listener's knote briefly
                        // rather than spin on a level event we cannot clear.
                        if let Some(l) = &mut self.listener {
                            let _ = l.deregister(Interest::READ);
                        }
                        self.paused_until = Some(self.now + Duration::from_millis(100));
                        return;
                    }
                    // The knote is edge-triggered: refuse the rest of the
                    // backlog too rather than leave it without an edge.
                }
                Err(_) => return,
            }
        }
    }

    fn add_conn(&mut self, s: TcpStream) {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
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
            last: self.now,
            req_start: self.now,
        };
        let udata = (gen as u64) << 32 | slot as u64;
        if c.stream
            .register(
                &self.kq,
                Interest::READ,
                KnoteOpts::edge(udata).with_nodata(),
            )
            .is_err()
        {
            self.spare_bufs.push((c.rbuf, c.out));
            self.free.push(slot);
            return;
        }
        self.stats.conns += 1;
        self.slots[slot as usize] = Some(c);
        self.live += 1;
        // The request is usually there already (the client sent it right
        // after its handshake): read now rather than wait for the edge.
        self.drive(slot);
    }

    fn close(&mut self, slot: u32) {
        if let Some(c) = self.slots.get_mut(slot as usize).and_then(Option::take) {
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
            self.free.push(slot);
            self.live -= 1;
        }
    }

    fn sweep(&mut self) {
        self.last_sweep = self.now;
        let now = self.now;
        for i in 0..self.slots.len() {
            let Some(c) = &mut self.slots[i] else {
                continue;
            };
            let expired = if c.rlen > 0 && matches!(c.pending, Pending::None) && !c.closing {
                now.duration_since(c.req_start) >= self.idle
            } else {
                now.duration_since(c.last) >= self.idle
            };
            if expired {
                self.stats.idle_closed += 1;
                if c.rlen > 0 && !c.closing && matches!(c.pending, Pending::None) {
                    // An unfinished request: tell the client (408), then
                    // close gracefully — shut our side, discard what the
                    // client still sends until its EOF (a close with
                    // unread input would reset the connection and could
                    // destroy the 408 before the client reads it). The
                    // closing state has its own idle limit.
                    c.out.clear();
                    render_error(&mut c.out, 408, self.cache.date(), ConnHdr::Close, false);
                    if matches!(send(&c.stream, &c.out, 0), Ok(Some(n)) if n == c.out.len()) {
                        c.out.clear();
                        let _ = c.stream.shutdown(Shutdown::Write);
                        c.closing = true;
                        c.rlen = 0;
                        c.last = now;
                        self.drive(i as u32);
                        continue;
                    }
                }
                self.close(i as u32);
            }
        }
    }

    fn conn_event(&mut self, udata: u64, ev: &Kevent) {
        let slot = (udata & 0xffff_ffff) as u32;
        let gen = (udata >> 32) as u32;
        match self.slots.get(slot as usize) {
            Some(Some(c)) if c.gen == gen => {}
            _ => return,
        }
        if ev.filter == Filter::Write {
            if let Some(Some(c)) = self.slots.get_mut(slot as usize) {
                c.write_armed = false;
            }
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

    /// Make all the progress possible on a connection: flush, parse,
    /// respond, read, until it would block.
    fn drive(&mut self, slot: u32) {
        loop {
            if !self.respond_all(slot) {
                self.close(slot);
                return;
            }
            let c = self.slots[slot as usize].as_mut().expect("live conn");
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
                    c.last = self.now;
                    if c.closing {
                        continue;
                    }
                    if c.rlen == 0 {
                        c.req_start = self.now;
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
        loop {
            let c = self.slots[slot as usize].as_mut().expect("live conn");
            if !matches!(c.pending, Pending::None) {
                match flush(c) {
                    Ok(true) => {
                        // While draining, a connection closes once its
                        // response is out (even one begun before the
                        // signal, when keep-alive was promised).
                        if c.close_after || (self.draining.is_some() && c.rlen == 0) {
                            let _ = c.stream.shutdown(Shutdown::Write);
                            c.closing = true;
                            c.close_after = false;
                            return true;
                        }
                    }
                    Ok(false) => {
                        if !c.write_armed {
                            let udata = (c.gen as u64) << 32 | slot as u64;
                            if c.stream
                                .register(&self.kq, Interest::WRITE, KnoteOpts::oneshot(udata))
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
                if self.draining.is_some() {
                    let _ = c.stream.shutdown(Shutdown::Write);
                    c.closing = true;
                }
                return true;
            }
            match self.respond(slot) {
                Step::Responded => {}
                Step::NeedMore => return true,
            }
        }
    }

    /// Parse one request from the buffer and queue its response.
    fn respond(&mut self, slot: u32) -> Step {
        let c = self.slots[slot as usize].as_mut().expect("live conn");
        // Uninitialised: no 1.5 KiB memset per request.
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let status = req.parse_with_uninit_headers(&c.rbuf[..c.rlen], &mut headers);
        let date = self.cache.date();
        let head_len = match status {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if c.rlen < c.rbuf.len() {
                    return Step::NeedMore;
                }
                // A full buffer without a complete head.
                let line_done = c.rbuf[..c.rlen].windows(2).any(|w| w == b"\r\n");
                let code = if line_done { 431 } else { 414 };
                return error_close(c, code, date, &mut self.stats);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return error_close(c, 431, date, &mut self.stats)
            }
            Err(_) => return error_close(c, 400, date, &mut self.stats),
        };
        self.stats.requests += 1;
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("").as_bytes();
        let version = req.version.unwrap_or(0);
        // HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0
        // closes it unless told `keep-alive` (RFC 9112 §9.3).
        let mut ask_close = false;
        let mut ask_keep = false;
        let mut inm: Option<&[u8]> = None;
        let mut ims: Option<&[u8]> = None;
        let mut body_len = 0u64;
        let mut chunked = false;
        for h in req.headers.iter() {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"connection") {
                ask_close |= http::has_token(h.value, b"close");
                ask_keep |= http::has_token(h.value, b"keep-alive");
            } else if n.eq_ignore_ascii_case(b"if-none-match") {
                inm = Some(h.value);
            } else if n.eq_ignore_ascii_case(b"if-modified-since") {
                ims = Some(h.value);
            } else if n.eq_ignore_ascii_case(b"content-length") {
                match http::parse_len(h.value) {
                    Some(l) => body_len = l,
                    None => return error_close(c, 400, date, &mut self.stats),
                }
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            }
        }
        let close = ask_close || self.draining.is_some() || (version == 0 && !ask_keep);
        let conn = if close {
            ConnHdr::Close
        } else if version == 0 {
            ConnHdr::KeepAlive
        } else {
            ConnHdr::None
        };
        if chunked || body_len > 0 {
            // GET and HEAD carry no body here; refuse rather than guess.
            return error_close(c, 413, date, &mut self.stats);
        }
        if target.len() > MAX_TARGET {
            return error_close(c, 414, date, &mut self.stats);
        }
        let head = method == "HEAD";
        if method != "GET" && !head {
            consume(c, head_len);
            c.out.clear();
            render_error(&mut c.out, 405, date, conn, false);
            c.pending = Pending::Out {
                off: 0,
                body: Body::None,
            };
            c.close_after = close;
            self.stats.errors += 1;
            return Step::Responded;
        }
        let found = match http::normalise(target, &mut self.norm) {
            Ok(is_dir) => self.cache.lookup(&self.norm, is_dir),
            Err(http::PathError::Escape) => Lookup::NotFound,
            Err(http::PathError::Bad) => {
                let date = self.cache.date();
                return error_close(c, 400, date, &mut self.stats);
            }
        };
        let date = self.cache.date();
        let e = match found {
            Lookup::Hit(e) => e,
            Lookup::NotFound | Lookup::Unavailable => {
                let code = if matches!(found, Lookup::Unavailable) {
                    503
                } else {
                    404
                };
                consume(c, head_len);
                c.out.clear();
                render_error(&mut c.out, code, date, conn, head);
                c.pending = Pending::Out {
                    off: 0,
                    body: Body::None,
                };
                c.close_after = close;
                self.stats.errors += 1;
                return Step::Responded;
            }
        };
        let not_modified = match (inm, ims) {
            (Some(v), _) => http::etag_matches(v, &e.etag),
            (None, Some(v)) => v.trim_ascii() == e.last_modified,
            _ => false,
        };
        consume(c, head_len);
        c.close_after = close;
        let by_file = !head && e.len > 0 && (!e.body_cached || self.sendfile);
        if !not_modified && conn == ConnHdr::None {
            // One slice of the entry's buffer (its Date is this second's).
            let end = if head || by_file {
                e.ka_head
            } else {
                e.ka.len()
            };
            c.pending = Pending::Whole {
                entry: e,
                off: 0,
                end,
                then_file: by_file,
            };
            return Step::Responded;
        }
        c.out.clear();
        e.head_into(not_modified, conn, date, &mut c.out);
        let body = if not_modified || head || e.len == 0 {
            Body::None
        } else if by_file {
            Body::File(e)
        } else {
            Body::Mem(e)
        };
        c.pending = Pending::Out { off: 0, body };
        Step::Responded
    }
}

enum Step {
    Responded,
    NeedMore,
}

fn consume(c: &mut Conn, n: usize) {
    let n = n.min(c.rlen);
    c.rbuf.copy_within(n..c.rlen, 0);
    c.rlen -= n;
    if c.rlen > 0 {
        c.req_start = c.last;
    }
}

/// Queue an error response and close after it (the request stream can no
/// longer be trusted). Unread input is dropped.
fn error_close(c: &mut Conn, code: u16, date: &[u8; http::DATE_LEN], stats: &mut Stats) -> Step {
    stats.errors += 1;
    c.rlen = 0;
    c.out.clear();
    render_error(&mut c.out, code, date, ConnHdr::Close, false);
    c.pending = Pending::Out {
        off: 0,
        body: Body::None,
    };
    c.close_after = true;
    Step::Responded
}

fn render_error(
    out: &mut Vec<u8>,
    code: u16,
    date: &[u8; http::DATE_LEN],
    conn: ConnHdr,
    head: bool,
) {
    let reason = http::reason(code);
    let body_len = 3 + 1 + reason.len() + 1;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nServer: kevent-evserver\r\nDate: "
    );
    out.extend_from_slice(date);
    let _ = write!(
        out,
        "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body_len}\r\n"
    );
    if code == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    match conn {
        ConnHdr::None => {}
        ConnHdr::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ConnHdr::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        let _ = writeln!(out, "{code} {reason}");
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
                // SAFETY: both fds are open for the call; `o` is a valid
                // offset pointer.
                let n = unsafe {
                    libc::sendfile(
                        c.stream.as_raw_fd(),
                        entry.file.as_raw_fd(),
                        &mut o,
                        (*end - *off) as usize,
                    )
                };
                if n < 0 {
                    let err = io::Error::last_os_error();
                    return match err.kind() {
                        io::ErrorKind::WouldBlock => Ok(false),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(err),
                    };
                }
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

/// `sendmsg(2)` of several slices without SIGPIPE; `Ok(None)` when it
/// would block.
fn sendv(s: &TcpStream, bufs: &[&[u8]; 2]) -> io::Result<Option<usize>> {
    let iov = [IoSlice::new(bufs[0]), IoSlice::new(bufs[1])];
    // SAFETY: all-zero is a valid msghdr (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    loop {
        // SAFETY: `msg` points at `iov`, whose slices are valid for reads
        // for the duration of the call.
        let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
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

/// `send(2)` without SIGPIPE; `Ok(None)` when it would block.
fn send(s: &TcpStream, buf: &[u8], flags: i32) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is valid for reads of its length for the call.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        };
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
