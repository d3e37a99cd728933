//! The conference bridge: one thread, one kevent queue.
//!
//! ```text
//! UDP socket ─▶ PacketSource ─▶ Classifier ─┬─▶ channel 1 (participant 0's jitter buffer)
//!  (io_uring multishot recvmsg / recvmmsg)  ├─▶ channel 2 ...
//!                                           └─▶ channel 0: unknown flows = joins
//! Filter::Timer, frame period ─▶ mix: per participant pick one frame
//!     (late ones dropped, missing ones concealed with silence), sum all,
//!     each gets sum − own (saturated) ─▶ BatchSender (sendmmsg)
//! ```
//!
//! Packets are received by the kernel into pool buffers and read in place
//! by the mixer; nothing on the per-frame path allocates after warm-up.
//! The source is polled on a 1 ms `Filter::Timer` (`Rx::Tick`, the 1 kHz
//! storage) or on its `READ` event (`Rx::Event`), and always right before
//! a mix.

#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kevent::kevent_net::source::{payload, source_addr, HEADROOM};
use kevent::kevent_net::{
    channel, BatchSender, Buf, BufferPool, Classifier, Consumer, FlowKey, PacketDesc, PacketSource,
    RecvMode,
};
use kevent::kevent_timer::storage::timer;
use kevent::kevent_timer::MissedTickPolicy;
use kevent::{Backend, Filter, Kevent, Kqueue};

use crate::mix;
use crate::sim;

/// How the source is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rx {
    /// Polled on a 1 ms timer (and before each mix).
    Tick,
    /// Polled on its READ event (and before each mix).
    Event,
}

/// What the bridge is asked to do.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Address to listen on.
    pub(crate) listen: SocketAddr,
    /// Frame interval: 10, 20 or 40 ms.
    pub(crate) frame_ms: u32,
    /// Sample rate: 8000, 16000 or 48000 Hz.
    pub(crate) rate: u32,
    /// Start this many simulated participants on 127.0.0.1 (0: none).
    pub(crate) simulate: usize,
    /// Simulated jitter (0..=ms extra delay per frame).
    pub(crate) jitter_ms: u32,
    /// Simulated loss probability.
    pub(crate) loss: f64,
    /// Measured run time (after warm-up).
    pub(crate) seconds: f64,
    /// Warm-up before measuring.
    pub(crate) warmup: Duration,
    /// Most participants admitted.
    pub(crate) max_participants: usize,
    /// Queue backend.
    pub(crate) backend: Backend,
    /// How the source is driven.
    pub(crate) rx: Rx,
    /// Simulated participants read the mix back and check it.
    pub(crate) verify: bool,
    /// CPU to pin the bridge to (the simulation goes to the other one).
    pub(crate) cpu: Option<usize>,
    /// Run the bridge thread under `SCHED_FIFO` at this priority.
    pub(crate) fifo: Option<i32>,
    /// Allocations made so far by the calling thread, if the binary
    /// counts them.
    pub(crate) alloc_count: Option<fn() -> u64>,
}

/// What a run measured (the counters cover the measured window only).
#[derive(Clone, Debug, Default)]
pub(crate) struct Report {
    pub(crate) backend: String,
    pub(crate) recv_mode: String,
    pub(crate) participants: usize,
    pub(crate) seconds: f64,
    pub(crate) ticks: u64,
    /// Participant frames mixed and sent (one per active participant per tick).
    pub(crate) frames_mixed: u64,
    pub(crate) late_frames: u64,
    pub(crate) missing_frames: u64,
    pub(crate) deadlines_missed: u64,
    pub(crate) tick_p50_us: f64,
    pub(crate) tick_p99_us: f64,
    pub(crate) tick_max_us: f64,
    /// Bound on how far the measured schedule's start may precede the
    /// timer's real one (the timed ADD's duration): lateness is overstated
    /// by at most this.
    pub(crate) tick_schedule_uncertainty_us: f64,
    /// Wake-up to last send of a tick (poll, joins, mix, send), p99.
    pub(crate) mix_p99_us: f64,
    /// The `sendmmsg` part of a tick, p99.
    pub(crate) send_p99_us: f64,
    /// Frames dropped because they were too far ahead for the jitter buffer.
    pub(crate) overrun: u64,
    /// Participant frames of skipped intervals (deadline already passed
    /// when the timer event was handled): not sent.
    pub(crate) skipped_frames: u64,
    /// Receive syscalls of the source.
    pub(crate) rx_syscalls: u64,
    /// Multishot receives armed (1 = never ended).
    pub(crate) rx_arms: u64,
    /// Multishot receives ended by an empty buffer ring.
    pub(crate) rx_enobufs: u64,
    pub(crate) pps_in: f64,
    pub(crate) pps_out: f64,
    pub(crate) cpu_percent: f64,
    pub(crate) cpu_percent_per_100: f64,
    pub(crate) channel_full: u64,
    pub(crate) pool_empty: u64,
    pub(crate) send_dropped: u64,
    pub(crate) malformed: u64,
    pub(crate) allocs_after_warmup: Option<u64>,
    pub(crate) sim: Option<sim::SimReport>,
}

