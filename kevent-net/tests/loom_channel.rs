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
