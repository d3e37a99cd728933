//! loom models of the channel: index publication (slot hand-over) and the
//! need-wakeup protocol. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p kevent-net --release loom`.
//!
//! Under loom the slots are loom `UnsafeCell`s (a missing happens-before
//! between a slot write and its read is reported as a race) and the eventfd
//! is a loom mutex + condvar (a lost wake-up is reported as a deadlock).
#![cfg(loom)]

use loom::thread;
use std::time::Duration;

use kevent_net::{channel, PacketDesc, PopError};

fn d(i: u64) -> PacketDesc {
    PacketDesc::new(i as u32, 1, i)
}

fn push_spin(tx: &mut kevent_net::Producer, desc: PacketDesc) {
    let mut desc = desc;
    while let Err(e) = tx.push(desc) {
        desc = e.into_inner();
        thread::yield_now();
    }
}

/// Slot hand-over through a ring smaller than the stream, so both the
/// full and the empty paths (cached index re-reads) are explored.
#[test]
fn loom_publication_through_a_full_ring() {
    loom::model(|| {
        let (mut tx, mut rx) = channel(2).unwrap();
        let p = thread::spawn(move || {
            for i in 0..3 {
                push_spin(&mut tx, d(i));
            }
        });
        let mut next = 0;
        while next < 3 {
            match rx.pop() {
                Ok(x) => {
                    assert_eq!(x, d(next));
                    next += 1;
                }
                Err(PopError::Empty) => thread::yield_now(),
            }
        }
        p.join().unwrap();
    });
}

/// A burst published with one store is seen whole or not at all.
#[test]
fn loom_burst_is_published_at_once() {
    loom::model(|| {
        let (mut tx, mut rx) = channel(4).unwrap();
        let p = thread::spawn(move || {
            assert_eq!(tx.push_slice(&[d(0), d(1), d(2)]), 3);
        });
        let mut out = [PacketDesc::default(); 4];
        let n = rx.pop_into(&mut out);
        assert!(n == 0 || n == 3, "torn burst: {n}");
        for (i, x) in out[..n].iter().enumerate() {
            assert_eq!(*x, d(i as u64));
        }
        p.join().unwrap();
    });
}

/// The consumer blocks whenever it finds the ring empty; the producer
/// pushes two descriptors one by one. A lost wake-up leaves the consumer
/// blocked forever, which loom reports as a deadlock.
#[test]
fn loom_need_wakeup_loses_no_wakeup() {
    loom::model(|| {
        let (mut tx, mut rx) = channel(4).unwrap();
        let p = thread::spawn(move || {
            tx.push(d(0)).unwrap();
            tx.push(d(1)).unwrap();
            tx.wake_syscalls()
        });
        let mut next = 0;
        while next < 2 {
            match rx.pop() {
                Ok(x) => {
                    assert_eq!(x, d(next));
                    next += 1;
                }
                Err(PopError::Empty) => {
                    rx.wait(None).unwrap();
                }
            }
        }
        let wakes = p.join().unwrap();
        assert!(
            wakes <= rx.sleeps(),
            "{wakes} wake-ups for {} sleeps",
            rx.sleeps()
        );
    });
}

/// The same with a burst: at most one wake-up for it.
#[test]
fn loom_need_wakeup_one_per_burst() {
    loom::model(|| {
        let (mut tx, mut rx) = channel(4).unwrap();
        let p = thread::spawn(move || {
            assert_eq!(tx.push_slice(&[d(0), d(1)]), 2);
            tx.wake_syscalls()
        });
        let mut out = [PacketDesc::default(); 2];
        let mut got = 0;
        while got < 2 {
            let n = rx.pop_into(&mut out[got..]);
            if n == 0 {
                rx.wait(None).unwrap();
            }
            got += n;
        }
        assert_eq!(out, [d(0), d(1)]);
        assert!(p.join().unwrap() <= 1);
    });
}

/// A timed wait that gives up still leaves the flag cleared, so later
/// publications make no syscall.
#[test]
fn loom_timed_out_wait_clears_the_flag() {
    loom::model(|| {
        let (mut tx, mut rx) = channel(2).unwrap();
        // The model's timed wait polls once.
        assert!(!rx.wait(Some(Duration::from_millis(1))).unwrap());
        let p = thread::spawn(move || {
            tx.push(d(0)).unwrap();
            tx.wake_syscalls()
        });
        assert_eq!(p.join().unwrap(), 0);
        assert_eq!(rx.pop().unwrap(), d(0));
    });
}

/// The chunk API (reserve, fill, commit): a producer reserving more slots
/// than it commits, a consumer taking chunks and releasing them part by
/// part, through a ring of two so chunks wrap and both sides re-read the
/// other's index. Loom checks every slot access: a slot written after the
/// consumer could read it, or overwritten before the consumer released
/// it, is reported as a race; a torn or reordered publication fails the
/// order assertion.
#[test]
fn loom_chunks_reserve_commit_and_release() {
    loom::model(|| {
        let (mut tx, mut rx) = channel(2).unwrap();
        let p = thread::spawn(move || {
            let mut next = 0u64;
            while next < 3 {
                let free = tx.slots();
                if free == 0 {
                    thread::yield_now();
                    continue;
                }
                // Reserve everything free but commit only the first slot
                // when two were reserved: the second is written, left
                // unpublished, and rewritten by the next chunk.
                let mut chunk = tx.write_chunk(free).unwrap();
                for k in 0..free {
                    chunk.write(k, d(next + k as u64));
                }
                let commit = if free == 2 && next == 0 { 1 } else { free };
                let commit = commit.min((3 - next) as usize);
                chunk.commit(commit);
                next += commit as u64;
            }
            // A chunk dropped uncommitted publishes nothing.
            if let Ok(mut c) = tx.write_chunk(1) {
                c.write(0, d(99));
            }
        });
        let mut next = 0u64;
        while next < 3 {
            let n = rx.slots();
            if n == 0 {
                thread::yield_now();
                continue;
            }
            let chunk = rx.read_chunk(n).unwrap();
            for k in 0..n {
                assert_eq!(chunk.read(k), d(next + k as u64), "slot {k} of {n}");
            }
            // Release one descriptor at a time: the rest stay ours.
            chunk.commit(1);
            next += 1;
        }
        p.join().unwrap();
        assert!(rx.is_empty(), "an uncommitted chunk was published");
    });
}

/// A commit is one publication: the consumer, blocked on an empty ring,
/// is woken by the commit (no lost wake-up: loom would report a deadlock)
/// and at most one wake-up syscall is made for it.
#[test]
fn loom_commit_wakes_a_sleeping_consumer_once() {
    loom::model(|| {
        let (mut tx, mut rx) = channel(4).unwrap();
        let p = thread::spawn(move || {
            let mut chunk = tx.write_chunk(3).unwrap();
            for k in 0..3 {
                chunk.write(k, d(k as u64));
            }
            chunk.commit_all();
            tx.wake_syscalls()
        });
        let mut got = 0;
        while got < 3 {
            let n = rx.slots();
            if n == 0 {
                rx.wait(None).unwrap();
                continue;
            }
            let chunk = rx.read_chunk(n).unwrap();
            for k in 0..n {
                assert_eq!(chunk.read(k), d((got + k) as u64));
            }
            chunk.commit_all();
            got += n;
        }
        let wakes = p.join().unwrap();
        assert!(wakes <= 1, "{wakes} wake-ups for one commit");
        // What the notifier read back never exceeds what was sent.
        assert!(rx.notifier().read_total() <= wakes);
    });
}
