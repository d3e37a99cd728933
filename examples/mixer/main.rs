//! `mixer`: a conference bridge on kevent's packet path and 1 kHz timer.
//!
//! N participants send RTP L16 frames (12-byte header + `frame-ms` of
//! `rate` Hz 16-bit PCM) to one UDP socket. A `PacketSource` (io_uring
//! multishot recvmsg into a provided-buffer ring, or `recvmmsg` on epoll)
//! classifies each participant's packets into its own channel, a small
//! jitter buffer; a periodic `Filter::Timer` mixes every frame interval:
//! each participant gets the saturated sum of all the others, sent back
//! with `sendmmsg`.
//!
//! ```text
//! cargo run --release --example mixer -- --simulate 1000 --seconds 5
//! cargo run --release --example mixer -- --simulate 3 --jitter-ms 30 --loss 0.01 --verify --json
//! cargo run --release --example mixer -- --listen 0.0.0.0:5004 --seconds 60   # real participants
//! ```
//!
//! The report: participants, frames mixed, late and missing frames
//! (concealed with silence), mixing deadlines missed (a frame interval's
//! mix not sent before the next frame was due, or merged timer
//! expirations), tick lateness p50/p99/max (wake-up time minus the ideal
//! `start + k·period`), packets/s in and out, CPU % of the bridge thread
//! (and per 100 participants), and the allocations made after warm-up
//! by the bridge thread (this binary counts them per thread with its
//! global allocator).
//!
//! # Figures (this 2-core VM, shared, 20 ms / 8 kHz, 5 s each, bridge on CPU 1)
//!
//! | N | `--fifo 10`: missed (io_uring / epoll) | default: missed | CPU % per 100 |
//! |---|---|---|---|
//! | 1000 | 0 / 0 | 0 / 0 | 3.2 |
//! | 1500 | 0 / 0 | 0–2 / 0–78 | 2.8 |
//! | 2000 | 0 / 0 | 0–253 / 0–68 | 2.7 |
//! | 2500 | 1 / 0 | — | 2.7 |
//! | 3000 | 0 / 0 | — | 2.4 (72 % of a core) |
//! | 3500 | 4 / 9 | — | 2.6 (91 %) |
//!
//! Without `SCHED_FIFO` other processes on the shared cores decide: 1000 is
//! clean in every run, 1500–2000 in quiet ones. Tick lateness p50 is
//! 50–65 µs; the `sendmmsg` of the mixed frames is most of each tick's work
//! (on loopback it also runs the participants' receive path, ~4.5 µs per
//! datagram). No allocation after warm-up in any run.

mod bridge;
mod mix;
mod sim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Parser, ValueEnum};
use kevent::Backend;

struct Counting;

thread_local! {
    /// Allocations made by this thread (a const-initialised TLS cell:
    /// reading it never allocates).
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made so far by the calling thread.
fn allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Epoll,
    Uring,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RxArg {
    /// Poll the source on a 1 ms timer.
    Tick,
    /// Poll the source on its READ event.
    Event,
}

/// Largest `--jitter-ms`: a second of jitter is already far beyond what a
/// jitter buffer for conversation absorbs.
const MAX_JITTER_MS: u32 = bridge::MAX_JITTER_MS;
/// Largest participant count (RTP SSRCs and buffer ids are 16-bit here).
const MAX_PARTICIPANTS: u64 = bridge::MAX_PARTICIPANTS as u64;

/// A finite `f64` in `lo..=hi` (`open_lo`: `lo` itself excluded).
fn ranged_f64(s: &str, lo: f64, hi: f64, open_lo: bool) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    let low_ok = if open_lo { v > lo } else { v >= lo };
    if !v.is_finite() || !low_ok || v > hi {
        let l = if open_lo { "(" } else { "[" };
        return Err(format!("{v} is not in {l}{lo}, {hi}]"));
    }
    Ok(v)
}

fn loss_arg(s: &str) -> Result<f64, String> {
    ranged_f64(s, 0.0, 1.0, false)
}

fn seconds_arg(s: &str) -> Result<f64, String> {
    ranged_f64(s, 0.0, bridge::MAX_SECONDS, true)
}

fn warmup_arg(s: &str) -> Result<f64, String> {
    ranged_f64(s, 0.0, bridge::MAX_WARMUP_SECONDS, false)
}

