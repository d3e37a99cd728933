//! A channel's consumer waiting in a kevent queue (its eventfd a READ
//! knote, need-wakeup around the wait), on every backend: at most one
//! wake-up syscall per burst while it sleeps, none while it runs, and no
//! lost wake-up. Wake-ups are counted by the kernel: the consumer reads
//! the eventfd's counter back (`Notifier::drain`/`read_total`) and the
//! tests compare it with the producer's own tally.

#[macro_use]
mod util;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use kevent::kevent_net::source::payload;
use kevent::kevent_net::{
    channel, wait_in, BufferPool, ChannelConsumer, Classifier, PacketDesc, PacketSource, Producer,
};
use kevent::{Backend, Kevent};

backends_complete_test!();

const ROUNDS: u64 = 40;
const BURST: usize = 32;

/// Push all of `burst`, yielding while the ring is full.
fn push_all(tx: &mut Producer, burst: &[PacketDesc]) {
    let mut sent = 0;
    while sent < burst.len() {
        sent += tx.push_slice(&burst[sent..]);
        if sent < burst.len() {
            thread::yield_now();
        }
    }
}

backend_test!(at_most_one_wakeup_per_burst_while_asleep, |b: Backend| {
    let (mut tx, rx) = channel(256).unwrap();
    let (asleep_tx, asleep_rx) = mpsc::channel::<(u64, u64)>();
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
            asleep_tx
                .send((got, rx[0].consumer().notifier().read_total()))
                .unwrap();
            let k = wait_in(&kq, &mut rx, &[], &mut ev, Some(Duration::from_secs(10))).unwrap();
            woke_by_event += ev[..k]
                .iter()
                .filter(|e| rx[0].is_event(e) && e.udata == 42)
                .count() as u64;
            // Read the kernel's count of this sleep's wake-ups back (the
            // EV_CLEAR knote itself never reads the eventfd).
            rx[0].consumer().notifier().drain().unwrap();
        }
        let c = rx[0].consumer();
        c.notifier().drain().unwrap();
        (
            c.sleeps(),
            c.wake_syscalls(),
            woke_by_event,
            c.notifier().read_total(),
        )
    });
    let start = Instant::now();
    let mut next = 0u64;
    let mut kernel_at_sleep = Vec::new();
    for round in 0..ROUNDS {
        loop {
            let (got, kernel) = asleep_rx.recv().unwrap();
            if got == next {
                kernel_at_sleep.push(kernel);
                break;
            }
        }
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
    let (sleeps, reported, by_event, wakes) = consumer.join().unwrap();
    assert_eq!(reported, wakes, "producer's tally vs the eventfd's count");
    kernel_at_sleep.push(wakes);
    for (round, w) in kernel_at_sleep.windows(2).enumerate() {
        assert!(
            w[1] - w[0] <= 1,
            "burst {round}: {} eventfd writes",
            w[1] - w[0]
        );
    }
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

backend_test!(alternating_sleep_and_run_under_steady_load, |b: Backend| {
    // Bursts every ~100 µs; the consumer alternates between waiting in its
    // queue (`wait_in`) and running — draining by polling for ~1 ms with
    // no sleep announced. Each sleep costs at most one eventfd write, and
    // while it runs none, though bursts keep arriving: a producer that
    // notified on every publication fails here. Counted by the kernel.
    const BURSTS: u64 = 2000;
    const B: u64 = 16;
    let (mut tx, rx) = channel(1024).unwrap();
    let total = BURSTS * B;
    let producer = thread::spawn(move || {
        let mut burst = [PacketDesc::default(); B as usize];
        for n in 0..BURSTS {
            for (k, d) in burst.iter_mut().enumerate() {
                *d = PacketDesc::new(0, 0, n * B + k as u64);
            }
            push_all(&mut tx, &burst);
            thread::sleep(Duration::from_micros(100));
        }
        tx.wake_syscalls()
    });
    let kq = util::kq(b);
    let mut rx = [ChannelConsumer::register(&kq, rx, 5).unwrap()];
    let mut ev = [Kevent::default(); 4];
    let mut out = [PacketDesc::default(); 64];
    let run_for = Duration::from_millis(1);
    let mut got = 0u64;
    let (mut strict, mut strict_with_data, mut cycles, mut kernel_total) = (0u64, 0, 0u64, 0);
    while got < total {
        // Sleep in the queue until the channel's READ event.
        let t = Instant::now();
        let mut woke_by_event = false;
        while rx[0].consumer().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10), "lost wake-up");
            let n = wait_in(&kq, &mut rx, &[], &mut ev, Some(Duration::from_secs(10))).unwrap();
            woke_by_event |= ev[..n].iter().any(|e| rx[0].is_event(e));
        }
        let c_wake = rx[0].consumer().notifier().drain().unwrap();
        // Run: drain for `run_for` by polling.
        let t = Instant::now();
        let (mut seen_empty, mut arrived_while_running) = (false, false);
        while got < total && t.elapsed() < run_for {
            let n = rx[0].drain_into(&mut out);
            for d in &out[..n] {
                assert_eq!(d.flow, got, "order");
                got += 1;
            }
            arrived_while_running |= n > 0 && seen_empty;
            seen_empty |= n == 0;
        }
        let c_run = rx[0].consumer().notifier().drain().unwrap();
        cycles += 1;
        kernel_total += c_wake + c_run;
        assert!(
            c_wake + c_run <= 1,
            "cycle {cycles}: {c_wake} + {c_run} eventfd writes"
        );
        // Woken by this sleep's notification: the producer is done with
        // the epoch, so a count while running would be a wake-up of a
        // running consumer.
        if woke_by_event && c_wake == 1 {
            strict += 1;
            assert_eq!(c_run, 0, "cycle {cycles}: a wake-up while running");
            strict_with_data += u64::from(arrived_while_running);
        }
    }
    let reported = producer.join().unwrap();
    kernel_total += rx[0].consumer().notifier().drain().unwrap();
    assert_eq!(reported, kernel_total, "producer's tally vs the eventfd");
    assert!(kernel_total <= BURSTS);
    assert!(strict >= 10, "{strict} woken sleeps in {cycles} cycles");
    assert!(
        strict_with_data >= 10,
        "data arrived while running in {strict_with_data} of {strict} cycles"
    );
});

