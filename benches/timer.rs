//! Timer insert+cancel per operation: kevent's wheel against its peers, in
//! one criterion group so the report is a ratio.
//!
//! - `wheel`: [`kevent_timer::Wheel`] insert + cancel.
//! - `binary_heap_lazy`: `std::collections::BinaryHeap` with lazy cancel
//!   (a generation check in a slab; tombstones are compacted away once
//!   they outnumber live timers, so the heap stays bounded and its pushes
//!   stay `O(log live)`). What a simple timer heap does.
//! - `timerfd_per_timer`: what libkqueue (`src/linux/timer.c`) does for each
//!   EVFILT_TIMER knote. Insert is `evfilt_timer_knote_create`:
//!   `timerfd_create(CLOCK_MONOTONIC)`, `timerfd_settime` (relative), and
//!   `epoll_ctl(EPOLL_CTL_ADD, EPOLLIN | EPOLLET)` into the queue's epoll;
//!   cancel is `evfilt_timer_knote_delete`: `epoll_ctl(EPOLL_CTL_DEL)` and
//!   `close`. The epoll holds the same 10 000 background timers as a live
//!   timerfd each (fewer if the fd limit is lower: said on stderr).
//!
//! A second group, `timer_arm_10k`, re-arms 10 000 existing timers with
//! new deadlines: through one `kevent()` call carrying 10 000 `ADD`
//! changes to a queue with the `EVFILT_TIMER` storage (with an eventlist
//! and a zero timeout, as an event loop's wait carries its changes: the
//! call also re-checks the 10 000 knotes each re-ADD queued, as FreeBSD
//! re-evaluates a knote after every change), against
//! `tokio::time::Sleep::reset` on 10 000 registered sleeps of a
//! current-thread runtime.
//!
//! Every structure first holds 10 000 live timers spread over a minute
//! (a server's idle connections), then each iteration inserts a batch of
//! timers with deadlines spread over 60 s and cancels them in another
//! order. Throughput is in insert+cancel pairs.
//!
//! After criterion, a summary runs every variant interleaved (5 rounds,
//! A B C … A B C …) and prints the medians in ops/s and ns/op, wall and
//! process CPU time, with the ratios the issue sets goals for: wheel
//! insert+cancel ≥ 20 M ops/s and ≥ 50× timerfd-per-timer; kevent's
//! 10k arming against tokio's. `TIMER_SUMMARY=0` skips it.
//!
//! ```text
//! cargo bench --bench timer -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use kevent_core::{Backend, Kevent, Kqueue};
use kevent_timer::storage::timer;
use kevent_timer::{Key, MissedTickPolicy, TimerStorage, Wheel};

const BACKGROUND: usize = 10_000;
const BATCH: usize = 1024;
const FD_BATCH: usize = 64;
const SPREAD_MS: u64 = 60_000;
const ARM: usize = 10_000;

/// Deterministic deadlines and a cancel order that is not insert order.
fn deadlines(n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % SPREAD_MS
        })
        .collect()
}

fn cancel_order(n: usize) -> Vec<usize> {
    // A fixed stride permutation (n is a power of two, the stride odd).
    (0..n).map(|i| (i * 613) % n).collect()
}

/// `BinaryHeap` timers with lazy cancel: the heap holds
/// `(deadline, slot, generation)`; cancel bumps the slot's generation.
struct LazyHeap {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    generation: Vec<u32>,
    live: Vec<bool>,
    free: Vec<u32>,
    n_live: usize,
}

impl LazyHeap {
    fn new() -> Self {
        LazyHeap {
            heap: BinaryHeap::new(),
            generation: Vec::new(),
            live: Vec::new(),
            free: Vec::new(),
            n_live: 0,
        }
    }

    fn insert(&mut self, deadline: u64) -> (u32, u32) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.generation.push(0);
                self.live.push(false);
                (self.generation.len() - 1) as u32
            }
        };
        let g = self.generation[slot as usize];
        self.live[slot as usize] = true;
        self.n_live += 1;
        self.heap.push(Reverse((deadline, slot, g)));
        (slot, g)
    }

    fn cancel(&mut self, (slot, g): (u32, u32)) -> bool {
        let s = slot as usize;
        if self.generation[s] != g || !self.live[s] {
            return false;
        }
        self.generation[s] = g.wrapping_add(1);
        self.live[s] = false;
        self.free.push(slot);
        self.n_live -= 1;
        // Keep the heap bounded: drop tombstones once they outnumber the
        // live timers (amortised O(1) per cancel).
        if self.heap.len() > 2 * self.n_live + 1024 {
            let generation = &self.generation;
            let live = &self.live;
            self.heap
                .retain(|Reverse((_, s, g))| live[*s as usize] && generation[*s as usize] == *g);
        }
        true
    }
}

