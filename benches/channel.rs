//! 16-byte packet descriptors between two threads: kevent-net's `Channel`
//! against its peers, in one group so the report reads as ratios.
//!
//! - `channel/throughput/*`: one producer and one consumer thread, both
//!   busy-polling; items/s. kevent `Channel` single push/pop and burst
//!   (write/read chunks), `rtrb` single and chunked, crossbeam's
//!   `ArrayQueue`, `std::sync::mpsc::sync_channel` (blocking).
//! - `channel/handoff_one_way/*`: ping-pong over two rings with both sides
//!   busy-polling; the time reported is half a round trip, i.e. one
//!   hand-off from one core to the other.
//!
//! - `channel/wake_per_burst/*`: what waking a consumer asleep in its
//!   kevent queue costs, for the two designs a channel's wake-up could
//!   take: the producer writes the channel's eventfd, which the queue
//!   watches as a `READ` knote (what `ChannelConsumer` does), or the
//!   producer triggers a `Filter::User` knote through the queue
//!   (`NOTE_TRIGGER`). Both on epoll and io_uring. The time is the
//!   wake-up latency (wake call to the consumer running again).
//!
//! Goals (issue 6): burst >= 1.0x rtrb chunked and >= 20x ArrayQueue;
//! one-way hand-off <= 60 ns. Run:
//! `cargo bench --bench channel -- --warm-up-time 1 --measurement-time 3`.
//! After criterion, an interleaved summary (every peer once per round,
//! medians over the rounds) prints rates beside process CPU time per
//! descriptor, the goal ratios with PASS/FAIL, and the wake-up costs;
//! `cargo bench --bench channel -- NONE` runs only the summary.

mod common;

use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use kevent::kevent_net::{channel, Notifier, PacketDesc};
use kevent::{note, Backend, Filter, Flags, Kevent, Kqueue};

/// Ring capacity for every peer.
const CAP: usize = 4096;
/// Largest burst for the chunked variants.
const BURST: usize = 256;
/// Descriptors per criterion iteration: large enough that spawning the
/// consumer thread (tens of µs) is ~1 % of the fastest sample.
const BATCH: u64 = 1 << 20;
/// Round trips per criterion iteration of the hand-off benchmark.
const TRIPS: u64 = 10_000;

