//! httpload: an httperf-style HTTP load generator on one kevent queue.
//!
//! ```text
//! # the seed's first test: 10k connections one after another
//! cargo run --release --example httpload -- --port 8080 --num-conns 10000
//! # open loop: 5000 new connections per second, 1 s timeout
//! cargo run --release --example httpload -- --port 8080 --rate 5000 --num-conns 20000 --timeout 1
//! # closed loop keep-alive: 100 connections re-requesting for 5 s
//! cargo run --release --example httpload -- --port 8080 --concurrency 100 --duration 5 --json
//! ```
//!
//! Options keep httperf's meanings: `--rate` is new connections per second
//! (0: the next connection starts when the previous one ends, as httperf
//! without `--rate`), each doing `--num-calls` requests one after another;
//! `--timeout` bounds each wait for the server (connect or reply) and
//! counts `client-timo` when it runs out. Unlike httperf (built on
//! `select()`, 1022 connections at most) there is no limit on concurrent
//! connections but the fd limit, and connection creation is driven by the
//! queue's timeout, so the rate holds without spinning.
//!
//! The report is laid out as httperf's, plus latency percentiles
//! (request written → reply complete, from an HDR histogram). Reply-rate
//! samples are taken every second (httperf: every 5 s). `--json` prints
//! one JSON object instead.

use clap::Parser;
use hdrhistogram::Histogram;
use kevent::kevent_net::{Interest, KnoteOpts, TcpStream};
use kevent::{Backend, Filter, Kevent, Kqueue};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "httperf-style HTTP load generator on kevent")]
struct Args {
    /// Server host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    server: String,
    /// Server port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Request target.
    #[arg(long, default_value = "/")]
    uri: String,
    /// New connections per second (0: one after another).
    #[arg(long, allow_negative_numbers = true, default_value = "0", value_parser = parse_rate)]
    rate: f64,
    /// Connections to create in total (open loop).
    #[arg(long, default_value_t = 1)]
    num_conns: u64,
    /// Requests per connection, one after another.
    #[arg(long, default_value_t = 1)]
    num_calls: u64,
    /// Seconds to wait for the server (connect or reply) before giving up.
    #[arg(long, allow_negative_numbers = true, default_value = "5", value_parser = parse_secs)]
    timeout: Duration,
    /// Closed-loop keep-alive mode: this many connections re-requesting
    /// back to back for `--duration` seconds (replaces the open loop).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds to run the closed loop.
    #[arg(long, allow_negative_numbers = true, default_value = "5", value_parser = parse_secs)]
    duration: Duration,
    /// Close with SO_LINGER 0 (RST): leaves no TIME_WAIT on the client.
    #[arg(long)]
    linger0: bool,
    /// Kernel interface under the queue.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Client threads, one queue each, sharing `--rate`, `--num-conns` and
    /// `--concurrency` (the serial mode, `--rate 0`, always uses one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
    /// Print one JSON object instead of the httperf report.
    #[arg(long)]
    json: bool,
}

/// A duration in seconds (fractions allowed): finite, > 0, at most a day.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    let d = Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{s:?}: seconds must be finite and not negative"))?;
    if d.is_zero() || d > Duration::from_secs(86_400) {
        return Err(format!("{s:?}: seconds must be > 0 and at most a day"));
    }
    Ok(d)
}

/// Connections per second: finite, 0 (serial) or 0.01 to 10 million.
fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a rate: {e}"))?;
    if v == 0.0 || (0.01..=10_000_000.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{s:?}: the rate must be 0 (one connection after another) or 0.01 to 10000000 per second"
        ))
    }
}

const RBUF: usize = 16384;
const TAG_SWEEP: u64 = 1 << 63;
/// Connections opened at most between two collections of events.
const OPEN_BATCH: u32 = 32;

#[derive(Debug, Default, Clone, Copy)]
struct Errors {
    client_timo: u64,
    socket_timo: u64,
    connrefused: u64,
    connreset: u64,
    fd_unavail: u64,
    addrunavail: u64,
    other: u64,
}