/// libkqueue's EVFILT_TIMER on Linux: one timerfd per timer, in the
/// queue's epoll.
struct TimerfdPerTimer {
    ep: libc::c_int,
    background: Vec<libc::c_int>,
    fds: Vec<libc::c_int>,
}

fn itimerspec(deadline_ms: u64) -> libc::itimerspec {
    libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (deadline_ms / 1000 + 1) as libc::time_t,
            tv_nsec: ((deadline_ms % 1000) * 1_000_000) as libc::c_long,
        },
    }
}

impl TimerfdPerTimer {
    fn new(background: &[u64]) -> Self {
        // SAFETY: plain syscall; the fd is closed in Drop.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0, "epoll_create1");
        let mut t = TimerfdPerTimer {
            ep,
            background: Vec::new(),
            fds: Vec::with_capacity(FD_BATCH),
        };
        for &d in background {
            match t.create(d) {
                Some(fd) => t.background.push(fd),
                None => {
                    eprintln!(
                        "timerfd_per_timer: {} background timers (fd limit)",
                        t.background.len()
                    );
                    break;
                }
            }
        }
        t
    }

    /// `evfilt_timer_knote_create`.
    fn create(&self, deadline_ms: u64) -> Option<libc::c_int> {
        let spec = itimerspec(deadline_ms);
        // SAFETY: plain syscalls on an fd this struct owns (closed in
        // `delete` or Drop); `spec` and `ev` are valid for the calls.
        unsafe {
            let fd = libc::timerfd_create(libc::CLOCK_MONOTONIC, 0);
            if fd < 0 {
                return None;
            }
            assert_eq!(
                libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()),
                0,
                "timerfd_settime"
            );
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            assert_eq!(
                libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
                0,
                "epoll_ctl ADD"
            );
            Some(fd)
        }
    }

    /// `evfilt_timer_knote_delete`.
    fn delete(&self, fd: libc::c_int) {
        // SAFETY: `fd` is a timerfd this struct created and registered.
        unsafe {
            assert_eq!(
                libc::epoll_ctl(self.ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()),
                0,
                "epoll_ctl DEL"
            );
            libc::close(fd);
        }
    }

    /// One batch: insert `batch`, cancel in `order`.
    fn round(&mut self, batch: &[u64], order: &[usize]) {
        self.fds.clear();
        for &d in batch {
            let fd = self.create(black_box(d)).expect("timerfd_create");
            self.fds.push(fd);
        }
        for &i in order {
            self.delete(self.fds[i]);
        }
    }
}

impl Drop for TimerfdPerTimer {
    fn drop(&mut self) {
        for &fd in &self.background {
            // SAFETY: fds this struct owns.
            unsafe { libc::close(fd) };
        }
        // SAFETY: the epoll fd this struct owns.
        unsafe { libc::close(self.ep) };
    }
}

/// The wheel with the background timers, and one batch round.
struct WheelBench {
    wheel: Wheel<u64>,
    keys: Vec<Key>,
}

impl WheelBench {
    fn new(background: &[u64]) -> Self {
        let mut wheel = Wheel::with_capacity(BACKGROUND + BATCH);
        for &d in background {
            wheel.insert(d, 0u64);
        }
        WheelBench {
            wheel,
            keys: Vec::with_capacity(BATCH),
        }
    }

    fn round(&mut self, batch: &[u64], order: &[usize]) {
        self.keys.clear();
        for (i, &d) in batch.iter().enumerate() {
            self.keys.push(self.wheel.insert(black_box(d), i as u64));
        }
        for &i in order {
            black_box(self.wheel.cancel(self.keys[i]));
        }
    }
}

struct HeapBench {
    heap: LazyHeap,
    keys: Vec<(u32, u32)>,
}

impl HeapBench {
    fn new(background: &[u64]) -> Self {
        let mut heap = LazyHeap::new();
        for &d in background {
            heap.insert(d);
        }
        HeapBench {
            heap,
            keys: Vec::with_capacity(BATCH),
        }
    }

    fn round(&mut self, batch: &[u64], order: &[usize]) {
        self.keys.clear();
        for &d in batch {
            self.keys.push(self.heap.insert(black_box(d)));
        }
        for &i in order {
            black_box(self.heap.cancel(self.keys[i]));
        }
    }
}

/// 10 000 EVFILT_TIMER knotes re-armed by one `kevent()` call.
struct KeventArm {
    kq: Kqueue,
    lists: Vec<Vec<Kevent>>,
    out: Vec<Kevent>,
    flip: usize,
}