backend_test!(a_million_descriptors_through_wait_in, |b: Backend| {
    // A long stream through a small ring: the producer pushes singly and in
    // bursts of varying size, pausing now and then so the consumer goes to
    // sleep in its queue again and again. Order and no loss; a lost
    // wake-up would stall the consumer for the 10 s timeout.
    const N: u64 = 1_000_000;
    let (mut tx, rx) = channel(64).unwrap();
    let producer = thread::spawn(move || {
        let mut next = 0u64;
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut burst = Vec::with_capacity(48);
        while next < N {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = ((rng % 48) + 1).min(N - next);
            if rng & 0x100 == 0 {
                for i in 0..k {
                    let mut d = PacketDesc::new(0, 0, next + i);
                    while let Err(e) = tx.push(d) {
                        d = e.into_inner();
                        thread::yield_now();
                    }
                }
            } else {
                burst.clear();
                burst.extend((0..k).map(|i| PacketDesc::new(0, 0, next + i)));
                push_all(&mut tx, &burst);
            }
            next += k;
            if rng & 0x3f00 == 0 {
                thread::sleep(Duration::from_micros(50));
            }
        }
        tx.wake_syscalls()
    });
    let kq = util::kq(b);
    let mut rx = [ChannelConsumer::register(&kq, rx, 9).unwrap()];
    let mut ev = [Kevent::default(); 4];
    let mut out = [PacketDesc::default(); 64];
    let mut got = 0u64;
    let mut waits = 0u64;
    while got < N {
        let n = rx[0].drain_into(&mut out);
        for d in &out[..n] {
            assert_eq!(d.flow, got, "order");
            got += 1;
        }
        if n == 0 {
            let t = Instant::now();
            wait_in(&kq, &mut rx, &[], &mut ev, Some(Duration::from_secs(10))).unwrap();
            assert!(
                t.elapsed() < Duration::from_secs(9),
                "lost wake-up at {got}"
            );
            waits += 1;
        }
    }
    let reported = producer.join().unwrap();
    let c = rx[0].consumer();
    assert!(c.is_empty(), "more descriptors than sent");
    c.notifier().drain().unwrap();
    assert_eq!(
        reported,
        c.notifier().read_total(),
        "producer's tally vs the eventfd"
    );
    assert!(
        reported <= c.sleeps(),
        "{reported} wake-ups for {} sleeps",
        c.sleeps()
    );
    assert!(waits >= 100, "the consumer waited only {waits} times");
});

