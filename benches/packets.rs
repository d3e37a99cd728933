//! UDP loopback packets/s through `PacketSource` → `Classifier` →
//! channels → consumer (buffers back to the pool), for the three receive
//! paths in one group: io_uring multishot `recvmsg` into a provided-buffer
//! ring, `recvmmsg` batches, and one `recvfrom` per datagram.
//!
//! Each iteration first queues `BATCH` datagrams from `FLOWS` sockets in
//! the receiver's socket buffer (untimed: on loopback the sender's
//! syscalls also run the receive softirq), then times the receive path
//! draining them: the syscalls or ring entries, the classification, the
//! channel pushes, and the consumer popping and freeing. So the figure is
//! the receive side's cost alone, free of the sender's scheduling noise
//! on this 2-core machine. An interleaved summary (A B C A B C ...)
//! with medians, thread CPU per packet and ratios follows under
//! `cargo bench`.

mod common;

use common::thread_cpu;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use kevent::kevent_net::{
    channel, BatchSender, BufferPool, Classifier, Consumer, FlowKey, PacketDesc, PacketSource,
    RecvMode,
};

/// Datagrams per iteration (all queued in the socket buffer first).
const BATCH: u64 = 1024;
/// Flows (sender sockets), each classified into its own channel.
const FLOWS: usize = 4;
/// Payload bytes per datagram: an RTP header and 20 ms of 8 kHz L16.
const PAYLOAD: usize = 172;

struct Rig {
    src: PacketSource,
    rx: Vec<Consumer>,
    senders: Vec<UdpSocket>,
    to: SocketAddr,
    tx: BatchSender,
    frame: Vec<u8>,
    out: Vec<PacketDesc>,
    ids: Vec<u32>,
}

fn force_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid int option value.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                std::ptr::from_ref(&bytes).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}

impl Rig {
    fn new(mode: RecvMode) -> Rig {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        force_rcvbuf(&sock, 16 << 20);
        let pool = Arc::new(BufferPool::new(4096, 512).unwrap());
        let mut src =
            PacketSource::new(sock, pool, Classifier::new(FLOWS + 1, 0).unwrap(), mode).unwrap();
        let to = src.local_addr();
        let mut rx = Vec::new();
        let mut senders = Vec::new();
        for f in 0..FLOWS {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            let key = FlowKey::udp(s.local_addr().unwrap(), to);
            src.classifier().insert(key, f + 1).unwrap();
            let (tx, c) = channel(2048).unwrap();
            src.set_producer(f + 1, tx).unwrap();
            rx.push(c);
            senders.push(s);
        }
        let (tx0, c0) = channel(64).unwrap();
        src.set_producer(0, tx0).unwrap();
        rx.push(c0);
        Rig {
            src,
            rx,
            senders,
            to,
            tx: BatchSender::new(256),
            frame: vec![0x55; PAYLOAD],
            out: vec![PacketDesc::default(); 256],
            ids: Vec::with_capacity(256),
        }
    }

    /// Queues `BATCH` datagrams, round-robin over the flows.
    fn fill(&mut self) {
        let per = BATCH as usize / FLOWS;
        for s in &self.senders {
            let mut left = per;
            while left > 0 {
                let st = self
                    .tx
                    .send_with(s.as_fd(), left, |_| (&self.frame, self.to));
                left -= st.sent;
                if st.sent == 0 {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Receives, classifies and consumes `BATCH` datagrams; returns the
    /// wall time and the thread CPU time.
    fn drain(&mut self) -> (Duration, Duration) {
        let t = Instant::now();
        let c = thread_cpu();
        let mut got = 0u64;
        let pool = Arc::clone(self.src.pool());
        while got < BATCH {
            self.src.poll().unwrap();
            for rx in &mut self.rx {
                loop {
                    let n = rx.pop_into(&mut self.out);
                    if n == 0 {
                        break;
                    }
                    self.ids.clear();
                    self.ids.extend(self.out[..n].iter().map(|d| d.buf));
                    // SAFETY: ids from the channel, once each.
                    unsafe { pool.free_raw_batch(&self.ids) }.unwrap();
                    got += n as u64;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{:?}",
                self.src.stats()
            );
        }
        (t.elapsed(), thread_cpu() - c)
    }

    fn run(&mut self) -> (Duration, Duration) {
        self.fill();
        self.drain()
    }
}

const MODES: [(&str, RecvMode); 3] = [
    (
        "uring_multishot_bufring",
        RecvMode::Multishot { ring_entries: 2048 },
    ),
    ("recvmmsg_64", RecvMode::Mmsg { batch: 64 }),
    ("recvfrom_per_packet", RecvMode::PerPacket),
];

fn loopback_rx(c: &mut Criterion) {
    let mut g = c.benchmark_group("packets/loopback_rx");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    for (name, mode) in MODES {
        let mut rig = Rig::new(mode);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rig.run().0).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, loopback_rx);

/// The three paths interleaved, medians and ratios.
fn interleaved_summary() {
    const ROUNDS: usize = 31;
    let mut rigs: Vec<Rig> = MODES.iter().map(|(_, m)| Rig::new(*m)).collect();
    let mut rate = vec![Vec::new(); rigs.len()];
    let mut cpu = vec![Vec::new(); rigs.len()];
    for _ in 0..ROUNDS {
        for (i, rig) in rigs.iter_mut().enumerate() {
            let (w, c) = rig.run();
            rate[i].push(BATCH as f64 / w.as_secs_f64() / 1e6);
            cpu[i].push(c.as_nanos() as f64 / BATCH as f64);
        }
    }
    use common::median;
    println!(
        "\ninterleaved summary ({ROUNDS} rounds of {BATCH} x {PAYLOAD}-byte datagrams, {FLOWS} flows)"
    );
    let mut med = Vec::new();
    for (i, (name, _)) in MODES.iter().enumerate() {
        let m = median(&mut rate[i]);
        let best = rate[i].iter().copied().fold(0.0, f64::max);
        let c = median(&mut cpu[i]);
        println!(
            "  {name:<26} median {m:>6.2} Mpkt/s   best {best:>6.2} Mpkt/s   CPU {c:>5.0} ns/pkt"
        );
        med.push((m, c));
    }
    println!(
        "  ratios (median rate): multishot/recvmmsg {:.2}x, multishot/recvfrom {:.2}x, recvmmsg/recvfrom {:.2}x",
        med[0].0 / med[1].0,
        med[0].0 / med[2].0,
        med[1].0 / med[2].0
    );
    for (r, (name, _)) in rigs.iter().zip(MODES) {
        let s = r.src.stats();
        println!(
            "  {name:<26} syscalls/pkt {:.3}  drops {}",
            s.syscalls as f64 / s.packets.max(1) as f64,
            s.channel_full + s.pool_empty + s.truncated
        );
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") {
        interleaved_summary();
    }
}