impl KeventArm {
    fn new(backend: Backend, spread: &[u64]) -> Option<Self> {
        let kq = Kqueue::builder(backend)
            .and_then(|b| b.storage(Box::new(TimerStorage::new())).build())
            .ok()?;
        // Two change lists with different deadlines (10–70 s), alternated
        // so every re-ADD really moves its timer.
        let lists: Vec<Vec<Kevent>> = [0u64, 1]
            .iter()
            .map(|&k| {
                spread
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| {
                        let period = Duration::from_millis(10_000 + d + k);
                        timer(i as u64, period, MissedTickPolicy::Merge, 0)
                    })
                    .collect()
            })
            .collect();
        let mut out = vec![Kevent::default(); 64];
        kq.kevent(&lists[0], &mut out, Some(Duration::ZERO))
            .unwrap();
        Some(KeventArm {
            kq,
            lists,
            out,
            flip: 0,
        })
    }

    fn round(&mut self) {
        self.flip ^= 1;
        let n = self
            .kq
            .kevent(
                black_box(&self.lists[self.flip]),
                &mut self.out,
                Some(Duration::ZERO),
            )
            .unwrap();
        debug_assert_eq!(n, 0, "no timer is due within 10 s");
    }
}

/// 10 000 registered tokio sleeps, each reset once per round.
struct TokioArm {
    rt: tokio::runtime::Runtime,
    sleeps: Vec<Pin<Box<tokio::time::Sleep>>>,
    spread: Vec<u64>,
    flip: u64,
}

impl TokioArm {
    fn new(spread: &[u64]) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let sleeps = rt.block_on(async {
            let mut v: Vec<_> = spread
                .iter()
                .map(|&d| Box::pin(tokio::time::sleep(Duration::from_millis(10_000 + d))))
                .collect();
            // Poll each once so it is registered with the driver, as a sleep
            // awaited by a task is.
            std::future::poll_fn(|cx| {
                for s in v.iter_mut() {
                    let _ = s.as_mut().poll(cx);
                }
                Poll::Ready(())
            })
            .await;
            v
        });
        TokioArm {
            rt,
            sleeps,
            spread: spread.to_vec(),
            flip: 0,
        }
    }

    fn round(&mut self) {
        self.flip ^= 1;
        let (sleeps, spread, flip) = (&mut self.sleeps, &self.spread, self.flip);
        self.rt.block_on(async {
            let now = tokio::time::Instant::now();
            for (s, &d) in sleeps.iter_mut().zip(spread) {
                s.as_mut()
                    .reset(now + Duration::from_millis(10_000 + d + flip));
            }
        })
    }
}

fn insert_cancel(c: &mut Criterion) {
    let background = deadlines(BACKGROUND, 0x5EED);
    let batch = deadlines(BATCH, 0xBA7C);
    let order = cancel_order(BATCH);
    let fd_order = cancel_order(FD_BATCH);

    let mut group = c.benchmark_group("timer_insert_cancel");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut wheel = WheelBench::new(&background);
    group.bench_function("wheel", |b| b.iter(|| wheel.round(&batch, &order)));
    let mut heap = HeapBench::new(&background);
    group.bench_function("binary_heap_lazy", |b| {
        b.iter(|| heap.round(&batch, &order))
    });
    group.throughput(Throughput::Elements(FD_BATCH as u64));
    let mut fds = TimerfdPerTimer::new(&background);
    group.bench_function("timerfd_per_timer", |b| {
        b.iter(|| fds.round(&batch[..FD_BATCH], &fd_order))
    });
    group.finish();
}

fn arm_10k(c: &mut Criterion) {
    let spread = deadlines(ARM, 0xA57);
    let mut group = c.benchmark_group("timer_arm_10k");
    group.throughput(Throughput::Elements(ARM as u64));
    for (name, backend) in [
        ("kevent_epoll", Backend::Epoll),
        ("kevent_uring", Backend::IoUring),
    ] {
        let Some(mut k) = KeventArm::new(backend, &spread) else {
            eprintln!("{name}: backend unavailable, skipped");
            continue;
        };
        group.bench_function(name, |b| b.iter(|| k.round()));
    }
    let mut tokio = TokioArm::new(&spread);
    group.bench_function("tokio_sleep_reset", |b| b.iter(|| tokio.round()));
    group.finish();
}

