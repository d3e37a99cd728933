//! Timer insert+cancel per operation: kevent's wheel against its peers, in
//! one criterion group so the report is a ratio.
//!
//! - `wheel`: [`kevent_timer::Wheel`] insert + cancel.
//! - `binary_heap_lazy`: `std::collections::BinaryHeap` with lazy cancel
//!   (a generation check in a slab; tombstones are compacted away once
//!   they outnumber live timers, so the heap stays bounded and its pushes
//!   stay `O(log live)`). What a simple timer heap does.
//! - `timerfd_per_timer`: `timerfd_create` + `timerfd_settime` + `close`
//!   per timer, what libkqueue does for each EVFILT_TIMER knote.
//!
//! A second group, `timer_arm_10k`, re-arms 10 000 existing timers with
//! new deadlines: through one `kevent()` call carrying 10 000 `ADD`
//! changes to a queue with the `EVFILT_TIMER` storage, against
//! `tokio::time::Sleep::reset` on 10 000 registered sleeps of a
//! current-thread runtime.
//!
//! Every structure first holds 10 000 live timers spread over a minute
//! (a server's idle connections), then each iteration inserts a batch of
//! timers with deadlines spread over 60 s and cancels them in another
//! order. Throughput is in insert+cancel pairs.
//!
//! ```text
//! cargo bench --bench timer -- --warm-up-time 1 --measurement-time 3
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kevent_core::{Backend, Kevent, Kqueue};
use kevent_timer::storage::timer;
use kevent_timer::{Key, MissedTickPolicy, TimerStorage, Wheel};

const BACKGROUND: usize = 10_000;
const BATCH: usize = 1024;
const FD_BATCH: usize = 64;
const SPREAD_MS: u64 = 60_000;

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

fn timerfd_arm_close(deadline_ms: u64) {
    // SAFETY: plain syscalls on an fd this function owns and closes.
    unsafe {
        let fd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC);
        assert!(fd >= 0, "timerfd_create");
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (deadline_ms / 1000 + 1) as libc::time_t,
                tv_nsec: ((deadline_ms % 1000) * 1_000_000) as libc::c_long,
            },
        };
        let r = libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut());
        assert_eq!(r, 0, "timerfd_settime");
        libc::close(fd);
    }
}

fn insert_cancel(c: &mut Criterion) {
    let background = deadlines(BACKGROUND, 0x5EED);
    let batch = deadlines(BATCH, 0xBA7C);
    let order = cancel_order(BATCH);

    let mut group = c.benchmark_group("timer_insert_cancel");

    group.throughput(Throughput::Elements(BATCH as u64));
    {
        let mut wheel = Wheel::with_capacity(BACKGROUND + BATCH);
        for &d in &background {
            wheel.insert(d, 0u64);
        }
        let mut keys: Vec<Key> = Vec::with_capacity(BATCH);
        group.bench_function("wheel", |b| {
            b.iter(|| {
                keys.clear();
                for (i, &d) in batch.iter().enumerate() {
                    keys.push(wheel.insert(black_box(d), i as u64));
                }
                for &i in &order {
                    black_box(wheel.cancel(keys[i]));
                }
            })
        });
    }
    {
        let mut heap = LazyHeap::new();
        for &d in &background {
            heap.insert(d);
        }
        let mut keys = Vec::with_capacity(BATCH);
        group.bench_function("binary_heap_lazy", |b| {
            b.iter(|| {
                keys.clear();
                for &d in &batch {
                    keys.push(heap.insert(black_box(d)));
                }
                for &i in &order {
                    black_box(heap.cancel(keys[i]));
                }
            })
        });
    }

    group.throughput(Throughput::Elements(FD_BATCH as u64));
    group.bench_function("timerfd_per_timer", |b| {
        b.iter(|| {
            for &d in &batch[..FD_BATCH] {
                timerfd_arm_close(black_box(d));
            }
        })
    });
    group.finish();
}

const ARM: usize = 10_000;

fn arm_10k(c: &mut Criterion) {
    let spread = deadlines(ARM, 0xA57);
    let mut group = c.benchmark_group("timer_arm_10k");
    group.throughput(Throughput::Elements(ARM as u64));

    for (name, backend) in [
        ("kevent_epoll", Backend::Epoll),
        ("kevent_uring", Backend::IoUring),
    ] {
        let Ok(kq) =
            Kqueue::builder(backend).and_then(|b| b.storage(Box::new(TimerStorage::new())).build())
        else {
            eprintln!("{name}: backend unavailable, skipped");
            continue;
        };
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
        kq.kevent(&lists[0], &mut [], None).unwrap();
        let mut flip = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                flip ^= 1;
                kq.kevent(black_box(&lists[flip]), &mut [], None).unwrap();
            })
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut sleeps: Vec<Pin<Box<tokio::time::Sleep>>> = rt.block_on(async {
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
    let mut flip = 0u64;
    group.bench_function("tokio_sleep_reset", |b| {
        b.iter(|| {
            flip ^= 1;
            rt.block_on(async {
                let now = tokio::time::Instant::now();
                for (s, &d) in sleeps.iter_mut().zip(&spread) {
                    s.as_mut()
                        .reset(now + Duration::from_millis(10_000 + d + flip));
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, insert_cancel, arm_10k);
criterion_main!(benches);
