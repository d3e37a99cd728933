//! The need-wakeup protocol seen from outside: wake-up syscalls are at
//! most one per burst while the consumer sleeps, and zero while it runs.
#![cfg(not(loom))] // loom models are in loom_channel.rs

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kevent_net::{channel, PacketDesc, PopError, WaitPrep};

const ROUNDS: u64 = if cfg!(miri) { 3 } else { 50 };
const BURST: usize = 32;

/// Runs a consumer that drains, then blocks in `wait`, and reports each
/// time it is about to block. Returns its join handle.
fn sleeping_consumer(
    mut rx: kevent_net::Consumer,
    total: u64,
    asleep: mpsc::Sender<u64>,
) -> thread::JoinHandle<(u64, u64)> {
    thread::spawn(move || {
        let mut got = 0u64;
        while got < total {
            match rx.pop() {
                Ok(d) => {
                    assert_eq!(d.flow, got, "order");
                    got += 1;
                }
                Err(PopError::Empty) => {
                    asleep.send(got).unwrap();
                    rx.wait(Some(Duration::from_secs(10))).unwrap();
                }
            }
        }
        (rx.sleeps(), rx.wake_syscalls())
    })
}

#[test]
fn at_most_one_wakeup_per_burst_while_the_consumer_sleeps() {
    let (mut tx, rx) = channel(256).unwrap();
    let (asleep_tx, asleep_rx) = mpsc::channel();
    let total = ROUNDS * BURST as u64;
    let consumer = sleeping_consumer(rx, total, asleep_tx);

    let mut next = 0u64;
    let mut woken_rounds = 0;
    for round in 0..ROUNDS {
        // Wait until the consumer has drained everything and is going to
        // block, then give it time to actually block.
        loop {
            if asleep_rx.recv().unwrap() == next {
                break;
            }
        }
        thread::sleep(Duration::from_millis(2));
        let before = tx.wake_syscalls();
        // Alternate the two burst APIs: a write chunk, or `push_slice`.
        // Either publishes the burst with one store and one check.
        if round % 2 == 0 {
            let mut chunk = tx.write_chunk(BURST).unwrap();
            let (a, b) = chunk.as_mut_slices();
            for (k, d) in a.iter_mut().chain(b).enumerate() {
                *d = PacketDesc::new(0, 0, next + k as u64);
            }
            chunk.commit_all();
        } else {
            let burst: Vec<_> = (0..BURST as u64)
                .map(|k| PacketDesc::new(0, 0, next + k))
                .collect();
            assert_eq!(tx.push_slice(&burst), BURST);
        }
        next += BURST as u64;
        let delta = tx.wake_syscalls() - before;
        assert!(
            delta <= 1,
            "round {round}: {delta} wake-up syscalls for one burst"
        );
        woken_rounds += delta;
    }
    let (sleeps, wakes) = consumer.join().unwrap();
    assert_eq!(wakes, woken_rounds);
    assert!(wakes <= ROUNDS, "{wakes} wake-ups for {ROUNDS} bursts");
    // Lower bound, strictly: the consumer slept and every sleep that a
    // burst ended cost exactly one syscall (2 ms is ample to block).
    assert!(wakes >= 1 && sleeps >= 1, "sleeps {sleeps} wakes {wakes}");
    assert!(
        wakes <= sleeps,
        "a wake-up without a sleep: {wakes} > {sleeps}"
    );
}

#[test]
fn no_wakeup_syscall_while_the_consumer_runs() {
    let n: u64 = if cfg!(miri) { 1_000 } else { 1_000_000 };
    let (mut tx, mut rx) = channel(1024).unwrap();
    let consumer = thread::spawn(move || {
        let mut got = 0;
        while got < n {
            match rx.pop() {
                Ok(_) => got += 1,
                Err(PopError::Empty) => thread::yield_now(),
            }
        }
    });
    let mut sent = 0;
    while sent < n {
        let k = tx.slots().min(64).min((n - sent) as usize);
        if k == 0 {
            thread::yield_now();
            continue;
        }
        if sent % 2 == 0 {
            tx.write_chunk(k).unwrap().commit_all();
        } else {
            let mut d = PacketDesc::default();
            for _ in 0..k {
                d.flow += 1;
                tx.push(d).unwrap();
            }
        }
        sent += k as u64;
    }
    consumer.join().unwrap();
    assert_eq!(tx.wake_syscalls(), 0);
}

#[test]
fn streaming_to_a_waiting_consumer_loses_nothing() {
    let n: u64 = if cfg!(miri) { 500 } else { 200_000 };
    let (mut tx, mut rx) = channel(64).unwrap();
    let consumer = thread::spawn(move || {
        let mut got = 0;
        while got < n {
            match rx.pop() {
                Ok(d) => {
                    assert_eq!(d.flow, got);
                    got += 1;
                }
                // A lost wake-up would block here until the 10 s timeout
                // and fail the test below.
                Err(PopError::Empty) => {
                    let t = Instant::now();
                    rx.wait(Some(Duration::from_secs(10))).unwrap();
                    assert!(t.elapsed() < Duration::from_secs(9), "lost wake-up");
                }
            }
        }
        (rx.sleeps(), rx.wake_syscalls())
    });
    for i in 0..n {
        let mut d = PacketDesc::new(0, 0, i);
        while let Err(e) = tx.push(d) {
            d = e.into_inner();
            thread::yield_now();
        }
    }
    let (sleeps, wakes) = consumer.join().unwrap();
    assert!(wakes <= sleeps, "{wakes} wake-ups for {sleeps} sleeps");
}

#[test]
fn prepare_wait_sees_published_data() {
    let (mut tx, mut rx) = channel(4).unwrap();
    assert_eq!(rx.prepare_wait(), WaitPrep::MaySleep);
    // The consumer announced a sleep: the next publication notifies once.
    tx.push(PacketDesc::default()).unwrap();
    tx.push(PacketDesc::default()).unwrap();
    assert_eq!(tx.wake_syscalls(), 1);
    assert!(rx.notifier().wait(Some(Duration::ZERO)).unwrap());
    rx.finish_wait();
    assert_eq!(rx.prepare_wait(), WaitPrep::Ready);
    assert_eq!(rx.sleeps(), 1);
}

#[test]
fn wait_times_out_on_an_idle_channel() {
    let (_tx, mut rx) = channel(4).unwrap();
    let t = Instant::now();
    assert!(!rx.wait(Some(Duration::from_millis(20))).unwrap());
    // Lower bound strictly, upper bound loosely.
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert!(t.elapsed() < Duration::from_secs(5));
}
