//! A channel's consumer waiting in a kevent queue (its eventfd a READ
//! knote, need-wakeup around the wait), on every backend: at most one
//! wake-up syscall per burst while it sleeps, none while it runs, and no
//! lost wake-up.

#[macro_use]
mod util;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kevent::kevent_net::{channel, wait_in, ChannelConsumer, PacketDesc};
use kevent::{Backend, Kevent};

backends_complete_test!();

const ROUNDS: u64 = 40;
const BURST: usize = 32;

backend_test!(at_most_one_wakeup_per_burst_while_asleep, |b: Backend| {
    let (mut tx, rx) = channel(256).unwrap();
    let (asleep_tx, asleep_rx) = mpsc::channel::<u64>();
    let total = ROUNDS * BURST as u64;
    let consumer = thread::spawn(move || {
        let kq = util::kq(b);
        let mut rx = [ChannelConsumer::register(&kq, rx, 42).unwrap()];
        let mut got = 0u64;
        let mut woke_by_event = 0u64;
        let mut buf = [PacketDesc::default(); 64];
        let mut ev = [Kevent::default(); 4];
        while got < total {
            let n = rx[0].drain_into(&mut buf);
            for d in &buf[..n] {
                assert_eq!(d.flow, got, "order");
                got += 1;
            }
            if n > 0 {
                continue;
            }
            asleep_tx.send(got).unwrap();
            let k = wait_in(&kq, &mut rx, &[], &mut ev, Some(Duration::from_secs(10))).unwrap();
            woke_by_event += ev[..k]
                .iter()
                .filter(|e| rx[0].is_event(e) && e.udata == 42)
                .count() as u64;
        }
        (
            rx[0].consumer().sleeps(),
            rx[0].consumer().wake_syscalls(),
            woke_by_event,
        )
    });
    let start = Instant::now();
    let mut next = 0u64;
    for round in 0..ROUNDS {
        while asleep_rx.recv().unwrap() != next {}
        // Let the consumer actually block in kevent().
        thread::sleep(Duration::from_millis(2));
        let before = tx.wake_syscalls();
        let burst: Vec<PacketDesc> = (0..BURST as u64)
            .map(|i| PacketDesc::new(0, 0, next + i))
            .collect();
        // A burst is one publication (push_slice, or a write chunk): one
        // need-wakeup check, so at most one syscall. (Single pushes are
        // bounded per sleep instead: a consumer woken by the first push may
        // drain and sleep again before the next, which then wakes it again.)
        if round % 2 == 0 {
            assert_eq!(tx.push_slice(&burst), BURST);
        } else {
            let mut chunk = tx.write_chunk(BURST).unwrap();
            let (a, b) = chunk.as_mut_slices();
            let (da, db) = burst.split_at(a.len());
            a.copy_from_slice(da);
            b.copy_from_slice(db);
            chunk.commit_all();
        }
        next += BURST as u64;
        let wakes = tx.wake_syscalls() - before;
        assert!(wakes <= 1, "round {round}: {wakes} wake-ups for one burst");
    }
    let (sleeps, wakes, by_event) = consumer.join().unwrap();
    assert!(wakes <= ROUNDS, "{wakes} wake-ups for {ROUNDS} bursts");
    assert!(wakes <= sleeps);
    assert!(
        by_event >= ROUNDS / 2,
        "woken through the queue: {by_event}"
    );
    // A lost wake-up would cost a 10 s timeout.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
});

backend_test!(no_wakeup_syscall_while_the_consumer_runs, |b: Backend| {
    let (mut tx, rx) = channel(1024).unwrap();
    let total: u64 = 200_000;
    let consumer = thread::spawn(move || {
        let kq = util::kq(b);
        let mut rx = ChannelConsumer::register(&kq, rx, 1).unwrap();
        let mut got = 0u64;
        let mut buf = [PacketDesc::default(); 64];
        // Busy: drains without ever announcing a sleep.
        while got < total {
            let n = rx.drain_into(&mut buf);
            for d in &buf[..n] {
                assert_eq!(d.flow, got);
                got += 1;
            }
            if n == 0 {
                std::hint::spin_loop();
            }
        }
        rx.consumer().sleeps()
    });
    let mut i = 0u64;
    while i < total {
        match tx.push(PacketDesc::new(0, 0, i)) {
            Ok(()) => i += 1,
            Err(_) => thread::yield_now(),
        }
    }
    let sleeps = consumer.join().unwrap();
    assert_eq!(sleeps, 0);
    assert_eq!(tx.wake_syscalls(), 0, "a running consumer costs no syscall");
});

backend_test!(ready_channel_turns_the_wait_into_a_poll, |b: Backend| {
    let kq = util::kq(b);
    let (mut tx, rx) = channel(16).unwrap();
    let mut rx = [ChannelConsumer::register(&kq, rx, 3).unwrap()];
    tx.push(PacketDesc::new(1, 2, 3)).unwrap();
    let t = Instant::now();
    let mut ev = [Kevent::default(); 4];
    wait_in(&kq, &mut rx, &[], &mut ev, Some(Duration::from_secs(5))).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        tx.wake_syscalls(),
        0,
        "the re-check saw the descriptor: no sleep, no wake"
    );
    let mut out = [PacketDesc::default(); 4];
    assert_eq!(rx[0].drain_into(&mut out), 1);
    let [c] = rx;
    let _consumer = c.deregister(&kq).unwrap();
});
