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
//! Goals (issue 6): burst >= 1.0x rtrb chunked and >= 20x ArrayQueue;
//! one-way hand-off <= 60 ns. Run:
//! `cargo bench --bench channel -- --warm-up-time 1 --measurement-time 3`
//! and compare the medians of the same run.

use std::hint::black_box;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use kevent::kevent_net::{channel, PacketDesc};

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

/// Runs `produce` on this thread and `consume` on another, both released
/// by one barrier; returns the time until both are done.
fn two_threads<P, C>(produce: P, consume: C) -> Duration
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
    produce();
    black_box(consumer.join().unwrap());
    t.elapsed()
}

fn kevent_single(n: u64) -> Duration {
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

fn kevent_burst(n: u64) -> Duration {
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

fn rtrb_single(n: u64) -> Duration {
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

fn rtrb_chunked(n: u64) -> Duration {
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

fn array_queue(n: u64) -> Duration {
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

fn std_sync_channel(n: u64) -> Duration {
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
/// of `iters` one-way hand-offs (half a round trip each).
fn kevent_handoff(iters: u64) -> Duration {
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
    rtt / (2 * TRIPS as u32)
}

/// The same ping-pong over rtrb, for scale.
fn rtrb_handoff(iters: u64) -> Duration {
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
    rtt / (2 * TRIPS as u32)
}

/// A throughput run: moves `n` descriptors, returns the wall time.
type Run = fn(u64) -> Duration;

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
        g.bench_function(name, |b| b.iter_custom(|iters| run(iters * BATCH)));
    }
    g.finish();
}

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel/handoff_one_way");
    g.sample_size(20);
    g.bench_function("kevent", |b| b.iter_custom(kevent_handoff));
    g.bench_function("rtrb", |b| b.iter_custom(rtrb_handoff));
    g.finish();
}

criterion_group!(benches, throughput, handoff);

/// Peers run interleaved (A B C ... A B C ...) in one process, as
/// `BENCHMARKING.md` asks on this noisy shared machine; prints each peer's
/// median and best rate, and the ratios the goals are stated in.
fn interleaved_summary() {
    const ROUNDS: usize = 9;
    let peers: [(&str, Run); 6] = [
        ("kevent_single", kevent_single),
        ("kevent_burst", kevent_burst),
        ("rtrb_single", rtrb_single),
        ("rtrb_chunked", rtrb_chunked),
        ("crossbeam_array_queue", array_queue),
        ("std_sync_channel", std_sync_channel),
    ];
    let mut rates = vec![Vec::new(); peers.len()];
    let mut handoffs = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, (_, run)) in peers.iter().enumerate() {
            let t = run(BATCH);
            rates[i].push(BATCH as f64 / t.as_secs_f64() / 1e6);
        }
        handoffs[0].push(kevent_handoff(2).as_nanos() as f64 / 2.0);
        handoffs[1].push(rtrb_handoff(2).as_nanos() as f64 / 2.0);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\ninterleaved summary ({ROUNDS} rounds, {BATCH} descriptors per run)");
    let mut med = Vec::new();
    for ((name, _), r) in peers.iter().zip(&mut rates) {
        let m = median(r);
        let best = r.iter().copied().fold(0.0, f64::max);
        println!("  {name:<24} median {m:>8.1} M/s   best {best:>8.1} M/s");
        med.push(m);
    }
    println!(
        "  ratios (medians): burst/rtrb_chunked {:.2}x, burst/array_queue {:.1}x, \
         single/rtrb_single {:.2}x",
        med[1] / med[3],
        med[1] / med[4],
        med[0] / med[2]
    );
    let (k, r) = (median(&mut handoffs[0]), median(&mut handoffs[1]));
    println!("  one-way hand-off (median): kevent {k:.0} ns, rtrb {r:.0} ns");
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only under `cargo bench` (which passes --bench), not `cargo test`.
    if std::env::args().any(|a| a == "--bench") {
        interleaved_summary();
    }
}