const UD_SOURCE: u64 = 1;
const UD_MIX: u64 = 2;
const UD_POLL: u64 = 3;
const MIX_TIMER: u64 = 1;
const POLL_TIMER: u64 = 2;

/// One participant: its channel (arrivals, in arrival order) and its
/// jitter buffer proper (frames by sequence number, for playout).
struct Participant {
    addr: SocketAddr,
    rx: Consumer,
    started: bool,
    /// Sequence number played at the next tick (before the start: the
    /// oldest seen).
    next_seq: u16,
    /// Frames waiting for playout, at `seq % slots.len()`: (buffer,
    /// length, seq). Allocated at join.
    slots: Vec<Option<(Buf, u32, u16)>>,
    held: usize,
    /// This tick's frame.
    cur: Option<(Buf, u32)>,
    out_seq: u16,
}

/// Counters inside the measured window.
#[derive(Default)]
struct Counters {
    ticks: u64,
    frames_mixed: u64,
    late: u64,
    missing: u64,
    missed: u64,
    malformed: u64,
    overrun: u64,
    skipped: u64,
    sent: u64,
    send_dropped: u64,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Largest simulated jitter, in ms.
pub(crate) const MAX_JITTER_MS: u32 = 1000;
/// Largest participant count.
pub(crate) const MAX_PARTICIPANTS: usize = 65535;
/// Longest measured run, in seconds (a day).
pub(crate) const MAX_SECONDS: f64 = 86_400.0;
/// Longest warm-up, in seconds.
pub(crate) const MAX_WARMUP_SECONDS: f64 = 3600.0;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Config {
    /// Checks every value against the ranges the bridge supports (the CLI
    /// checks them too, with clap errors; this guards direct callers).
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming the first value out of range.
    pub(crate) fn validate(&self) -> io::Result<()> {
        if !matches!(self.frame_ms, 10 | 20 | 40) {
            return Err(invalid(format!(
                "frame-ms {} is not 10, 20 or 40",
                self.frame_ms
            )));
        }
        if !matches!(self.rate, 8000 | 16000 | 48000) {
            return Err(invalid(format!(
                "rate {} is not 8000, 16000 or 48000",
                self.rate
            )));
        }
        if self.max_participants > MAX_PARTICIPANTS || self.simulate > MAX_PARTICIPANTS {
            return Err(invalid(format!("at most {MAX_PARTICIPANTS} participants")));
        }
        if self.jitter_ms > MAX_JITTER_MS {
            return Err(invalid(format!(
                "jitter-ms {} is above {MAX_JITTER_MS}",
                self.jitter_ms
            )));
        }
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(invalid(format!("loss {} is not in [0, 1]", self.loss)));
        }
        if !(self.seconds > 0.0 && self.seconds <= MAX_SECONDS) {
            return Err(invalid(format!(
                "seconds {} is not in (0, {MAX_SECONDS}]",
                self.seconds
            )));
        }
        if self.warmup.as_secs_f64() > MAX_WARMUP_SECONDS {
            return Err(invalid(format!("warm-up above {MAX_WARMUP_SECONDS} s")));
        }
        if let Some(p) = self.fifo {
            if !(1..=99).contains(&p) {
                return Err(invalid(format!("SCHED_FIFO priority {p} is not in 1..=99")));
            }
        }
        Ok(())
    }
}

