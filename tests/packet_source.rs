//! `PacketSource` through a kevent queue, on every backend (io_uring:
//! multishot recvmsg into a buffer ring; epoll: recvmmsg): zero user-space
//! copies, the classifier's default channel, pool exhaustion recovering.

#[macro_use]
mod util;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kevent::kevent_net::source::{payload, source_addr, HEADROOM};
use kevent::kevent_net::{
    channel, BufferPool, Classifier, Consumer, FlowKey, PacketDesc, PacketSource, RecvMode,
};
use kevent::{Backend, Kevent};

backends_complete_test!();

/// A source on a fresh loopback socket in the mode the queue's backend
/// picks, registered in `kq`.
fn source(kq: &kevent::Kqueue, pool: &Arc<BufferPool>, channels: usize) -> PacketSource {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let c = Classifier::new(channels, 0).unwrap();
    let mut src = PacketSource::for_queue(kq, sock, Arc::clone(pool), c).unwrap();
    match kq.backend() {
        Backend::IoUring => assert!(matches!(src.mode(), RecvMode::Multishot { .. })),
        _ => assert!(matches!(src.mode(), RecvMode::Mmsg { .. })),
    }
    src.register(kq, 1).unwrap();
    src
}

/// Waits in the queue and polls the source until `pred` holds or 5 s pass.
#[track_caller]
fn pump(kq: &kevent::Kqueue, src: &mut PacketSource, mut pred: impl FnMut(&PacketSource) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ev = [Kevent::default(); 8];
    while !pred(src) {
        assert!(Instant::now() < deadline, "timed out: {:?}", src.stats());
        let _ = kq.kevent(&[], &mut ev, Some(Duration::from_millis(50)));
        src.poll().unwrap();
    }
}

fn pop_all(rx: &mut Consumer) -> Vec<PacketDesc> {
    let mut v = Vec::new();
    while let Ok(d) = rx.pop() {
        v.push(d);
    }
    v
}

backend_test!(consumer_sees_the_buffer_the_kernel_filled, |b: Backend| {
    let kq = util::kq(b);
    let pool = Arc::new(BufferPool::new(512, 2048).unwrap());
    // Poison every buffer: the source never writes payload bytes, so what
    // the consumer reads there was written by the kernel's receive.
    for _ in 0..pool.count() {
        let mut buf = pool.alloc().unwrap();
        pool.bytes_mut(&mut buf).unwrap().fill(0xAA);
        let _ = buf.into_raw();
    }
    let ids: Vec<u32> = (0..pool.count()).collect();
    // SAFETY: every id was taken above with `into_raw`, once.
    unsafe { pool.free_raw_batch(&ids) }.unwrap();

    let mut src = source(&kq, &pool, 1);
    let (tx, mut rx) = channel(256).unwrap();
    src.set_producer(0, tx).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    const N: usize = 100;
    for i in 0..N {
        let msg = format!("packet {i:04} {}", "x".repeat(i));
        peer.send_to(msg.as_bytes(), src.local_addr()).unwrap();
    }
    pump(&kq, &mut src, |s| s.stats().packets == N as u64);
    let trace: Vec<(u32, *const u8)> = src.trace().collect();
    assert_eq!(trace.len(), N);
    let got = pop_all(&mut rx);
    assert_eq!(got.len(), N);
    let mut kernel_addrs = std::collections::HashSet::new();
    for (i, d) in got.iter().enumerate() {
        // The very buffer: the trace records, per datagram, the payload
        // address the kernel was handed (the recvmmsg iovec, or the
        // buffer-ring entry the completion consumed plus the recvmsg
        // layout). The slice the consumer reads must start there and hold
        // the datagram: a receive into scratch memory followed by a copy
        // into the pool would hand the kernel other addresses.
        let (tid, kaddr) = trace[i];
        assert_eq!(d.buf, tid, "packet {i}");
        // SAFETY: the id came through the channel from the source, once.
        let buf = unsafe { pool.from_raw(d.buf) }.unwrap();
        let bytes = pool.bytes(&buf).unwrap();
        let seen = payload(bytes, d.len).unwrap();
        assert_eq!(seen.as_ptr(), kaddr, "packet {i}: not the kernel's memory");
        let region = pool.as_ptr() as usize..pool.as_ptr() as usize + pool.region_len();
        assert!(region.contains(&(kaddr as usize)), "packet {i}");
        assert!(
            kernel_addrs.insert(kaddr as usize),
            "packet {i}: address reused"
        );
        let want = format!("packet {i:04} {}", "x".repeat(i));
        assert_eq!(seen, want.as_bytes(), "packet {i}");
        assert_eq!(
            bytes[HEADROOM + d.len as usize],
            0xAA,
            "no byte past the datagram written"
        );
        assert_eq!(source_addr(bytes), Some(peer.local_addr().unwrap()));
        pool.free(buf);
    }
});