/// Busy-polls, but yields after a while: on this shared 2-core machine the
/// partner thread may be descheduled, and spinning for a whole time slice
/// would measure the scheduler. Same policy for every peer.
#[inline]
fn idle(spins: &mut u32) {
    *spins = spins.wrapping_add(1);
    if *spins & 1023 == 0 {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn desc(i: u64) -> PacketDesc {
    PacketDesc::new(i as u32, 64, i)
}

use common::{process_cpu, thread_cpu};

/// One timed run: wall time, and the CPU time both threads used.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

/// Runs `produce` on this thread and `consume` on another, both released
/// by one barrier; returns the wall and process CPU time until both are
/// done (the thread spawn is outside the CPU window but not the wall one:
/// tens of µs against runs of milliseconds).
fn two_threads<P, C>(produce: P, consume: C) -> Sample
where
    P: FnOnce(),
    C: FnOnce() -> u64 + Send + 'static,
{
    let start = Arc::new(Barrier::new(2));
    let s2 = start.clone();
    let consumer = thread::spawn(move || {
        s2.wait();
        consume()
    });
    start.wait();
    let t = Instant::now();
    let c = process_cpu();
    produce();
    black_box(consumer.join().unwrap());
    Sample {
        wall: t.elapsed(),
        cpu: process_cpu() - c,
    }
}

fn kevent_single(n: u64) -> Sample {
    let (mut tx, mut rx) = channel(CAP).unwrap();
    two_threads(
        move || {
            let mut spins = 0u32;
            for i in 0..n {
                let mut d = desc(i);
                while let Err(e) = tx.push(d) {
                    d = e.into_inner();
                    idle(&mut spins);
                }
            }
        },
        move || {
            let mut spins = 0u32;
            let mut sum = 0u64;
            let mut got = 0;
            while got < n {
                if let Ok(d) = rx.pop() {
                    sum = sum.wrapping_add(d.flow);
                    got += 1;
                } else {
                    idle(&mut spins);
                }
            }
            sum
        },
    )
}

fn kevent_burst(n: u64) -> Sample {
    let (mut tx, mut rx) = channel(CAP).unwrap();
    two_threads(
        move || {
            let mut spins = 0u32;
            let mut next = 0u64;
            while next < n {
                let k = tx.slots().min(BURST).min((n - next) as usize);
                if k == 0 {
                    idle(&mut spins);
                    continue;
                }
                let mut chunk = tx.write_chunk(k).unwrap();
                let (a, b) = chunk.as_mut_slices();
                for (j, d) in a.iter_mut().chain(b).enumerate() {
                    *d = desc(next + j as u64);
                }
                chunk.commit_all();
                next += k as u64;
            }
        },
        move || {
            let mut spins = 0u32;
            let mut sum = 0u64;
            let mut got = 0u64;
            while got < n {
                let k = rx.slots().min(BURST);
                if k == 0 {
                    idle(&mut spins);
                    continue;
                }
                let chunk = rx.read_chunk(k).unwrap();
                let (a, b) = chunk.as_slices();
                for d in a.iter().chain(b) {
                    sum = sum.wrapping_add(d.flow);
                }
                chunk.commit_all();
                got += k as u64;
            }
            sum
        },
    )
}

fn rtrb_single(n: u64) -> Sample {
    let (mut tx, mut rx) = rtrb::RingBuffer::<PacketDesc>::new(CAP);
    two_threads(
        move || {
            let mut spins = 0u32;
            for i in 0..n {
                let mut d = desc(i);
                while let Err(rtrb::PushError::Full(back)) = tx.push(d) {
                    d = back;
                    idle(&mut spins);
                }
            }
        },
        move || {
            let mut spins = 0u32;
            let mut sum = 0u64;
            let mut got = 0;
            while got < n {
                if let Ok(d) = rx.pop() {
                    sum = sum.wrapping_add(d.flow);
                    got += 1;
                } else {
                    idle(&mut spins);
                }
            }
            sum
        },
    )
}

fn rtrb_chunked(n: u64) -> Sample {
    let (mut tx, mut rx) = rtrb::RingBuffer::<PacketDesc>::new(CAP);
    two_threads(
        move || {
            let mut spins = 0u32;
            let mut next = 0u64;
            while next < n {
                let k = tx.slots().min(BURST).min((n - next) as usize);
                if k == 0 {
                    idle(&mut spins);
                    continue;
                }
                let mut chunk = tx.write_chunk(k).unwrap();
                let (a, b) = chunk.as_mut_slices();
                for (j, d) in a.iter_mut().chain(b).enumerate() {
                    *d = desc(next + j as u64);
                }
                chunk.commit_all();
                next += k as u64;
            }
        },
        move || {
            let mut spins = 0u32;
            let mut sum = 0u64;
            let mut got = 0u64;
            while got < n {
                let k = rx.slots().min(BURST);
                if k == 0 {
                    idle(&mut spins);
                    continue;
                }
                let chunk = rx.read_chunk(k).unwrap();
                let (a, b) = chunk.as_slices();
                for d in a.iter().chain(b) {
                    sum = sum.wrapping_add(d.flow);
                }
                chunk.commit_all();
                got += k as u64;
            }
            sum
        },
    )
}

fn array_queue(n: u64) -> Sample {
    let q = Arc::new(ArrayQueue::<PacketDesc>::new(CAP));
    let rx = q.clone();
    two_threads(
        move || {
            let mut spins = 0u32;
            for i in 0..n {
                let mut d = desc(i);
                while let Err(back) = q.push(d) {
                    d = back;
                    idle(&mut spins);
                }
            }
        },
        move || {
            let mut spins = 0u32;
            let mut sum = 0u64;
            let mut got = 0;
            while got < n {
                if let Some(d) = rx.pop() {
                    sum = sum.wrapping_add(d.flow);
                    got += 1;
                } else {
                    idle(&mut spins);
                }
            }
            sum
        },
    )
}

fn std_sync_channel(n: u64) -> Sample {
    let (tx, rx) = sync_channel::<PacketDesc>(CAP);
    two_threads(
        move || {
            for i in 0..n {
                tx.send(desc(i)).unwrap();
            }
        },
        move || {
            let mut sum = 0u64;
            for _ in 0..n {
                sum = sum.wrapping_add(rx.recv().unwrap().flow);
            }
            sum
        },
    )
}

/// `iters * TRIPS` round trips over two kevent channels; returns the time
/// (wall and CPU) of `iters` one-way hand-offs (half a round trip each).
fn kevent_handoff(iters: u64) -> Sample {
    let iters = iters * TRIPS;
    let (mut ping_tx, mut ping_rx) = channel(64).unwrap();
    let (mut pong_tx, mut pong_rx) = channel(64).unwrap();
    let rtt = two_threads(
        move || {
            let mut spins = 0u32;
            for i in 0..iters {
                ping_tx.push(desc(i)).unwrap();
                loop {
                    if let Ok(d) = pong_rx.pop() {
                        black_box(d);
                        break;
                    }
                    idle(&mut spins);
                }
            }
        },
        move || {
            let mut spins = 0u32;
            for _ in 0..iters {
                loop {
                    if let Ok(d) = ping_rx.pop() {
                        pong_tx.push(d).unwrap();
                        break;
                    }
                    idle(&mut spins);
                }
            }
            0
        },
    );
    Sample {
        wall: rtt.wall / (2 * TRIPS as u32),
        cpu: rtt.cpu / (2 * TRIPS as u32),
    }
}

/// The same ping-pong over rtrb, for scale.
fn rtrb_handoff(iters: u64) -> Sample {
    let iters = iters * TRIPS;
    let (mut ping_tx, mut ping_rx) = rtrb::RingBuffer::<PacketDesc>::new(64);
    let (mut pong_tx, mut pong_rx) = rtrb::RingBuffer::<PacketDesc>::new(64);
    let rtt = two_threads(
        move || {
            let mut spins = 0u32;
            for i in 0..iters {
                ping_tx.push(desc(i)).unwrap();
                loop {
                    if let Ok(d) = pong_rx.pop() {
                        black_box(d);
                        break;
                    }
                    idle(&mut spins);
                }
            }
        },
        move || {
            let mut spins = 0u32;
            for _ in 0..iters {
                loop {
                    if let Ok(d) = ping_rx.pop() {
                        pong_tx.push(d).unwrap();
                        break;
                    }
                    idle(&mut spins);
                }
            }
            0
        },
    );
    Sample {
        wall: rtt.wall / (2 * TRIPS as u32),
        cpu: rtt.cpu / (2 * TRIPS as u32),
    }
}

/// A throughput run: moves `n` descriptors, returns its times.
type Run = fn(u64) -> Sample;

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel/throughput");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    let peers: [(&str, Run); 6] = [
        ("kevent_single", kevent_single),
        ("kevent_burst", kevent_burst),
        ("rtrb_single", rtrb_single),
        ("rtrb_chunked", rtrb_chunked),
        ("crossbeam_array_queue", array_queue),
        ("std_sync_channel", std_sync_channel),
    ];
    for (name, run) in peers {
        g.bench_function(name, |b| b.iter_custom(|iters| run(iters * BATCH).wall));
    }
    g.finish();
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel/handoff_one_way");
    g.sample_size(20);
    g.bench_function("kevent", |b| b.iter_custom(|i| kevent_handoff(i).wall));
    g.bench_function("rtrb", |b| b.iter_custom(|i| rtrb_handoff(i).wall));
    g.finish();
}