/// Runs the bridge; returns the report.
pub(crate) fn run(cfg: &Config) -> io::Result<Report> {
    cfg.validate()?;
    if let Some(c) = cfg.cpu {
        sim::pin(c).map_err(|e| io::Error::new(e.kind(), format!("cannot pin to CPU {c}: {e}")))?;
    }
    if let Some(prio) = cfg.fifo {
        let param = libc::sched_param {
            sched_priority: prio,
        };
        // SAFETY: sets this thread's policy from a valid sched_param.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let samples = (cfg.rate * cfg.frame_ms / 1000) as usize;
    let frame_len = mix::RTP_HEADER + 2 * samples;
    let period = Duration::from_millis(u64::from(cfg.frame_ms));
    let max_p = cfg.max_participants.max(cfg.simulate).max(1);
    // Jitter buffer: start playing once `prebuffer` frames wait, so at
    // least 20 ms of margin (plus the jitter's worth) absorbs arrival
    // noise around the tick; room for a few more.
    let prebuffer = 1 + (cfg.jitter_ms + 20).div_ceil(cfg.frame_ms) as usize;
    let depth = (prebuffer + 3).next_power_of_two().max(4);

    let kq = Kqueue::with_backend(cfg.backend)?;
    let backend = kq.backend();
    let sock = UdpSocket::bind(cfg.listen)?;
    set_buf(&sock, libc::SO_RCVBUF, 4 << 20);
    set_buf(&sock, libc::SO_SNDBUF, 4 << 20);
    let ring_entries = (max_p.next_power_of_two() / 2).clamp(256, 8192) as u16;
    let buf_size = (HEADROOM + frame_len).next_power_of_two().max(256);
    let count = (max_p * (depth + 1) + usize::from(ring_entries) + 1024).min(65536) as u32;
    let pool = Arc::new(
        BufferPool::new(count, buf_size)
            .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?,
    );
    let classifier = Classifier::new(max_p + 1, 0)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mode = match RecvMode::for_backend(backend) {
        RecvMode::Multishot { .. } => RecvMode::Multishot { ring_entries },
        m => m,
    };
    let mut src = PacketSource::new(sock, Arc::clone(&pool), classifier, mode)?;
    src.classifier()
        .reserve(max_p)
        .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
    let local = src.local_addr();
    let (tx0, mut joins) = channel(1024).map_err(io::Error::other)?;
    src.set_producer(0, tx0)?;
    if cfg.rx == Rx::Event {
        src.register(&kq, UD_SOURCE)?;
    }

    // Simulated participants.
    let stop = Arc::new(AtomicBool::new(false));
    let sim = if cfg.simulate > 0 {
        let (socks, _addrs) = sim::bind(cfg.simulate, cfg.verify)?;
        let target = SocketAddr::new([127, 0, 0, 1].into(), local.port());
        let sc = sim::SimConfig {
            n: cfg.simulate,
            frame_ms: cfg.frame_ms,
            samples,
            jitter_ms: cfg.jitter_ms,
            loss: cfg.loss,
            target,
            verify: cfg.verify,
            cpu: cfg.cpu.map(|c| 1 - c.min(1)),
        };
        Some(sim::spawn(sc, socks, Arc::clone(&stop))?)
    } else {
        None
    };

    let mut parts: Vec<Participant> = Vec::with_capacity(max_p);
    let mut out = vec![0u8; max_p * frame_len];
    let mut acc = vec![0i32; samples];
    let mut sender = BatchSender::new(256);
    let mut tick_hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let mut mix_hist = tick_hist.clone();
    let mut send_hist = tick_hist.clone();
    let mut c = Counters::default();
    let mut joined_buf = [PacketDesc::default(); 64];

    // Tick lateness is measured against the mix timer's own schedule,
    // `start + k·period`, where `start` is the monotonic time the timer
    // storage reads while it applies the ADD — inside the `kevent()` call.
    // The first ADD creates the storage's timerfd (syscalls after that
    // read); the timed ADD below restarts the timer (discarding the first
    // schedule), so only the lock and the change dispatch come between
    // `before` and the read: `before <= start <= after`, lateness is
    // overstated by at most `after - before`, reported as the schedule's
    // uncertainty.
    let mix = timer(MIX_TIMER, period, MissedTickPolicy::Merge, UD_MIX);
    kq.kevent(&[mix], &mut [], None)?;
    if cfg.rx == Rx::Tick {
        let poll = timer(
            POLL_TIMER,
            Duration::from_millis(1),
            MissedTickPolicy::Merge,
            UD_POLL,
        );
        kq.kevent(&[poll], &mut [], None)?;
    }
    let before = Instant::now();
    kq.kevent(&[mix], &mut [], None)?;
    let after = Instant::now();
    let t0 = before;
    let schedule_uncertainty = after - before;
    let period_ns = u64::from(cfg.frame_ms) * 1_000_000;
    // Deadline of the mix timer's expiration number `n` (1-based).
    let deadline = |n: u64| t0 + Duration::from_nanos(period_ns.saturating_mul(n));
    let warm_end = t0 + cfg.warmup;
    let end = warm_end + Duration::from_secs_f64(cfg.seconds);
    let mut measuring = false;
    let (mut cpu0, mut st0, mut allocs0, mut sent0) = (Duration::ZERO, src.stats(), 0, 0);
    let mut k: u64 = 0; // expirations of the mix timer so far
    let mut ev = [Kevent::default(); 16];
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if !measuring && now >= warm_end {
            measuring = true;
            cpu0 = thread_cpu();
            st0 = src.stats();
            allocs0 = cfg.alloc_count.map_or(0, |f| f());
            sent0 = c.sent;
            c = Counters {
                sent: c.sent,
                ..Counters::default()
            };
            tick_hist.reset();
            mix_hist.reset();
            send_hist.reset();
        }
        let n = match kq.kevent(&[], &mut ev, Some(end - now)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for e in &ev[..n] {
            match e.udata {
                UD_SOURCE | UD_POLL => {
                    src.poll()?;
                }
                UD_MIX if e.filter == Filter::Timer => {
                    let woke = Instant::now();
                    let exp = e.data.max(1) as u64;
                    let first_deadline = deadline(k + 1);
                    k += exp;
                    let late = woke.saturating_duration_since(first_deadline);
                    src.poll()?;
                    admit(
                        &mut src,
                        &mut joins,
                        &mut joined_buf,
                        &pool,
                        &mut parts,
                        max_p,
                        depth,
                    );
                    let mut send_time = Duration::ZERO;
                    // Intervals whose deadline already passed are not sent
                    // late (a burst of stale audio would only push the next
                    // deadline further away): their frames are played out
                    // silently, then the current interval is mixed and sent.
                    for _ in 1..exp {
                        skip_round(&pool, &mut parts, samples, prebuffer, &mut c);
                    }
                    mix_round(
                        &pool, &mut parts, &mut acc, &mut out, frame_len, samples, prebuffer,
                        &mut c,
                    );
                    let ts = Instant::now();
                    let st = sender.send_with(src.socket(), parts.len(), |i| {
                        (&out[i * frame_len..(i + 1) * frame_len], parts[i].addr)
                    });
                    send_time += ts.elapsed();
                    c.sent += st.sent as u64;
                    c.send_dropped += (st.would_block + st.errors) as u64;
                    c.ticks += exp;
                    let done = Instant::now();
                    // The mix of the last expiration must be out before the
                    // next frame is due; earlier ones merged into this event
                    // missed theirs already (and were skipped).
                    let last_deadline = deadline(k + 1);
                    c.missed += exp - 1 + u64::from(done > last_deadline);
                    let _ = tick_hist.record(late.as_micros() as u64 + 1);
                    let _ = mix_hist.record(done.duration_since(woke).as_micros() as u64 + 1);
                    let _ = send_hist.record(send_time.as_micros() as u64 + 1);
                }
                _ => {}
            }
        }
    }
    let window = Instant::now().duration_since(if measuring { warm_end } else { t0 });
    let cpu = thread_cpu() - cpu0;
    let st = src.stats();
    let allocs = cfg.alloc_count.map(|f| f() - allocs0);
    stop.store(true, Ordering::Relaxed);
    let sim_report = match sim {
        Some(h) => Some(
            h.join()
                .map_err(|_| io::Error::other("simulation panicked"))?,
        ),
        None => None,
    };
    // Frames still held go back to the pool.
    for p in &mut parts {
        pool.free_batch(
            p.slots
                .iter_mut()
                .filter_map(|x| x.take().map(|(b, _, _)| b)),
        );
    }
    let secs = window.as_secs_f64().max(1e-9);
    let cpu_percent = 100.0 * cpu.as_secs_f64() / secs;
    let n = parts.len();
    Ok(Report {
        backend: format!("{backend:?}"),
        recv_mode: format!("{:?}", src.mode()),
        participants: n,
        seconds: secs,
        ticks: c.ticks,
        frames_mixed: c.frames_mixed,
        late_frames: c.late,
        missing_frames: c.missing,
        deadlines_missed: c.missed,
        tick_p50_us: tick_hist.value_at_quantile(0.5) as f64 - 1.0,
        tick_p99_us: tick_hist.value_at_quantile(0.99) as f64 - 1.0,
        tick_max_us: tick_hist.max() as f64 - 1.0,
        tick_schedule_uncertainty_us: schedule_uncertainty.as_secs_f64() * 1e6,
        mix_p99_us: mix_hist.value_at_quantile(0.99) as f64 - 1.0,
        send_p99_us: send_hist.value_at_quantile(0.99) as f64 - 1.0,
        overrun: c.overrun,
        skipped_frames: c.skipped,
        rx_syscalls: st.syscalls - st0.syscalls,
        rx_arms: st.arms - st0.arms,
        rx_enobufs: st.enobufs - st0.enobufs,
        pps_in: (st.packets - st0.packets) as f64 / secs,
        pps_out: (c.sent - sent0) as f64 / secs,
        cpu_percent,
        cpu_percent_per_100: if n > 0 {
            cpu_percent * 100.0 / n as f64
        } else {
            0.0
        },
        channel_full: st.channel_full - st0.channel_full,
        pool_empty: st.pool_empty - st0.pool_empty,
        send_dropped: c.send_dropped,
        malformed: c.malformed,
        allocs_after_warmup: allocs,
        sim: sim_report,
    })
}

fn set_buf(sock: &UdpSocket, opt: libc::c_int, size: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt with a valid int option value; failure is fine
    // (the kernel caps it at rmem_max/wmem_max anyway).
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Unknown flows arrive on channel 0: each new source address becomes a
/// participant with its own channel (allocation here is per join, not
/// per frame). The joining packet itself is discarded.
fn admit(
    src: &mut PacketSource,
    joins: &mut Consumer,
    buf: &mut [PacketDesc],
    pool: &BufferPool,
    parts: &mut Vec<Participant>,
    max_p: usize,
    depth: usize,
) {
    loop {
        let n = joins.pop_into(buf);
        if n == 0 {
            return;
        }
        for d in &buf[..n] {
            // SAFETY: ids come from the source through the channel, once.
            let Ok(b) = (unsafe { pool.from_raw(d.buf) }) else {
                continue;
            };
            let addr = pool.bytes(&b).ok().and_then(source_addr);
            pool.free(b);
            let Some(addr) = addr else { continue };
            let key = FlowKey::udp(addr, src.local_addr());
            if parts.len() >= max_p
                || src.classifier().lookup(&key).flow != Classifier::DEFAULT_FLOW
            {
                continue;
            }
            let idx = parts.len() + 1;
            let Ok((tx, rx)) = channel(depth) else {
                continue;
            };
            if src.classifier().insert(key, idx).is_err() || src.set_producer(idx, tx).is_err() {
                continue;
            }
            parts.push(Participant {
                addr,
                rx,
                started: false,
                next_seq: 0,
                slots: (0..depth).map(|_| None).collect(),
                held: 0,
                cur: None,
                out_seq: 0,
            });
        }
    }
}

/// Moves `p`'s arrivals from its channel into its jitter buffer (late
/// ones dropped, out-of-order ones put in place), then takes the frame
/// due this tick into `p.cur`; a gap is counted as missing and concealed
/// (with silence) by the caller.
fn pick(
    p: &mut Participant,
    pool: &BufferPool,
    samples: usize,
    prebuffer: usize,
    c: &mut Counters,
) {
    let r = p.slots.len();
    while let Ok(d) = p.rx.pop() {
        // SAFETY: ids come from the source through the channel, once.
        let Ok(b) = (unsafe { pool.from_raw(d.buf) }) else {
            continue;
        };
        let seq = pool
            .bytes(&b)
            .ok()
            .and_then(|bytes| payload(bytes, d.len))
            .and_then(|pkt| mix::frame_seq(pkt, samples));
        let Some(seq) = seq else {
            c.malformed += 1;
            pool.free(b);
            continue;
        };
        if !p.started && p.held == 0 {
            p.next_seq = seq;
        }
        let ahead = seq.wrapping_sub(p.next_seq) as i16;
        if ahead < 0 {
            if p.started {
                c.late += 1;
                pool.free(b);
                continue;
            }
            p.next_seq = seq; // an older frame before playout began
        } else if ahead as usize >= r {
            c.overrun += 1; // too far ahead for the buffer
            pool.free(b);
            continue;
        }
        let slot = &mut p.slots[usize::from(seq) % r];
        if slot.is_some() {
            c.malformed += 1; // duplicate (or stale) sequence number
            pool.free(b);
            continue;
        }
        *slot = Some((b, d.len, seq));
        p.held += 1;
    }
    if !p.started {
        if p.held < prebuffer {
            return;
        }
        p.started = true;
    }
    let due = p.next_seq;
    p.next_seq = due.wrapping_add(1);
    match p.slots[usize::from(due) % r].take() {
        Some((b, len, seq)) if seq == due => {
            p.held -= 1;
            p.cur = Some((b, len));
        }
        Some((b, _, _)) => {
            // A frame older than the playout point: it missed its tick.
            p.held -= 1;
            c.late += 1;
            c.missing += 1;
            pool.free(b);
        }
        None => c.missing += 1,
    }
}

/// An interval whose deadline passed: each participant's due frame is
/// taken from its jitter buffer and dropped, nothing is sent.
fn skip_round(
    pool: &BufferPool,
    parts: &mut [Participant],
    samples: usize,
    prebuffer: usize,
    c: &mut Counters,
) {
    for p in parts.iter_mut() {
        pick(p, pool, samples, prebuffer, c);
    }
    c.skipped += parts.len() as u64;
    pool.free_batch(
        parts
            .iter_mut()
            .filter_map(|p| p.cur.take().map(|(b, _)| b)),
    );
}

/// One mixing round over every participant; fills `out` (one frame per
/// participant) and frees the frames played.
#[allow(clippy::too_many_arguments)]
fn mix_round(
    pool: &BufferPool,
    parts: &mut [Participant],
    acc: &mut [i32],
    out: &mut [u8],
    frame_len: usize,
    samples: usize,
    prebuffer: usize,
    c: &mut Counters,
) {
    acc.fill(0);
    for p in parts.iter_mut() {
        pick(p, pool, samples, prebuffer, c);
        if let Some((b, len)) = &p.cur {
            if let Some(pkt) = pool.bytes(b).ok().and_then(|x| payload(x, *len)) {
                mix::accumulate(acc, mix::pcm(pkt));
            }
        }
    }
    for (i, p) in parts.iter_mut().enumerate() {
        let o = &mut out[i * frame_len..(i + 1) * frame_len];
        let ts = u32::from(p.out_seq).wrapping_mul(samples as u32);
        mix::write_header(o, p.out_seq, ts, i as u32);
        p.out_seq = p.out_seq.wrapping_add(1);
        let own = p
            .cur
            .as_ref()
            .and_then(|(b, len)| pool.bytes(b).ok().and_then(|x| payload(x, *len)))
            .map(mix::pcm);
        mix::minus_own(acc, own, &mut o[mix::RTP_HEADER..]);
        c.frames_mixed += 1;
    }
    pool.free_batch(
        parts
            .iter_mut()
            .filter_map(|p| p.cur.take().map(|(b, _)| b)),
    );
}