backend_test!(unknown_flows_go_to_the_default_channel, |b: Backend| {
    let kq = util::kq(b);
    let pool = Arc::new(BufferPool::new(256, 1024).unwrap());
    let mut src = source(&kq, &pool, 3);
    let (tx0, mut rx0) = channel(64).unwrap();
    let (tx2, mut rx2) = channel(64).unwrap();
    src.set_producer(0, tx0).unwrap();
    src.set_producer(2, tx2).unwrap();
    let known = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let orphan = UdpSocket::bind("127.0.0.1:0").unwrap();
    let key = FlowKey::udp(known.local_addr().unwrap(), src.local_addr());
    let flow = src.classifier().insert(key, 2).unwrap();
    let okey = FlowKey::udp(orphan.local_addr().unwrap(), src.local_addr());
    src.classifier().insert(okey, 1).unwrap(); // channel 1 has no producer
    for _ in 0..5 {
        known.send_to(b"k", src.local_addr()).unwrap();
        stranger.send_to(b"s", src.local_addr()).unwrap();
        orphan.send_to(b"o", src.local_addr()).unwrap();
    }
    pump(&kq, &mut src, |s| {
        s.stats().packets + s.stats().no_producer == 15
    });
    let k = pop_all(&mut rx2);
    let d = pop_all(&mut rx0);
    assert_eq!(k.len(), 5);
    assert!(k.iter().all(|d| d.flow == flow));
    assert_eq!(d.len(), 5);
    assert!(d.iter().all(|d| d.flow == Classifier::DEFAULT_FLOW));
    for desc in &d {
        // SAFETY: ids from the channel, once each.
        let buf = unsafe { pool.from_raw(desc.buf) }.unwrap();
        let bytes = pool.bytes(&buf).unwrap();
        assert_eq!(source_addr(bytes), Some(stranger.local_addr().unwrap()));
        pool.free(buf);
    }
    for desc in k {
        // SAFETY: as above.
        pool.free(unsafe { pool.from_raw(desc.buf) }.unwrap());
    }
    let st = src.stats();
    assert_eq!(st.no_producer, 5);
    assert_eq!(src.classifier().stats(&key).unwrap().packets, 5);
    assert_eq!(src.classifier().stats(&okey).unwrap().drops, 5);
    assert_eq!(src.classifier().default_stats().packets, 5);
    // The orphans' buffers went back to the pool.
    drop(src);
    assert_eq!(pool.available(), pool.count() as usize);
});