/// How the producer wakes a consumer asleep in its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// `write(2)` to an eventfd the queue watches as a `READ` knote
    /// (`CLEAR | NODATA`): the channel's design.
    EventfdRead,
    /// `kevent()` with a `NOTE_TRIGGER` change for a `Filter::User` knote
    /// (`CLEAR`) of the consumer's queue.
    UserTrigger,
}

/// One wake-up measured: the waker's CPU time inside the wake call and
/// the wake-up latency (wake call to the consumer's return from
/// `kevent()`).
#[derive(Clone, Copy, Debug, Default)]
struct WakeCost {
    waker_cpu: Duration,
    latency: Duration,
}

/// `n` wake-ups of a consumer blocked in `kevent()` on backend `b`: the
/// waker waits until the consumer has announced its sleep and then spins
/// 30 µs so it is really blocked, wakes it, and waits for it to report.
/// Returns the sums over the `n` wake-ups.
fn wake_run(b: Backend, how: Wake, n: u64) -> WakeCost {
    // 0: running; odd: about to block (round = (v + 1) / 2); the consumer
    // stores `2 * round` when it runs again, with its wake time in `woke`.
    let state = Arc::new(AtomicU64::new(0));
    let woke = Arc::new(AtomicU64::new(0));
    let kq = Arc::new(Kqueue::with_backend(b).expect("queue"));
    let efd = Notifier::new().expect("eventfd");
    let knote = match how {
        Wake::EventfdRead => Kevent::new(
            efd.as_fd().as_raw_fd() as u64,
            Filter::Read,
            Flags::ADD | Flags::CLEAR,
            note::NODATA,
            0,
            0,
        ),
        Wake::UserTrigger => Kevent::new(1, Filter::User, Flags::ADD | Flags::CLEAR, 0, 0, 0),
    };
    kq.kevent(&[knote], &mut [], None).expect("register");
    let base = Instant::now();
    let consumer = {
        let (state, woke, kq) = (state.clone(), woke.clone(), kq.clone());
        thread::spawn(move || {
            let mut ev = [Kevent::default(); 4];
            for round in 1..=n {
                state.store(2 * round - 1, Ordering::Release);
                loop {
                    match kq.kevent(&[], &mut ev, Some(Duration::from_secs(5))) {
                        Ok(k) if k > 0 => break,
                        Ok(_) => panic!("wake-up lost in round {round}"),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("kevent: {e}"),
                    }
                }
                woke.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                state.store(2 * round, Ordering::Release);
            }
        })
    };
    let trigger = [Kevent::new(
        1,
        Filter::User,
        Flags::empty(),
        note::TRIGGER,
        0,
        0,
    )];
    let mut sum = WakeCost::default();
    for round in 1..=n {
        while state.load(Ordering::Acquire) != 2 * round - 1 {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(30) {
            std::hint::spin_loop();
        }
        let c0 = thread_cpu();
        let t0 = base.elapsed();
        match how {
            Wake::EventfdRead => efd.notify().expect("eventfd write"),
            Wake::UserTrigger => {
                kq.kevent(&trigger, &mut [], None).expect("trigger");
            }
        }
        sum.waker_cpu += thread_cpu() - c0;
        // The consumer may already have announced its next sleep (2r + 1);
        // `woke` is not overwritten before this round's is read, since the
        // next wake needs us.
        while state.load(Ordering::Acquire) < 2 * round {
            std::hint::spin_loop();
        }
        let w = Duration::from_nanos(woke.load(Ordering::Relaxed));
        sum.latency += w.saturating_sub(t0);
    }
    consumer.join().unwrap();
    sum
}

const WAKES: [(&str, Backend, Wake); 4] = [
    (
        "epoll/eventfd_read_knote",
        Backend::Epoll,
        Wake::EventfdRead,
    ),
    ("epoll/user_trigger", Backend::Epoll, Wake::UserTrigger),
    (
        "io_uring/eventfd_read_knote",
        Backend::IoUring,
        Wake::EventfdRead,
    ),
    ("io_uring/user_trigger", Backend::IoUring, Wake::UserTrigger),
];

fn wake(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel/wake_per_burst");
    g.sample_size(10);
    for (name, b, how) in WAKES {
        if Kqueue::with_backend(b).is_err() {
            eprintln!("channel/wake_per_burst/{name}: backend unavailable, skipped");
            continue;
        }
        g.bench_function(name, |bch| bch.iter_custom(|i| wake_run(b, how, i).latency));
    }
    g.finish();
}

criterion_group!(benches, throughput, handoff, wake);

fn mark(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Peers run interleaved (A B C ... A B C ...) in one process, as
/// `BENCHMARKING.md` asks on this noisy shared machine; prints each peer's
/// median rate and CPU time per descriptor, the ratios the goals are
/// stated in with PASS/FAIL, and the wake-up costs of both designs.
fn interleaved_summary() {
    const ROUNDS: usize = 9;
    const WAKE_N: u64 = 500;
    let peers: [(&str, Run); 6] = [
        ("kevent_single", kevent_single),
        ("kevent_burst", kevent_burst),
        ("rtrb_single", rtrb_single),
        ("rtrb_chunked", rtrb_chunked),
        ("crossbeam_array_queue", array_queue),
        ("std_sync_channel", std_sync_channel),
    ];
    let wakes: Vec<_> = WAKES
        .iter()
        .filter(|(_, b, _)| Kqueue::with_backend(*b).is_ok())
        .collect();
    let mut rates = vec![Vec::new(); peers.len()];
    let mut cpus = vec![Vec::new(); peers.len()];
    let mut handoffs = [Vec::new(), Vec::new()];
    let mut handoff_cpu = [Vec::new(), Vec::new()];
    let mut wake_cpu = vec![Vec::new(); wakes.len()];
    let mut wake_lat = vec![Vec::new(); wakes.len()];
    for _ in 0..ROUNDS {
        for (i, (_, run)) in peers.iter().enumerate() {
            let t = run(BATCH);
            rates[i].push(BATCH as f64 / t.wall.as_secs_f64() / 1e6);
            cpus[i].push(t.cpu.as_nanos() as f64 / BATCH as f64);
        }
        for (i, h) in [kevent_handoff(2), rtrb_handoff(2)].iter().enumerate() {
            handoffs[i].push(h.wall.as_nanos() as f64 / 2.0);
            handoff_cpu[i].push(h.cpu.as_nanos() as f64 / 2.0);
        }
        for (i, (_, b, how)) in wakes.iter().enumerate() {
            let w = wake_run(*b, *how, WAKE_N);
            wake_cpu[i].push(w.waker_cpu.as_nanos() as f64 / WAKE_N as f64);
            wake_lat[i].push(w.latency.as_nanos() as f64 / WAKE_N as f64 / 1e3);
        }
    }
    use common::median;
    println!(
        "\ninterleaved summary ({ROUNDS} rounds, {BATCH} descriptors per run; CPU = both threads)"
    );
    let mut med = Vec::new();
    for (((name, _), r), c) in peers.iter().zip(&mut rates).zip(&mut cpus) {
        let m = median(r);
        let best = r.iter().copied().fold(0.0, f64::max);
        let cpu = median(c);
        println!(
            "  {name:<24} median {m:>8.1} M/s   best {best:>8.1} M/s   CPU {cpu:>7.2} ns/descriptor"
        );
        med.push(m);
    }
    let (k, r) = (median(&mut handoffs[0]), median(&mut handoffs[1]));
    let (kc, rc) = (median(&mut handoff_cpu[0]), median(&mut handoff_cpu[1]));
    println!(
        "  one-way hand-off (median): kevent {k:.0} ns (CPU {kc:.0} ns), rtrb {r:.0} ns (CPU {rc:.0} ns)"
    );
    let burst_rtrb = med[1] / med[3];
    let burst_aq = med[1] / med[4];
    println!("  goals (issue 6):");
    println!(
        "    burst / rtrb_chunked   {burst_rtrb:>6.2}x  (>= 1.0x)  {}",
        mark(burst_rtrb >= 1.0)
    );
    println!(
        "    burst / array_queue    {burst_aq:>6.1}x  (>= 20x)   {}",
        mark(burst_aq >= 20.0)
    );
    println!(
        "    one-way hand-off       {k:>6.0} ns  (<= 60 ns)  {}",
        mark(k <= 60.0)
    );
    println!(
        "    (single / rtrb_single {:.2}x, no goal)",
        med[0] / med[2]
    );
    if !wakes.is_empty() {
        println!("  wake-up of a consumer asleep in its queue ({WAKE_N} per round, medians):");
        for (i, (name, _, _)) in wakes.iter().enumerate() {
            println!(
                "    {name:<30} waker CPU {:>6.0} ns/wake   latency {:>6.1} us",
                median(&mut wake_cpu[i]),
                median(&mut wake_lat[i])
            );
        }
    }
}

/// `CHANNEL_WAKE_ONLY=<n>` (optionally `CHANNEL_WAKE_DESIGN=<name>`, e.g.
/// `epoll/user_trigger`): only `n` wake-ups per design, printed — a fixed
/// count to run under `strace -f -c` and divide by.
fn wake_only(n: u64) {
    let only = std::env::var("CHANNEL_WAKE_DESIGN").ok();
    for (name, b, how) in WAKES {
        if only.as_deref().is_some_and(|o| o != name) || Kqueue::with_backend(b).is_err() {
            continue;
        }
        let w = wake_run(b, how, n);
        println!(
            "{name}: {n} wake-ups, waker CPU {:.0} ns/wake, latency {:.1} us",
            w.waker_cpu.as_nanos() as f64 / n as f64,
            w.latency.as_nanos() as f64 / n as f64 / 1e3
        );
    }
}

fn main() {
    if let Some(n) = std::env::var("CHANNEL_WAKE_ONLY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        wake_only(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (which passes --bench), not `cargo test`.
    if std::env::args().any(|a| a == "--bench") {
        interleaved_summary();
    }
}