backend_test!(
    udp_packets_stream_to_a_consumer_waiting_in_its_queue,
    |b: Backend| {
        // Real packets: a source thread (its own queue, PacketSource polled on
        // its event) feeds a channel; the consumer thread waits in its queue
        // with wait_in, reads each datagram's sequence number in place and
        // frees the buffer. The sender keeps at most WINDOW datagrams ahead of
        // the consumer, so neither the socket nor the pool overflows: every
        // datagram must arrive, in order.
        const N: u32 = 50_000;
        const WINDOW: u32 = 128;
        let pool = Arc::new(BufferPool::new(1024, 2048).unwrap());
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sock.local_addr().unwrap();
        let (tx, rx) = channel(256).unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let source = {
            let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
            thread::spawn(move || {
                let kq = util::kq(b);
                let c = Classifier::new(1, 0).unwrap();
                let mut src = PacketSource::for_queue(&kq, sock, pool, c).unwrap();
                src.set_producer(0, tx).unwrap();
                src.register(&kq, 1).unwrap();
                let mut ev = [Kevent::default(); 4];
                while !stop.load(Ordering::Relaxed) {
                    let _ = kq.kevent(&[], &mut ev, Some(Duration::from_millis(10)));
                    src.poll().unwrap();
                }
                src.stats()
            })
        };
        let consumer = {
            let (pool, received) = (Arc::clone(&pool), Arc::clone(&received));
            thread::spawn(move || {
                let kq = util::kq(b);
                let mut rx = [ChannelConsumer::register(&kq, rx, 2).unwrap()];
                let mut ev = [Kevent::default(); 4];
                let mut out = [PacketDesc::default(); 64];
                let mut next = 0u32;
                while next < N {
                    let n = rx[0].drain_into(&mut out);
                    for d in &out[..n] {
                        // SAFETY: the id came from the source through the
                        // channel, once.
                        let buf = unsafe { pool.from_raw(d.buf) }.unwrap();
                        let p = payload(pool.bytes(&buf).unwrap(), d.len).unwrap();
                        assert_eq!(u32::from_le_bytes(p.try_into().unwrap()), next, "order");
                        pool.free(buf);
                        next += 1;
                    }
                    received.store(u64::from(next), Ordering::Release);
                    if n == 0 {
                        let t = Instant::now();
                        wait_in(&kq, &mut rx, &[], &mut ev, Some(Duration::from_secs(10))).unwrap();
                        assert!(
                            t.elapsed() < Duration::from_secs(9),
                            "lost wake-up at {next}"
                        );
                    }
                }
                rx[0].consumer().sleeps()
            })
        };
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..N {
            while u64::from(i) >= received.load(Ordering::Acquire) + u64::from(WINDOW) {
                assert!(Instant::now() < deadline, "stalled at {i}");
                thread::yield_now();
            }
            peer.send_to(&i.to_le_bytes(), to).unwrap();
        }
        let sleeps = consumer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let st = source.join().unwrap();
        assert_eq!(st.packets, u64::from(N), "{st:?}");
        assert_eq!(
            st.channel_full + st.truncated + st.bad_addr + st.errors,
            0,
            "{st:?}"
        );
        assert!(sleeps > 0, "the consumer never waited in its queue");
        assert_eq!(pool.available(), pool.count() as usize, "every buffer back");
    }
);

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
