//! What the two worker kinds (readiness in `readiness.rs`, network AIO in
//! `aio.rs`) share: the listeners, the event loop's skeleton (stop,
//! signal and sweep knotes, the wait's timeout, the drain deadline), the
//! reserve descriptor that lets a server out of fds refuse connections,
//! the counters and the exit line. Each kind supplies only its own I/O
//! through [`Mode`].

use crate::request::Responder;
use kevent::kevent_net::TcpListener;
use kevent::{Filter, Flags, Kevent, Kqueue};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// udata tags (top bit set); a connection's udata is `gen << 32 | slot`.
pub(crate) const TAG: u64 = 1 << 63;
/// The listener: its READ knote (readiness), its accept op or the
/// out-of-fds watch (AIO).
pub(crate) const U_LISTENER: u64 = TAG | 1;
const U_TIMER: u64 = TAG | 2;
const U_SIGNAL: u64 = TAG | 3;
const U_STOP: u64 = TAG | 4;
const STOP_IDENT: u64 = 1;
const TIMER_IDENT: u64 = 1;

/// Connections still busy after SIGINT/SIGTERM get this long.
const DRAIN: Duration = Duration::from_secs(2);
/// How long accepting pauses when it cannot go on (no reserve fd left, or
/// an accept error other than running out of fds).
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Listen backlog.
const BACKLOG: i32 = 4096;

/// The counters of the exit line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) conns: u64,
    pub(crate) requests: u64,
    pub(crate) refused: u64,
    pub(crate) idle_closed: u64,
    pub(crate) errors: u64,
    pub(crate) reloads: u64,
}

impl Stats {
    fn add(&mut self, s: &Stats) {
        self.conns += s.conns;
        self.requests += s.requests;
        self.refused += s.refused;
        self.idle_closed += s.idle_closed;
        self.errors += s.errors;
        self.reloads += s.reloads;
    }
}

/// What every worker is told, whatever its mode.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) root: PathBuf,
    pub(crate) sendfile: bool,
    pub(crate) cache_max: u64,
    pub(crate) idle: Duration,
}

/// A connection's udata: its slot and the slot's generation (a stale
/// event of a closed connection whose slot was reused is told apart).
pub(crate) fn conn_udata(gen: u32, slot: u32) -> u64 {
    u64::from(gen) << 32 | u64::from(slot)
}