/// After criterion: every variant interleaved, medians per operation in
/// wall and CPU time, ops/s and the ratios the goals are stated in.
fn summary() {
    let background = deadlines(BACKGROUND, 0x5EED);
    let batch = deadlines(BATCH, 0xBA7C);
    let order = cancel_order(BATCH);
    let fd_order = cancel_order(FD_BATCH);
    let spread = deadlines(ARM, 0xA57);

    let mut wheel = WheelBench::new(&background);
    let mut heap = HeapBench::new(&background);
    let mut fds = TimerfdPerTimer::new(&background);
    let mut kq_epoll = KeventArm::new(Backend::Epoll, &spread);
    let mut kq_uring = KeventArm::new(Backend::IoUring, &spread);
    let mut tokio = TokioArm::new(&spread);

    // (name, ops per call, calls per round, run one call)
    type Run<'a> = (&'static str, u64, u32, Box<dyn FnMut() + 'a>);
    let mut v: Vec<Run<'_>> = vec![
        (
            "insert_cancel/wheel",
            BATCH as u64,
            200,
            Box::new(|| wheel.round(&batch, &order)),
        ),
        (
            "insert_cancel/binary_heap_lazy",
            BATCH as u64,
            200,
            Box::new(|| heap.round(&batch, &order)),
        ),
        (
            "insert_cancel/timerfd_per_timer",
            FD_BATCH as u64,
            100,
            Box::new(|| fds.round(&batch[..FD_BATCH], &fd_order)),
        ),
    ];
    for (name, k) in [
        ("arm_10k/kevent_epoll", kq_epoll.as_mut()),
        ("arm_10k/kevent_uring", kq_uring.as_mut()),
    ] {
        if let Some(k) = k {
            v.push((name, ARM as u64, 10, Box::new(move || k.round())));
        }
    }
    v.push((
        "arm_10k/tokio_sleep_reset",
        ARM as u64,
        10,
        Box::new(|| tokio.round()),
    ));

    const ROUNDS: usize = 5;
    let mut wall = vec![Vec::new(); v.len()];
    let mut cpu = vec![Vec::new(); v.len()];
    for _ in 0..ROUNDS {
        for (i, (_, ops, calls, f)) in v.iter_mut().enumerate() {
            let (c0, t0) = (common::process_cpu(), Instant::now());
            for _ in 0..*calls {
                f();
            }
            let (w, c) = (t0.elapsed(), common::process_cpu() - c0);
            let n = (*ops * u64::from(*calls)) as f64;
            wall[i].push(w.as_secs_f64() * 1e9 / n);
            cpu[i].push(c.as_secs_f64() * 1e9 / n);
        }
    }
    let wall: Vec<f64> = wall.iter_mut().map(|x| common::median(x)).collect();
    let cpu: Vec<f64> = cpu.iter_mut().map(|x| common::median(x)).collect();
    let names: Vec<&str> = v.iter().map(|r| r.0).collect();
    drop(v);
    let at = |n: &str| names.iter().position(|&m| m == n);

    println!(
        "\ntimer summary: {ROUNDS} interleaved rounds, medians per operation (insert+cancel pair, or one timer re-armed)"
    );
    println!(
        "{:<34} {:>10} {:>10} {:>12}",
        "variant", "wall ns", "CPU ns", "M ops/s"
    );
    for (i, n) in names.iter().enumerate() {
        println!(
            "{n:<34} {:>10.1} {:>10.1} {:>12.2}",
            wall[i],
            cpu[i],
            1e3 / wall[i]
        );
    }
    let ratio = |a: &str, b: &str| -> Option<(f64, f64)> {
        let (a, b) = (at(a)?, at(b)?);
        Some((wall[b] / wall[a], cpu[b] / cpu[a]))
    };
    println!("\nratios: the peer's time per operation over ours (> 1: ours is faster)");
    if let Some(w) = at("insert_cancel/wheel") {
        println!(
            "wheel insert+cancel: {:.1} M ops/s wall, {:.1} M ops/s CPU (goal >= 20 M)",
            1e3 / wall[w],
            1e3 / cpu[w]
        );
    }
    for (a, b, goal) in [
        (
            "insert_cancel/wheel",
            "insert_cancel/timerfd_per_timer",
            " (goal >= 50x)",
        ),
        ("insert_cancel/wheel", "insert_cancel/binary_heap_lazy", ""),
        ("arm_10k/kevent_epoll", "arm_10k/tokio_sleep_reset", ""),
        ("arm_10k/kevent_uring", "arm_10k/tokio_sleep_reset", ""),
    ] {
        if let Some((rw, rc)) = ratio(a, b) {
            println!("{a} vs {b}: {rw:.2}x wall, {rc:.2}x CPU{goal}");
        }
    }
}

criterion_group!(benches, insert_cancel, arm_10k);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let args: Vec<String> = std::env::args().collect();
    let test_mode = args.iter().any(|a| a == "--test" || a == "--list");
    if !test_mode && std::env::var("TIMER_SUMMARY").map_or(true, |v| v != "0") {
        summary();
    }
}