backend_test!(pool_exhaustion_recovers, |b: Backend| {
    let kq = util::kq(b);
    // 16 buffers: the multishot source asks for its ring's worth and gets
    // these; the consumer holds them all, so the source starves.
    let pool = Arc::new(BufferPool::new(16, 2048).unwrap());
    let mut src = source(&kq, &pool, 1);
    let (tx, mut rx) = channel(128).unwrap();
    src.set_producer(0, tx).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    const N: u32 = 64;
    for i in 0..N {
        peer.send_to(&i.to_be_bytes(), src.local_addr()).unwrap();
    }
    pump(&kq, &mut src, |s| s.stats().packets == 16);
    // Starved: more polls deliver nothing and do not fail.
    for _ in 0..5 {
        let o = src.poll().unwrap();
        assert_eq!(o.delivered, 0);
        assert!(o.starved);
    }
    assert!(src.stats().pool_empty > 0, "{:?}", src.stats());
    assert!(pool.exhaustions() > 0);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < N as usize {
        assert!(
            Instant::now() < deadline,
            "{:?} got {}",
            src.stats(),
            seen.len()
        );
        // Consume (and free) everything, then let the source refill.
        for d in pop_all(&mut rx) {
            // SAFETY: id from the channel, once.
            let buf = unsafe { pool.from_raw(d.buf) }.unwrap();
            let p = payload(pool.bytes(&buf).unwrap(), d.len).unwrap();
            seen.push(u32::from_be_bytes(p.try_into().unwrap()));
            pool.free(buf);
        }
        let mut ev = [Kevent::default(); 4];
        let _ = kq.kevent(&[], &mut ev, Some(Duration::from_millis(10)));
        src.poll().unwrap();
    }
    // Every datagram arrived, in order: none was lost while starved.
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    if b == Backend::IoUring {
        // The multishot receive ended when the buffer ring ran dry and was
        // re-armed once buffers came back.
        let st = src.stats();
        assert!(st.enobufs >= 1 && st.arms >= 2, "{st:?}");
    }
    drop(src);
    assert_eq!(pool.available(), 16, "every buffer back after drop");
});

backend_test!(full_channel_drops_are_counted, |b: Backend| {
    let kq = util::kq(b);
    let pool = Arc::new(BufferPool::new(256, 1024).unwrap());
    let mut src = source(&kq, &pool, 1);
    let (tx, mut rx) = channel(8).unwrap();
    src.set_producer(0, tx).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..20 {
        peer.send_to(b"x", src.local_addr()).unwrap();
    }
    pump(&kq, &mut src, |s| {
        s.stats().packets + s.stats().channel_full == 20
    });
    assert_eq!(src.stats().channel_full, 12);
    assert_eq!(src.classifier().default_stats().drops, 12);
    let got = pop_all(&mut rx);
    assert_eq!(got.len(), 8);
    for d in got {
        // SAFETY: id from the channel, once.
        pool.free(unsafe { pool.from_raw(d.buf) }.unwrap());
    }
    drop(src);
    assert_eq!(pool.available(), 256);
});

backend_test!(the_sources_event_fires_in_the_queue, |b: Backend| {
    let kq = util::kq(b);
    let pool = Arc::new(BufferPool::new(64, 2048).unwrap());
    let mut src = source(&kq, &pool, 1);
    let (tx, mut rx) = channel(64).unwrap();
    src.set_producer(0, tx).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut ev = [Kevent::default(); 4];
    for round in 0..3u8 {
        // Nothing pending: the queue stays quiet.
        let n = kq
            .kevent(&[], &mut ev, Some(Duration::from_millis(20)))
            .unwrap();
        assert_eq!(n, 0, "round {round}: {:?}", &ev[..n]);
        peer.send_to(&[round], src.local_addr()).unwrap();
        let t = Instant::now();
        let n = kq
            .kevent(&[], &mut ev, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(n, 1);
        assert_eq!((ev[0].ident, ev[0].udata), (src.fd() as u64, 1));
        assert_eq!(src.poll().unwrap().delivered, 1);
        let d = rx.pop().unwrap();
        // SAFETY: id from the channel, once.
        let buf = unsafe { pool.from_raw(d.buf) }.unwrap();
        assert_eq!(
            payload(pool.bytes(&buf).unwrap(), d.len),
            Some(&[round][..])
        );
        pool.free(buf);
    }
});

backend_test!(absurd_channel_counts_are_errors, |b: Backend| {
    let kq = util::kq(b);
    let pool = Arc::new(BufferPool::new(16, 2048).unwrap());
    for channels in [usize::MAX, usize::MAX / 8, 1 << 60] {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = Classifier::new(channels, 0).unwrap();
        assert_eq!(
            c.reserve(usize::MAX).unwrap_err(),
            kevent::kevent_net::ClassifierError::OutOfMemory
        );
        let e = PacketSource::for_queue(&kq, sock, Arc::clone(&pool), c).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory, "{channels}: {e}");
    }
    // Nothing was taken from the pool on the way out.
    assert_eq!(pool.available(), 16);
});