impl Errors {
    fn total(&self) -> u64 {
        self.client_timo
            + self.socket_timo
            + self.connrefused
            + self.connreset
            + self.fd_unavail
            + self.addrunavail
            + self.other
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    Connecting,
    Head,
    Body,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    gen: u32,
    state: State,
    calls: u64,
    started: Instant,
    sent_at: Instant,
    first_byte: Option<Instant>,
    deadline: Instant,
    rlen: usize,
    body_left: u64,
    got_any: bool,
}

struct Load {
    args: Args,
    kq: Arc<Kqueue>,
    addr: SocketAddr,
    request: Vec<u8>,
    timeout: Duration,
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    live: usize,
    next_gen: u32,
    rbuf: Vec<u8>,
    now: Instant,
    // results
    created: u64,
    completed_conns: u64,
    requests: u64,
    replies: u64,
    status: [u64; 6],
    header_bytes: u64,
    body_bytes: u64,
    bytes_out: u64,
    bytes_in: u64,
    max_concurrent: usize,
    conn_time: Histogram<u64>,
    connect_time_sum: f64,
    connects: u64,
    conn_time_sum: f64,
    conn_time_sq: f64,
    conn_time_min: f64,
    conn_time_max: f64,
    resp_time_sum: f64,
    xfer_time_sum: f64,
    latency: Histogram<u64>,
    errors: Errors,
    samples: Vec<f64>,
    sample_start: Instant,
    sample_replies: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("httpload: {e}");
        std::process::exit(1);
    }
}