/// `(slot, gen)` of a connection's udata.
pub(crate) fn split_udata(udata: u64) -> (u32, u32) {
    ((udata & 0xffff_ffff) as u32, (udata >> 32) as u32)
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

/// One listener per thread on `addr`, with `TCP_NODELAY` (inherited by
/// the accepted connections) and `TCP_DEFER_ACCEPT` of `defer_accept` s
/// (0: off). Several need `SO_REUSEPORT`; one alone must not set it, or a
/// second server on the same port would bind and silently take half the
/// connections.
pub(crate) fn listen(
    addr: SocketAddr,
    threads: usize,
    defer_accept: u32,
) -> io::Result<Vec<TcpListener>> {
    let reuse_port = threads > 1;
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(threads);
    for _ in 0..threads {
        // The others bind the port the first one got (`:0`).
        let at = match listeners.first() {
            Some(l) => l.local_addr()?,
            None => addr,
        };
        let l = TcpListener::bind_with(at, reuse_port, BACKLOG).map_err(|e| bind_error(at, e))?;
        let _ = l.set_nodelay(true);
        if defer_accept > 0 {
            let _ = l.set_defer_accept(defer_accept);
        }
        listeners.push(l);
    }
    Ok(listeners)
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Apply one change now, its error (an `EV_RECEIPT` entry's) returned.
pub(crate) fn add_change(kq: &Kqueue, ch: Kevent) -> io::Result<()> {
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

/// What one attempt to refuse a waiting connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// One connection was accepted and reset.
    Refused,
    /// None was waiting.
    Empty,
    /// No descriptor could be freed to accept with.
    NoReserve,
}

/// The descriptor kept in reserve for running out of them: closing it
/// gives `accept` a slot, so a waiting connection can be taken off the
/// backlog and refused instead of waiting (or making a level event spin).
#[derive(Debug)]
pub(crate) struct Reserve(Option<File>);

impl Reserve {
    pub(crate) fn new() -> Reserve {
        Reserve(File::open("/dev/null").ok())
    }

    /// Out of descriptors: refuse one connection waiting on `listener`
    /// (close the reserve, accept, reset with `SO_LINGER` 0, reopen the
    /// reserve) and count it. A reserve lost earlier (another thread took
    /// the slot) is reopened first if it can be.
    pub(crate) fn refuse_one(&mut self, listener: &TcpListener, stats: &mut Stats) -> Refusal {
        let Some(r) = self.0.take().or_else(|| File::open("/dev/null").ok()) else {
            return Refusal::NoReserve;
        };
        drop(r);
        let got = match listener.accept() {
            // Reset (`SO_LINGER` 0) as it closes: refused, not served.
            Ok((s, _)) => {
                let _ = s.set_linger_abort(true);
                stats.refused += 1;
                Refusal::Refused
            }
            Err(_) => Refusal::Empty,
        };
        self.0 = File::open("/dev/null").ok();
        got
    }
}

/// The state every worker has besides its listener: the queue, the
/// request handler, the connections (of the mode's type `C`), timers,
/// drain and counters.
#[derive(Debug)]
pub(crate) struct Base<C> {
    pub(crate) kq: Arc<Kqueue>,
    /// The request handler and its file cache.
    pub(crate) http: Responder,
    pub(crate) idle: Duration,
    sweep_every: Duration,
    /// The sweep runs on a `Filter::Timer` knote (else on wait timeouts).
    timer_knote: bool,
    last_sweep: Instant,
    /// When to resume accepting ([`Mode::resume`]).
    pub(crate) resume_at: Option<Instant>,
    /// When this wake-up began.
    pub(crate) now: Instant,
    /// Draining (SIGINT/SIGTERM): exit by then at the latest.
    pub(crate) draining: Option<Instant>,
    /// The other workers' queues, told to stop on a signal (worker 0).
    others: Vec<Arc<Kqueue>>,
    pub(crate) reserve: Reserve,
    pub(crate) stats: Stats,
    pub(crate) conns: Slots<C>,
}

impl<C> Base<C> {
    /// Register the stop knote, the signals (if `signals`: one worker
    /// takes them and tells the `others`) and the sweep timer.
    pub(crate) fn new(
        kq: Arc<Kqueue>,
        cfg: &Config,
        copy_max: u64,
        others: Vec<Arc<Kqueue>>,
        signals: bool,
    ) -> io::Result<Base<C>> {
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
        let sweep_every = (cfg.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
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
        Ok(Base {
            kq,
            http: Responder::new(cfg, unix_secs(), copy_max),
            idle: cfg.idle,
            sweep_every,
            timer_knote,
            last_sweep: now,
            resume_at: None,
            now,
            draining: None,
            others,
            reserve: Reserve::new(),
            stats: Stats::default(),
            conns: Slots::new(),
        })
    }

    /// The wait's timeout: the next sweep (without a timer knote), the
    /// end of an accept pause, and a short poll while draining.
    /// The clock is read only when one of them is due (not in the steady
    /// state with a timer knote).
    fn timeout(&self) -> Option<Duration> {
        let sweep = (!self.timer_knote).then(|| self.last_sweep + self.sweep_every);
        let at = match (sweep, self.resume_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let t = at.map(|at| at.saturating_duration_since(Instant::now()));
        if self.draining.is_some() {
            let d = Duration::from_millis(50);
            return Some(t.map_or(d, |x| x.min(d)));
        }
        t
    }

    /// Begin draining; false if it had begun.
    fn start_drain(&mut self, from_signal: bool) -> bool {
        if self.draining.is_some() {
            return false;
        }
        if from_signal {
            for q in &self.others {
                let _ = q.trigger(STOP_IDENT);
            }
        }
        self.draining = Some(Instant::now() + DRAIN);
        self.resume_at = None;
        true
    }
}

/// Whether a connection's idle time (or, with a request unfinished, the
/// request's age) reached `limit` at `now`.
pub(crate) fn expired(
    now: Instant,
    limit: Duration,
    waiting_request: bool,
    req_start: Instant,
    last: Instant,
) -> bool {
    let since = if waiting_request { req_start } else { last };
    now.duration_since(since) >= limit
}

/// One worker kind's I/O, driven by [`run`].
pub(crate) trait Mode {
    /// Its connection type.
    type Conn;
    fn base(&mut self) -> &mut Base<Self::Conn>;
    /// An event with udata [`U_LISTENER`].
    fn listener_event(&mut self, ev: &Kevent);
    /// An event of the connection with this udata (maybe a stale one).
    fn conn_event(&mut self, udata: u64, ev: &Kevent);
    /// Close the connection in `slot` (if any) if it has been idle too
    /// long ([`expired`]); one waiting for the rest of its request
    /// is answered 408 and closed gracefully.
    fn sweep(&mut self, slot: u32);
    /// Draining began: stop accepting.
    fn stop_accepting(&mut self);
    /// Draining: close the connection in `slot` (if any) if it is idle.
    fn drain(&mut self, slot: u32);
    /// An accept pause ([`Base::resume_at`]) is over.
    fn resume(&mut self);
}

fn sweep_all<M: Mode>(m: &mut M) {
    let b = m.base();
    b.last_sweep = b.now;
    for slot in 0..b.conns.len() {
        m.sweep(slot);
    }
}

/// A worker's event loop, until drained.
pub(crate) fn run<M: Mode>(m: &mut M) -> io::Result<()> {
    let mut events = vec![Kevent::default(); 256];
    loop {
        let b = m.base();
        let timeout = b.timeout();
        let n = match b.kq.kevent(&[], &mut events, timeout) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        b.now = Instant::now();
        b.http.cache.tick(unix_secs());
        for ev in &events[..n] {
            match ev.udata {
                U_LISTENER => m.listener_event(ev),
                U_TIMER => sweep_all(m),
                U_SIGNAL | U_STOP if m.base().start_drain(ev.udata == U_SIGNAL) => {
                    m.stop_accepting();
                    for slot in 0..m.base().conns.len() {
                        m.drain(slot);
                    }
                }
                u if u & TAG == 0 => m.conn_event(u, ev),
                _ => {}
            }
        }
        let b = m.base();
        if !b.timer_knote && b.now >= b.last_sweep + b.sweep_every {
            sweep_all(m);
        }
        let b = m.base();
        if b.resume_at.is_some_and(|p| b.now >= p) {
            b.resume_at = None;
            m.resume();
        }
        let b = m.base();
        if let Some(deadline) = b.draining {
            if b.conns.live() == 0 || b.now >= deadline {
                b.stats.reloads = b.http.cache.reloads;
                return Ok(());
            }
        }
    }
}

/// Run the workers (the first on this thread), then print the exit line
/// (unless `quiet`). Returns the first worker's error.
pub(crate) fn serve<M: Mode + Send + 'static>(workers: Vec<M>, quiet: bool) -> io::Result<()> {
    let mut iter = workers.into_iter();
    let Some(mut w0) = iter.next() else {
        return Ok(());
    };
    let handles: Vec<_> = iter
        .map(|mut w| {
            std::thread::spawn(move || {
                let r = run(&mut w);
                (w.base().stats, r)
            })
        })
        .collect();
    let r0 = run(&mut w0);
    let mut total = w0.base().stats;
    let mut per_thread = vec![total.conns.to_string()];
    for h in handles {
        match h.join() {
            Ok((s, r)) => {
                if let Err(e) = r {
                    eprintln!("evserver: worker: {e}");
                }
                total.add(&s);
                per_thread.push(s.conns.to_string());
            }
            Err(_) => per_thread.push("?".into()),
        }
    }
    if !quiet {
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

/// Connection slots: a slab whose entries carry a generation.
#[derive(Debug)]
pub(crate) struct Slots<C> {
    slots: Vec<Option<C>>,
    free: Vec<u32>,
    live: usize,
    next_gen: u32,
}

impl<C> Slots<C> {
    pub(crate) fn new() -> Slots<C> {
        Slots {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 0,
        }
    }

    /// A free slot and a new generation for a connection about to be
    /// [`Slots::fill`]ed (or the slot [`Slots::unreserve`]d).
    pub(crate) fn reserve(&mut self) -> (u32, u32) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            (self.slots.len() - 1) as u32
        });
        self.next_gen = self.next_gen.wrapping_add(1);
        (slot, self.next_gen)
    }

    pub(crate) fn unreserve(&mut self, slot: u32) {
        self.free.push(slot);
    }

    pub(crate) fn fill(&mut self, slot: u32, c: C) {
        self.slots[slot as usize] = Some(c);
        self.live += 1;
    }

    /// Free a slot, handing its connection back.
    pub(crate) fn take(&mut self, slot: u32) -> Option<C> {
        let c = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.live -= 1;
        Some(c)
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&C> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut C> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// The connection in a slot known to be live.
    pub(crate) fn live_mut(&mut self, slot: u32) -> &mut C {
        self.get_mut(slot).expect("live conn")
    }

    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// Slot numbers to visit (a sweep): `0..len`.
    pub(crate) fn len(&self) -> u32 {
        self.slots.len() as u32
    }
}