/// A conference bridge on kevent: mix-minus of N participants every frame.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Frame interval in ms: 10, 20 or 40.
    #[arg(long, default_value_t = 20, value_parser = clap::builder::PossibleValuesParser::new(["10", "20", "40"]).map(|s| s.parse::<u32>().unwrap_or(20)))]
    frame_ms: u32,
    /// Sample rate in Hz: 8000, 16000 or 48000.
    #[arg(long, default_value_t = 8000, value_parser = clap::builder::PossibleValuesParser::new(["8000", "16000", "48000"]).map(|s| s.parse::<u32>().unwrap_or(8000)))]
    rate: u32,
    /// Start N simulated participants on 127.0.0.1 (0..=65535).
    #[arg(long, default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_PARTICIPANTS))]
    simulate: usize,
    /// Simulated jitter: each frame delayed by 0..=ms (at most 1000).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_JITTER_MS)))]
    jitter_ms: u32,
    /// Simulated loss probability (0..=1).
    #[arg(long, default_value_t = 0.0, value_parser = loss_arg)]
    loss: f64,
    /// Measured seconds after warm-up (0 < s <= 86400).
    #[arg(long, default_value_t = 5.0, value_parser = seconds_arg)]
    seconds: f64,
    /// Warm-up seconds: participants join, jitter buffers fill (0..=3600).
    #[arg(long, default_value_t = 1.0, value_parser = warmup_arg)]
    warmup: f64,
    /// Most participants admitted, 1..=65535 (default: --simulate, or 1024).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_PARTICIPANTS))]
    max_participants: Option<usize>,
    /// Queue backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// How the packet source is driven.
    #[arg(long, value_enum, default_value_t = RxArg::Tick)]
    rx: RxArg,
    /// Simulated participants read the mix back and check it.
    #[arg(long)]
    verify: bool,
    /// Pin the bridge to this CPU (the simulation goes to the other of
    /// 0/1); it must be one this process may run on.
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..libc::CPU_SETSIZE as u64))]
    cpu: Option<usize>,
    /// Run the bridge thread under SCHED_FIFO at this priority (1..=99;
    /// needs CAP_SYS_NICE), as a real-time bridge would.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=99))]
    fifo: Option<i32>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Every numeric value is range-checked by its parser: an absurd one is
    // a clap usage error (exit status 2), never a panic further on.
    let a = Args::parse();
    let cfg = bridge::Config {
        listen: a.listen,
        frame_ms: a.frame_ms,
        rate: a.rate,
        simulate: a.simulate,
        jitter_ms: a.jitter_ms,
        loss: a.loss,
        seconds: a.seconds,
        warmup: Duration::from_secs_f64(a.warmup),
        max_participants: a.max_participants.unwrap_or(if a.simulate > 0 {
            a.simulate
        } else {
            1024
        }),
        backend: match a.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Epoll => Backend::Epoll,
            BackendArg::Uring => Backend::IoUring,
        },
        rx: match a.rx {
            RxArg::Tick => bridge::Rx::Tick,
            RxArg::Event => bridge::Rx::Event,
        },
        verify: a.verify,
        cpu: a.cpu,
        fifo: a.fifo,
        alloc_count: Some(allocs),
    };
    let r = match bridge::run(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mixer: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.json {
        let mut v = serde_json::json!({
            "backend": r.backend,
            "recv_mode": r.recv_mode,
            "frame_ms": a.frame_ms,
            "rate": a.rate,
            "participants": r.participants,
            "seconds": r.seconds,
            "ticks": r.ticks,
            "frames_mixed": r.frames_mixed,
            "late_frames": r.late_frames,
            "missing_frames": r.missing_frames,
            "deadlines_missed": r.deadlines_missed,
            "tick_lateness_us": {"p50": r.tick_p50_us, "p99": r.tick_p99_us, "max": r.tick_max_us},
            "tick_schedule_uncertainty_us": r.tick_schedule_uncertainty_us,
            "mix_p99_us": r.mix_p99_us,
            "send_p99_us": r.send_p99_us,
            "overrun": r.overrun,
            "skipped_frames": r.skipped_frames,
            "rx_syscalls": r.rx_syscalls,
            "rx_arms": r.rx_arms,
            "rx_enobufs": r.rx_enobufs,
            "pps_in": r.pps_in,
            "pps_out": r.pps_out,
            "cpu_percent": r.cpu_percent,
            "cpu_percent_per_100_participants": r.cpu_percent_per_100,
            "channel_full": r.channel_full,
            "pool_empty": r.pool_empty,
            "send_dropped": r.send_dropped,
            "malformed": r.malformed,
            "allocs_after_warmup": r.allocs_after_warmup,
        });
        if let Some(s) = r.sim {
            v["sim"] = serde_json::json!({
                "sent": s.sent, "lost": s.lost, "send_errors": s.send_errors,
                "received": s.received, "exact_full": s.exact_full,
                "partial": s.partial, "bad": s.bad,
            });
        }
        println!("{v}");
    } else {
        println!(
            "mixer: {} participants, {} ms / {} Hz, {} ({}), {:.1} s measured",
            r.participants, a.frame_ms, a.rate, r.backend, r.recv_mode, r.seconds
        );
        println!(
            "  ticks {}  frames mixed {}  late {}  missing (concealed) {}  deadlines missed {} (frames skipped {})",
            r.ticks, r.frames_mixed, r.late_frames, r.missing_frames, r.deadlines_missed, r.skipped_frames
        );
        println!(
            "  tick lateness p50 {:.0} us  p99 {:.0} us  max {:.0} us (timer schedule known to {:.1} us)   tick work p99 {:.0} us (sendmmsg {:.0} us)",
            r.tick_p50_us, r.tick_p99_us, r.tick_max_us, r.tick_schedule_uncertainty_us, r.mix_p99_us, r.send_p99_us
        );
        println!(
            "  packets/s in {:.0}  out {:.0}   CPU {:.1} % ({:.2} % per 100 participants)",
            r.pps_in, r.pps_out, r.cpu_percent, r.cpu_percent_per_100
        );
        println!(
            "  drops: channel full {}  pool empty {}  send {}  malformed {}  overrun {}   allocations after warm-up {}",
            r.channel_full,
            r.pool_empty,
            r.send_dropped,
            r.malformed,
            r.overrun,
            r.allocs_after_warmup.map_or("n/a".into(), |n| n.to_string())
        );
        println!(
            "  receive: {} syscalls ({:.3} per packet), multishot re-arms {}, ENOBUFS {}",
            r.rx_syscalls,
            r.rx_syscalls as f64 / (r.pps_in * r.seconds).max(1.0),
            r.rx_arms,
            r.rx_enobufs
        );
        if let Some(s) = r.sim {
            println!(
                "  participants: sent {} lost {} errors {}  received {} (exact {} partial {} bad {})",
                s.sent, s.lost, s.send_errors, s.received, s.exact_full, s.partial, s.bad
            );
        }
    }
    ExitCode::SUCCESS
}