fn cpu_times() -> (f64, f64) {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

fn run(args: Args) -> io::Result<()> {
    let addr = (args.server.as_str(), args.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "server address"))?;
    let backend = match args.backend.as_str() {
        "epoll" => Backend::Epoll,
        "uring" | "io_uring" => Backend::IoUring,
        _ => Backend::Auto,
    };
    // Lift the soft fd limit to the hard one: no select() ceiling here.
    // SAFETY: `lim` is valid for reads and writes during both calls.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let request = format!(
        "GET {} HTTP/1.1\r\nUser-Agent: httpload/0.1\r\nHost: {}\r\n\r\n",
        args.uri, args.server
    )
    .into_bytes();
    let serial = args.concurrency.is_none() && args.rate <= 0.0;
    let threads = if serial { 1 } else { usize::from(args.threads) };
    let split = |n: u64, i: usize| n / threads as u64 + u64::from((i as u64) < n % threads as u64);
    let mut loads = Vec::with_capacity(threads);
    for i in 0..threads {
        let mut a = args.clone();
        a.rate = args.rate / threads as f64;
        a.num_conns = split(args.num_conns, i);
        a.concurrency = args.concurrency.map(|c| split(c as u64, i) as usize);
        let kq = Arc::new(Kqueue::with_backend(backend)?);
        loads.push(Load::new(a, kq, addr, request.clone()));
    }
    let (u0, s0) = cpu_times();
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    for mut l in loads {
        handles.push(std::thread::spawn(move || {
            l.sample_start = t0;
            let r = l.drive(t0);
            (l, r)
        }));
    }
    let mut total: Option<Load> = None;
    for h in handles {
        let (l, r) = h
            .join()
            .map_err(|_| io::Error::other("a client thread panicked"))?;
        r?;
        match &mut total {
            None => total = Some(l),
            Some(t) => t.merge(l),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (u1, s1) = cpu_times();
    let mut l = total.expect("one thread");
    l.args = args;
    l.report(elapsed, u1 - u0, s1 - s0);
    Ok(())
}

impl Load {
    fn new(args: Args, kq: Arc<Kqueue>, addr: SocketAddr, request: Vec<u8>) -> Load {
        let now = Instant::now();
        Load {
            timeout: args.timeout,
            args,
            kq,
            addr,
            request,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_gen: 0,
            rbuf: vec![0; RBUF],
            now,
            created: 0,
            completed_conns: 0,
            requests: 0,
            replies: 0,
            status: [0; 6],
            header_bytes: 0,
            body_bytes: 0,
            bytes_out: 0,
            bytes_in: 0,
            max_concurrent: 0,
            conn_time: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
            connect_time_sum: 0.0,
            connects: 0,
            conn_time_sum: 0.0,
            conn_time_sq: 0.0,
            conn_time_min: f64::MAX,
            conn_time_max: 0.0,
            resp_time_sum: 0.0,
            xfer_time_sum: 0.0,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds"),
            errors: Errors::default(),
            samples: Vec::new(),
            sample_start: now,
            sample_replies: 0,
        }
    }

    /// Add another thread's results to these.
    fn merge(&mut self, o: Load) {
        self.created += o.created;
        self.completed_conns += o.completed_conns;
        self.requests += o.requests;
        self.replies += o.replies;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        self.header_bytes += o.header_bytes;
        self.body_bytes += o.body_bytes;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.max_concurrent += o.max_concurrent;
        let _ = self.conn_time.add(&o.conn_time);
        self.connect_time_sum += o.connect_time_sum;
        self.connects += o.connects;
        self.conn_time_sum += o.conn_time_sum;
        self.conn_time_sq += o.conn_time_sq;
        self.conn_time_min = self.conn_time_min.min(o.conn_time_min);
        self.conn_time_max = self.conn_time_max.max(o.conn_time_max);
        self.resp_time_sum += o.resp_time_sum;
        self.xfer_time_sum += o.xfer_time_sum;
        let _ = self.latency.add(&o.latency);
        let (e, f) = (&mut self.errors, o.errors);
        e.client_timo += f.client_timo;
        e.socket_timo += f.socket_timo;
        e.connrefused += f.connrefused;
        e.connreset += f.connreset;
        e.fd_unavail += f.fd_unavail;
        e.addrunavail += f.addrunavail;
        e.other += f.other;
        // Per-second reply-rate samples, taken on the same clock.
        for (i, v) in o.samples.into_iter().enumerate() {
            match self.samples.get_mut(i) {
                Some(x) => *x += v,
                None => self.samples.push(v),
            }
        }
    }

    fn closed_loop(&self) -> bool {
        self.args.concurrency.is_some()
    }

    fn drive(&mut self, t0: Instant) -> io::Result<()> {
        let mut events = vec![Kevent::default(); 512];
        let end = t0 + self.args.duration;
        let total = self.args.num_conns;
        let mut next_sweep = t0 + Duration::from_millis(20);
        if let Some(c) = self.args.concurrency {
            for _ in 0..c {
                self.open();
            }
        }
        loop {
            self.now = Instant::now();
            if self.closed_loop() {
                if self.now >= end {
                    break;
                }
                let want = self.args.concurrency.unwrap_or(0);
                while self.live < want && self.created < u64::MAX {
                    if !self.open() {
                        break;
                    }
                }
            } else {
                // Open loop: create the connections due by now.
                if self.args.rate > 0.0 {
                    let due = ((self.now - t0).as_secs_f64() * self.args.rate) as u64 + 1;
                    let due = due.min(total);
                    // A bounded batch, then collect replies: a client that
                    // falls behind must not open everything before reading
                    // anything (the replies would wait in socket buffers).
                    let mut batch = OPEN_BATCH;
                    while self.created < due && batch > 0 {
                        self.open();
                        batch -= 1;
                    }
                } else if self.live == 0 && self.created < total {
                    self.open();
                }
                if self.created >= total && self.live == 0 {
                    break;
                }
            }
            if self.now >= next_sweep {
                self.sweep();
                next_sweep = self.now + Duration::from_millis(20);
            }
            let mut wake = next_sweep;
            if self.closed_loop() {
                wake = wake.min(end);
            } else if self.args.rate > 0.0 && self.created < total {
                // `rate` is at least 0.01/s and `created` bounded: finite.
                let at = Duration::try_from_secs_f64(self.created as f64 / self.args.rate)
                    .ok()
                    .and_then(|d| t0.checked_add(d));
                if let Some(at) = at {
                    wake = wake.min(at);
                }
            }
            let timeout = wake.saturating_duration_since(Instant::now());
            let n = match self.kq.kevent(&[], &mut events, Some(timeout)) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            self.now = Instant::now();
            for ev in &events[..n] {
                if ev.udata & TAG_SWEEP == 0 {
                    self.event(ev);
                }
            }
            self.sample();
        }
        // Closed loop: what is in flight at the end is not counted.
        for i in 0..self.slots.len() {
            if self.slots[i].is_some() {
                self.drop_conn(i as u32, false);
            }
        }
        Ok(())
    }

    fn sample(&mut self) {
        let dt = self.now.duration_since(self.sample_start);
        if dt >= Duration::from_secs(1) {
            self.samples
                .push((self.replies - self.sample_replies) as f64 / dt.as_secs_f64());
            self.sample_replies = self.replies;
            self.sample_start = self.now;
        }
    }

    fn sweep(&mut self) {
        for i in 0..self.slots.len() {
            let Some(c) = &self.slots[i] else { continue };
            if self.now >= c.deadline {
                self.errors.client_timo += 1;
                self.drop_conn(i as u32, false);
            }
        }
    }

    /// Start one connection. Returns false if it could not be created.
    fn open(&mut self) -> bool {
        self.created += 1;
        let stream = match TcpStream::connect(self.addr) {
            Ok(s) => s,
            Err(e) => {
                self.count_error(&e);
                return false;
            }
        };
        if self.args.linger0 {
            let _ = stream.set_linger_abort(true);
        }
        // No TCP_NODELAY: one request per round trip never meets Nagle.
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
        // On loopback the handshake is usually done when connect returns:
        // write the request now, and wait for WRITE only if it would block.
        let connected = match (&stream).write(&self.request) {
            Ok(n) if n == self.request.len() => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Ok(_) => {
                self.errors.other += 1;
                self.free.push(slot);
                return false;
            }
            Err(e) => {
                self.count_error(&e);
                self.free.push(slot);
                return false;
            }
        };
        let mut c = Conn {
            stream,
            gen,
            state: if connected {
                State::Head
            } else {
                State::Connecting
            },
            calls: 0,
            started: self.now,
            sent_at: self.now,
            first_byte: None,
            deadline: self.now + self.timeout,
            rlen: 0,
            body_left: 0,
            got_any: false,
        };
        if connected {
            self.connects += 1;
            self.requests += 1;
            self.bytes_out += self.request.len() as u64;
        }
        // READ is CLEAR + NODATA: replies are read until complete, so the
        // byte count (an ioctl per event) is not needed.
        let read = KnoteOpts::edge(udata).with_nodata();
        let r = if connected {
            c.stream.register(&self.kq, Interest::READ, read)
        } else {
            c.stream
                .register(
                    &self.kq,
                    Interest::WRITE,
                    KnoteOpts::oneshot(udata).with_nodata(),
                )
                .and_then(|_| c.stream.register(&self.kq, Interest::READ, read))
        };
        if let Err(e) = r {
            self.count_error(&e);
            self.free.push(slot);
            return false;
        }
        self.slots[slot as usize] = Some(c);
        self.live += 1;
        self.max_concurrent = self.max_concurrent.max(self.live);
        true
    }

    fn count_error(&mut self, e: &io::Error) {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => self.errors.connrefused += 1,
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => self.errors.connreset += 1,
            Some(libc::ETIMEDOUT) => self.errors.socket_timo += 1,
            Some(libc::EMFILE) | Some(libc::ENFILE) => self.errors.fd_unavail += 1,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => self.errors.addrunavail += 1,
            _ => self.errors.other += 1,
        }
    }

    fn drop_conn(&mut self, slot: u32, done: bool) {
        if let Some(c) = self.slots[slot as usize].take() {
            if done {
                let t = self.now.duration_since(c.started).as_secs_f64() * 1e3;
                self.completed_conns += 1;
                self.conn_time_sum += t;
                self.conn_time_sq += t * t;
                self.conn_time_min = self.conn_time_min.min(t);
                self.conn_time_max = self.conn_time_max.max(t);
                let _ = self.conn_time.record((t * 1e3).max(1.0) as u64);
            }
            // No EV_DELETE: closing drops the knotes, as on FreeBSD.
            c.stream.close_unregistered();
            self.free.push(slot);
            self.live -= 1;
        }
    }

    fn send_request(&mut self, slot: u32) -> bool {
        let c = self.slots[slot as usize].as_mut().expect("live");
        match (&c.stream).write(&self.request) {
            Ok(n) if n == self.request.len() => {
                c.sent_at = self.now;
                c.first_byte = None;
                c.deadline = self.now + self.timeout;
                c.state = State::Head;
                c.rlen = 0;
                self.requests += 1;
                self.bytes_out += n as u64;
                true
            }
            Ok(_) => {
                self.errors.other += 1;
                false
            }
            Err(e) => {
                self.count_error(&e);
                false
            }
        }
    }

    fn event(&mut self, ev: &Kevent) {
        let slot = (ev.udata & 0xffff_ffff) as u32;
        let gen = (ev.udata >> 32) as u32;
        let state = match self.slots.get(slot as usize) {
            Some(Some(c)) if c.gen == gen => c.state,
            _ => return,
        };
        if state == State::Connecting {
            if ev.filter != Filter::Write && !ev.is_eof() {
                return;
            }
            let c = self.slots[slot as usize].as_mut().expect("live");
            let err = match c.stream.take_error() {
                Ok(Some(e)) => Some(e),
                Ok(None) if ev.is_eof() && ev.fflags != 0 => {
                    Some(io::Error::from_raw_os_error(ev.fflags as i32))
                }
                _ => None,
            };
            if let Some(e) = err {
                self.count_error(&e);
                self.drop_conn(slot, false);
                return;
            }
            self.connects += 1;
            self.connect_time_sum += self.now.duration_since(c.started).as_secs_f64() * 1e3;
            if !self.send_request(slot) {
                self.drop_conn(slot, false);
            }
            return;
        }
        if ev.filter == Filter::Read {
            self.read(slot);
        }
    }

    fn read(&mut self, slot: u32) {
        loop {
            let c = self.slots[slot as usize].as_mut().expect("live");
            let start = if c.state == State::Head { c.rlen } else { 0 };
            let asked = RBUF - start;
            let n = match c.stream.read(&mut self.rbuf[start..]) {
                Ok(0) => {
                    // Server closed: fine between replies, an error inside one.
                    let mid = c.state == State::Body || c.rlen > 0 || !c.got_any;
                    if mid {
                        self.errors.connreset += 1;
                        self.drop_conn(slot, false);
                    } else {
                        self.drop_conn(slot, true);
                    }
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.count_error(&e);
                    self.drop_conn(slot, false);
                    return;
                }
            };
            self.bytes_in += n as u64;
            if c.first_byte.is_none() {
                c.first_byte = Some(self.now);
            }
            c.deadline = self.now + self.timeout;
            let mut avail_from = start;
            let mut avail_to = start + n;
            if c.state == State::Head {
                c.rlen += n;
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.rbuf[..c.rlen]) {
                    Ok(httparse::Status::Complete(h)) => {
                        let code = resp.code.unwrap_or(0);
                        let mut len = None;
                        for hd in resp.headers.iter() {
                            if hd.name.eq_ignore_ascii_case("content-length") {
                                len = std::str::from_utf8(hd.value)
                                    .ok()
                                    .and_then(|v| v.trim().parse::<u64>().ok());
                            }
                        }
                        self.status[(code / 100).min(5) as usize] += 1;
                        self.header_bytes += h as u64;
                        c.body_left = len.unwrap_or(0);
                        c.state = State::Body;
                        avail_from = h;
                        avail_to = c.rlen;
                        c.rlen = 0;
                    }
                    Ok(httparse::Status::Partial) => {
                        if c.rlen == RBUF {
                            self.errors.other += 1;
                            self.drop_conn(slot, false);
                            return;
                        }
                        if n < asked {
                            return;
                        }
                        continue;
                    }
                    Err(_) => {
                        self.errors.other += 1;
                        self.drop_conn(slot, false);
                        return;
                    }
                }
            }
            // Body bytes in rbuf[avail_from..avail_to].
            let got = (avail_to - avail_from) as u64;
            let take = got.min(c.body_left);
            c.body_left -= take;
            self.body_bytes += take;
            if c.body_left == 0 {
                // Reply complete.
                self.replies += 1;
                c.got_any = true;
                c.calls += 1;
                let lat = self.now.duration_since(c.sent_at);
                let _ = self.latency.record((lat.as_micros() as u64).max(1));
                let fb = c.first_byte.unwrap_or(self.now);
                self.resp_time_sum += fb.duration_since(c.sent_at).as_secs_f64() * 1e3;
                self.xfer_time_sum += self.now.duration_since(fb).as_secs_f64() * 1e3;
                let more = self.args.concurrency.is_some() || c.calls < self.args.num_calls;
                if more {
                    if !self.send_request(slot) {
                        self.drop_conn(slot, false);
                        return;
                    }
                } else {
                    self.drop_conn(slot, true);
                    return;
                }
            }
            if n < asked {
                return;
            }
        }
    }

    fn report(&self, elapsed: f64, user: f64, sys: f64) {
        let a = &self.args;
        let conns = if self.closed_loop() {
            self.connects
        } else {
            self.created
        };
        let conn_rate = conns as f64 / elapsed;
        let req_rate = self.requests as f64 / elapsed;
        let reply_avg = self.replies as f64 / elapsed;
        let n = self.completed_conns.max(1) as f64;
        let ct_avg = self.conn_time_sum / n;
        let ct_sd = (self.conn_time_sq / n - ct_avg * ct_avg).max(0.0).sqrt();
        let ct_med = self.conn_time.value_at_quantile(0.5) as f64 / 1e3;
        let (smin, smax, savg, ssd) = if self.samples.is_empty() {
            (0.0, 0.0, 0.0, 0.0)
        } else {
            let mn = self.samples.iter().cloned().fold(f64::MAX, f64::min);
            let mx = self.samples.iter().cloned().fold(0.0, f64::max);
            let av = self.samples.iter().sum::<f64>() / self.samples.len() as f64;
            let sd = (self
                .samples
                .iter()
                .map(|s| (s - av) * (s - av))
                .sum::<f64>()
                / self.samples.len() as f64)
                .sqrt();
            (mn, mx, av, sd)
        };
        let q = |p: f64| self.latency.value_at_quantile(p) as f64 / 1e3;
        let e = &self.errors;
        if a.json {
            let v = serde_json::json!({
                "connections": conns,
                "requests": self.requests,
                "replies": self.replies,
                "duration_s": elapsed,
                "conn_rate": conn_rate,
                "req_rate": req_rate,
                "reply_rate_avg": reply_avg,
                "max_concurrent": self.max_concurrent,
                "conn_time_ms": {"min": if self.completed_conns > 0 { self.conn_time_min } else { 0.0 },
                    "avg": ct_avg, "max": self.conn_time_max, "median": ct_med, "stddev": ct_sd},
                "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                    "max": self.latency.max() as f64 / 1e3},
                "status": {"1xx": self.status[1], "2xx": self.status[2], "3xx": self.status[3],
                    "4xx": self.status[4], "5xx": self.status[5]},
                "cpu_s": {"user": user, "system": sys},
                "net_io_kbps": (self.bytes_in + self.bytes_out) as f64 / elapsed / 1024.0,
                "errors_total": e.total(),
                "errors": {"client_timo": e.client_timo, "socket_timo": e.socket_timo,
                    "connrefused": e.connrefused, "connreset": e.connreset,
                    "fd_unavail": e.fd_unavail, "addrunavail": e.addrunavail, "other": e.other},
            });
            println!("{v}");
            return;
        }
        println!(
            "httpload --timeout={} --server={} --port={} --uri={} --rate={} --num-conns={} --num-calls={}{}",
            a.timeout.as_secs_f64(),
            a.server,
            a.port,
            a.uri,
            a.rate,
            a.num_conns,
            a.num_calls,
            a.concurrency
                .map_or(String::new(), |c| format!(" --concurrency={c} --duration={}", a.duration.as_secs_f64()))
        );
        println!();
        println!(
            "Total: connections {} requests {} replies {} test-duration {:.3} s",
            conns, self.requests, self.replies, elapsed
        );
        println!();
        println!(
            "Connection rate: {:.1} conn/s ({:.1} ms/conn, <={} concurrent connections)",
            conn_rate,
            if conn_rate > 0.0 {
                1e3 / conn_rate
            } else {
                0.0
            },
            self.max_concurrent
        );
        println!(
            "Connection time [ms]: min {:.1} avg {:.1} max {:.1} median {:.1} stddev {:.1}",
            if self.completed_conns > 0 {
                self.conn_time_min
            } else {
                0.0
            },
            ct_avg,
            self.conn_time_max,
            ct_med,
            ct_sd
        );
        println!(
            "Connection time [ms]: connect {:.1}",
            self.connect_time_sum / self.connects.max(1) as f64
        );
        println!(
            "Connection length [replies/conn]: {:.3}",
            self.replies as f64 / self.connects.max(1) as f64
        );
        println!();
        println!(
            "Request rate: {:.1} req/s ({:.1} ms/req)",
            req_rate,
            if req_rate > 0.0 { 1e3 / req_rate } else { 0.0 }
        );
        println!("Request size [B]: {:.1}", self.request.len() as f64);
        println!();
        println!(
            "Reply rate [replies/s]: min {smin:.1} avg {savg:.1} max {smax:.1} stddev {ssd:.1} ({} samples)",
            self.samples.len()
        );
        let r = self.replies.max(1) as f64;
        println!(
            "Reply time [ms]: response {:.1} transfer {:.1}",
            self.resp_time_sum / r,
            self.xfer_time_sum / r
        );
        println!(
            "Reply size [B]: header {:.1} content {:.1} footer 0.0 (total {:.1})",
            self.header_bytes as f64 / r,
            self.body_bytes as f64 / r,
            (self.header_bytes + self.body_bytes) as f64 / r
        );
        println!(
            "Reply status: 1xx={} 2xx={} 3xx={} 4xx={} 5xx={}",
            self.status[1], self.status[2], self.status[3], self.status[4], self.status[5]
        );
        println!();
        println!(
            "CPU time [s]: user {:.2} system {:.2} (user {:.1}% system {:.1}% total {:.1}%)",
            user,
            sys,
            100.0 * user / elapsed,
            100.0 * sys / elapsed,
            100.0 * (user + sys) / elapsed
        );
        let bytes = (self.bytes_in + self.bytes_out) as f64;
        println!(
            "Net I/O: {:.1} KB/s ({:.1}*10^6 bps)",
            bytes / elapsed / 1024.0,
            bytes * 8.0 / elapsed / 1e6
        );
        println!();
        println!(
            "Errors: total {} client-timo {} socket-timo {} connrefused {} connreset {}",
            e.total(),
            e.client_timo,
            e.socket_timo,
            e.connrefused,
            e.connreset
        );
        println!(
            "Errors: fd-unavail {} addrunavail {} ftab-full 0 other {}",
            e.fd_unavail, e.addrunavail, e.other
        );
        println!();
        println!(
            "Latency [ms]: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            self.latency.max() as f64 / 1e3
        );
    }
}
