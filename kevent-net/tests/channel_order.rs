//! Order and loss across two threads, single and burst APIs, and bursts
//! across the wrap.
#![cfg(not(loom))] // loom models are in loom_channel.rs

use std::thread;

use kevent_net::{channel, ChannelError, ChunkError, PacketDesc, PopError, PushError};

/// 10M descriptors normally; cut under Miri, which is ~1000x slower.
const N: u64 = if cfg!(miri) { 2_000 } else { 10_000_000 };

fn desc(i: u64) -> PacketDesc {
    PacketDesc::new(i as u32, (i >> 32) as u32 ^ 0x5a5a, i)
}

#[track_caller]
fn check(d: PacketDesc, i: u64) {
    assert_eq!(d, desc(i), "descriptor {i} out of order or corrupted");
}

/// Spins briefly, then yields: two cores are shared with other work.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
}

#[test]
fn bad_capacity_is_a_typed_error() {
    for c in [0, 3, 100, kevent_net::MAX_CAPACITY * 2] {
        assert!(matches!(channel(c), Err(ChannelError::Capacity(x)) if x == c));
    }
    assert!(channel(1).is_ok());
}

#[test]
fn full_and_empty_hand_values_back() {
    let (mut tx, mut rx) = channel(4).unwrap();
    assert_eq!(rx.pop(), Err(PopError::Empty));
    for i in 0..4 {
        tx.push(desc(i)).unwrap();
    }
    assert_eq!(tx.push(desc(9)), Err(PushError::Full(desc(9))));
    assert_eq!(tx.slots(), 0);
    assert!(matches!(tx.write_chunk(1), Err(ChunkError::TooFewSlots(0))));
    for i in 0..4 {
        check(rx.pop().unwrap(), i);
    }
    assert!(matches!(rx.read_chunk(1), Err(ChunkError::TooFewSlots(0))));
    assert_eq!(tx.slots(), 4);
}

#[test]
fn single_push_pop_across_threads_keeps_order() {
    let (mut tx, mut rx) = channel(1024).unwrap();
    let producer = thread::spawn(move || {
        let mut spins = 0;
        for i in 0..N {
            let mut d = desc(i);
            while let Err(e) = tx.push(d) {
                d = e.into_inner();
                backoff(&mut spins);
            }
            spins = 0;
        }
        tx.wake_syscalls()
    });
    let mut spins = 0;
    let mut i = 0;
    while i < N {
        match rx.pop() {
            Ok(d) => {
                check(d, i);
                i += 1;
                spins = 0;
            }
            Err(PopError::Empty) => backoff(&mut spins),
        }
    }
    assert_eq!(rx.pop(), Err(PopError::Empty));
    // The consumer never waited, so the producer never made a syscall.
    assert_eq!(producer.join().unwrap(), 0);
}

#[test]
fn chunks_across_threads_keep_order() {
    let (mut tx, mut rx) = channel(4096).unwrap();
    let producer = thread::spawn(move || {
        let mut next = 0u64;
        let mut spins = 0;
        // Odd burst sizes so chunks straddle the wrap in every position.
        let mut burst = 1;
        while next < N {
            let want = burst.min((N - next) as usize);
            burst = burst % 251 + 7;
            let n = tx.slots().min(want);
            if n == 0 {
                backoff(&mut spins);
                continue;
            }
            spins = 0;
            let mut chunk = tx.write_chunk(n).unwrap();
            let (a, b) = chunk.as_mut_slices();
            assert_eq!(a.len() + b.len(), n);
            for (k, d) in a.iter_mut().chain(b.iter_mut()).enumerate() {
                *d = desc(next + k as u64);
            }
            chunk.commit_all();
            next += n as u64;
        }
    });
    let mut i = 0u64;
    let mut spins = 0;
    while i < N {
        let n = rx.slots().min(193);
        if n == 0 {
            backoff(&mut spins);
            continue;
        }
        spins = 0;
        let chunk = rx.read_chunk(n).unwrap();
        let (a, b) = chunk.as_slices();
        for d in a.iter().chain(b) {
            check(*d, i);
            i += 1;
        }
        chunk.commit_all();
    }
    producer.join().unwrap();
    assert!(rx.is_empty());
}

#[test]
fn chunks_split_exactly_at_the_wrap() {
    let (mut tx, mut rx) = channel(8).unwrap();
    // Move both indices to 5, then write 6: slots 5,6,7 then 0,1,2.
    assert_eq!(tx.push_slice(&[desc(0); 5]), 5);
    let mut sink = [PacketDesc::default(); 5];
    assert_eq!(rx.pop_into(&mut sink), 5);

    let mut chunk = tx.write_chunk(6).unwrap();
    let (a, b) = chunk.as_mut_slices();
    assert_eq!((a.len(), b.len()), (3, 3));
    for (k, d) in a.iter_mut().chain(b).enumerate() {
        *d = desc(100 + k as u64);
    }
    chunk.commit(4); // publish only 4 of the 6
    assert_eq!(rx.slots(), 4);

    let chunk = rx.read_chunk(4).unwrap();
    let (a, b) = chunk.as_slices();
    assert_eq!((a.len(), b.len()), (3, 1));
    assert_eq!(a[0], desc(100));
    assert_eq!(b[0], desc(103));
    chunk.commit(1); // consume only 1
    assert_eq!(rx.slots(), 3);
    check(rx.pop().unwrap(), 101);

    // Dropping uncommitted chunks publishes / consumes nothing.
    drop(tx.write_chunk(2).unwrap());
    drop(rx.read_chunk(2).unwrap());
    assert_eq!(rx.slots(), 2);
    let mut out = [PacketDesc::default(); 4];
    assert_eq!(rx.pop_into(&mut out), 2);
    assert_eq!(&out[..2], &[desc(102), desc(103)]);
}

#[test]
fn push_slice_and_pop_into_across_the_wrap() {
    let (mut tx, mut rx) = channel(16).unwrap();
    let mut next_in = 0u64;
    let mut next_out = 0u64;
    let mut out = [PacketDesc::default(); 7];
    for round in 0..1000u64 {
        let burst: Vec<_> = (0..(round % 11)).map(|k| desc(next_in + k)).collect();
        let n = tx.push_slice(&burst);
        next_in += n as u64;
        let m = rx.pop_into(&mut out);
        for d in &out[..m] {
            check(*d, next_out);
            next_out += 1;
        }
    }
    while let Ok(d) = rx.pop() {
        check(d, next_out);
        next_out += 1;
    }
    assert_eq!(next_in, next_out);
}

#[test]
fn abandonment_is_visible() {
    let (tx, rx) = channel(2).unwrap();
    assert!(!tx.is_abandoned());
    drop(rx);
    assert!(tx.is_abandoned());
}
