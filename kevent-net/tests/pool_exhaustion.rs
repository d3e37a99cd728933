//! Buffer pool: exhaustion is back-pressure and recovers after frees;
//! buffers move between threads by id without copies.
#![cfg(not(loom))] // loom models are in loom_channel.rs

use std::thread;

use kevent_net::{channel, BufferPool, PacketDesc, PoolError, PopError};

#[test]
fn exhaustion_is_counted_and_recovers_after_free() {
    let pool = BufferPool::new(8, 2048).unwrap();
    let mut held = Vec::with_capacity(8);
    assert_eq!(pool.alloc_batch(8, &mut held), 8);
    assert_eq!(pool.available(), 0);

    // Empty pool: None, never a panic; every failure counted.
    assert!(pool.alloc().is_none());
    assert!(pool.alloc().is_none());
    let mut more = Vec::new();
    assert_eq!(pool.alloc_batch(4, &mut more), 0);
    assert_eq!(pool.exhaustions(), 3);

    // Return half in one batch: allocation works again.
    assert_eq!(pool.free_batch(held.drain(..4)), 4);
    assert_eq!(pool.alloc_batch(4, &mut more), 4);
    assert_eq!(pool.exhaustions(), 3);
    assert!(pool.alloc().is_none());
    assert_eq!(pool.exhaustions(), 4);

    pool.free_batch(held.drain(..).chain(more.drain(..)));
    assert_eq!(pool.available(), 8);
}

#[test]
fn buffers_are_disjoint_and_page_aligned() {
    let pool = BufferPool::new(32, 2048).unwrap();
    assert_eq!(pool.as_ptr() as usize % 4096, 0);
    assert_eq!(pool.region_len(), 32 * 2048);
    let mut bufs = Vec::new();
    pool.alloc_batch(32, &mut bufs);
    for b in &mut bufs {
        let id = b.id();
        pool.bytes_mut(b).unwrap().fill(id as u8);
    }
    for b in &bufs {
        let bytes = pool.bytes(b).unwrap();
        assert_eq!(bytes.len(), 2048);
        assert!(bytes.iter().all(|&x| x == b.id() as u8));
        // The id addresses the region: what a kernel registration sees.
        let off = bytes.as_ptr() as usize - pool.as_ptr() as usize;
        assert_eq!(off, b.id() as usize * 2048);
    }
    pool.free_batch(bufs);
}

#[test]
fn raw_ids_are_range_checked() {
    let pool = BufferPool::new(4, 64).unwrap();
    // SAFETY: id 4 does not exist; the call fails before creating a token.
    let r = unsafe { pool.from_raw(4) };
    assert_eq!(r.unwrap_err(), PoolError::ForeignBuffer(4));
    // SAFETY: id 9 does not exist, so the call fails and frees nothing.
    let r = unsafe { pool.free_raw_batch(&[1, 9]) };
    assert_eq!(r.unwrap_err(), PoolError::ForeignBuffer(9));
    assert_eq!(pool.available(), 4);
}

#[test]
fn buffers_cross_a_channel_by_id_and_come_back_in_batches() {
    let n: u32 = if cfg!(miri) { 200 } else { 100_000 };
    let pool = std::sync::Arc::new(BufferPool::new(64, 2048).unwrap());
    let (mut tx, mut rx) = channel(32).unwrap();
    let consumer = {
        let pool = pool.clone();
        thread::spawn(move || {
            let mut got = 0u32;
            let mut done = Vec::with_capacity(16);
            while got < n {
                match rx.pop() {
                    Ok(d) => {
                        // SAFETY: the producer gave up the token with
                        // `into_raw` for exactly this descriptor.
                        let buf = unsafe { pool.from_raw(d.buf) }.unwrap();
                        let bytes = &pool.bytes(&buf).unwrap()[..d.len as usize];
                        assert_eq!(bytes, &got.to_le_bytes());
                        done.push(buf);
                        if done.len() == 16 {
                            pool.free_batch(done.drain(..));
                        }
                        got += 1;
                    }
                    Err(PopError::Empty) => thread::yield_now(),
                }
            }
            pool.free_batch(done.drain(..));
        })
    };
    let mut i = 0u32;
    while i < n {
        let Some(mut buf) = pool.alloc() else {
            thread::yield_now(); // back-pressure: wait for frees
            continue;
        };
        pool.bytes_mut(&mut buf).unwrap()[..4].copy_from_slice(&i.to_le_bytes());
        let mut d = PacketDesc::new(buf.into_raw(), 4, 0);
        while let Err(e) = tx.push(d) {
            d = e.into_inner();
            thread::yield_now();
        }
        i += 1;
    }
    consumer.join().unwrap();
    assert_eq!(pool.available(), 64);
}
