//! Zero allocations per packet after warm-up: socket → PacketSource →
//! classifier → channel → consumer → pool, counted by a global allocator
//! (its own test binary, so no other test's allocations are seen).

#[macro_use]
mod util;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kevent::kevent_net::source::payload;
use kevent::kevent_net::{channel, BufferPool, Classifier, FlowKey, PacketDesc, PacketSource};
use kevent::{Backend, Kevent};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is process-wide: run the backends one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

backends_complete_test!();

backend_test!(no_allocation_per_packet_after_warm_up, |b: Backend| {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let kq = util::kq(b);
    let pool = Arc::new(BufferPool::new(1024, 2048).unwrap());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut src =
        PacketSource::for_queue(&kq, sock, Arc::clone(&pool), Classifier::new(2, 0).unwrap())
            .unwrap();
    src.register(&kq, 9).unwrap();
    let (tx, mut rx) = channel(1024).unwrap();
    let (tx0, _rx0) = channel(16).unwrap();
    src.set_producer(1, tx).unwrap();
    src.set_producer(0, tx0).unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let key = FlowKey::udp(peer.local_addr().unwrap(), src.local_addr());
    src.classifier().insert(key, 1).unwrap();
    let to = src.local_addr();
    let mut ev = [Kevent::default(); 8];
    let mut out = [PacketDesc::default(); 128];
    let mut received = 0u64;
    let mut checksum = 0u64;
    let mut measured_allocs = 0u64;
    let mut round = |n: u64, measure: bool, received: &mut u64| {
        for i in 0..n {
            peer.send_to(&i.to_le_bytes(), to).unwrap();
        }
        let want = *received + n;
        let deadline = Instant::now() + Duration::from_secs(5);
        let before = ALLOCS.load(Relaxed);
        while *received < want {
            assert!(Instant::now() < deadline, "{:?}", src.stats());
            let _ = kq.kevent(&[], &mut ev, Some(Duration::from_millis(20)));
            src.poll().unwrap();
            let k = rx.pop_into(&mut out);
            for d in &out[..k] {
                // SAFETY: ids from the channel, once each.
                let buf = unsafe { pool.from_raw(d.buf) }.unwrap();
                checksum += u64::from(payload(pool.bytes(&buf).unwrap(), d.len).unwrap()[0]);
                pool.free(buf);
            }
            *received += k as u64;
        }
        if measure {
            measured_allocs += ALLOCS.load(Relaxed) - before;
        }
    };
    for _ in 0..5 {
        round(200, false, &mut received);
    }
    for _ in 0..20 {
        round(200, true, &mut received);
    }
    assert!(ALLOCS.load(Relaxed) > 0, "the counting allocator is in use");
    assert_eq!(received, 5000);
    assert!(checksum > 0);
    assert_eq!(
        measured_allocs, 0,
        "allocations while receiving 4000 packets on {b:?}"
    );
});
