//! Simulated participants: N UDP sockets on 127.0.0.1 sending RTP L16
//! frames to the bridge on a 1 ms absolute schedule (participant `p`
//! sends in millisecond `p % frame_ms` of each frame), with optional
//! jitter (each frame delayed by 0..=jitter_ms, so frames may reorder)
//! and loss. With `verify`, they also read what the bridge sends back and
//! check it.

#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::mix;

/// What the simulation is asked to do.
#[derive(Clone, Debug)]
pub(crate) struct SimConfig {
    /// Participants.
    pub(crate) n: usize,
    /// Frame interval.
    pub(crate) frame_ms: u32,
    /// Samples per frame.
    pub(crate) samples: usize,
    /// Largest extra delay of a frame.
    pub(crate) jitter_ms: u32,
    /// Probability of dropping a frame.
    pub(crate) loss: f64,
    /// The bridge.
    pub(crate) target: SocketAddr,
    /// Read the bridge's output back and check it.
    pub(crate) verify: bool,
    /// CPU to pin the sender thread to.
    pub(crate) cpu: Option<usize>,
}

/// What the simulation saw.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SimReport {
    /// Frames sent.
    pub(crate) sent: u64,
    /// Frames dropped on purpose (`--loss`).
    pub(crate) lost: u64,
    /// Sends that failed.
    pub(crate) send_errors: u64,
    /// Frames received back (`verify` only).
    pub(crate) received: u64,
    /// Received frames equal to the saturated sum of all the others.
    pub(crate) exact_full: u64,
    /// Received frames equal to the saturated sum of a strict subset of
    /// the others (some frames were missing at that tick).
    pub(crate) partial: u64,
    /// Received frames that match no subset sum: a mixing error.
    pub(crate) bad: u64,
}

/// The constant sample value participant `p` sends (distinct, small).
pub(crate) fn value_of(p: usize) -> i16 {
    ((p % 97) as i16 + 1) * 100
}

/// Binds the participants' sockets; returns them and their addresses.
pub(crate) fn bind(n: usize, verify: bool) -> io::Result<(Vec<UdpSocket>, Vec<SocketAddr>)> {
    let mut socks = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_nonblocking(true)?;
        if !verify {
            // Nobody reads the mix back: keep what the kernel queues small.
            let size: libc::c_int = 4096;
            // SAFETY: setsockopt with a valid int option value.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    std::ptr::from_ref(&size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        addrs.push(s.local_addr()?);
        socks.push(s);
    }
    Ok((socks, addrs))
}

/// Pins the calling thread to `cpu`.
///
/// # Errors
///
/// `InvalidInput` for a CPU number beyond `CPU_SETSIZE`; the
/// `sched_setaffinity(2)` error (`EINVAL`: not a CPU this process may
/// use).
pub(crate) fn pin(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "CPU number too large",
        ));
    }
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in bounds for
    // cpu < CPU_SETSIZE (checked above); sched_setaffinity reads the set.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until_ns(t: u64) {
    let ts = libc::timespec {
        tv_sec: (t / 1_000_000_000) as libc::time_t,
        tv_nsec: (t % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: absolute sleep on a valid timespec; EINTR just returns early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

/// A small xorshift generator: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Starts the senders on their own thread until `stop` is set.
pub(crate) fn spawn(
    cfg: SimConfig,
    socks: Vec<UdpSocket>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<SimReport>> {
    for s in &socks {
        s.connect(cfg.target)?;
    }
    std::thread::Builder::new()
        .name("participants".into())
        .spawn(move || run(&cfg, &socks, &stop))
}

fn run(cfg: &SimConfig, socks: &[UdpSocket], stop: &AtomicBool) -> SimReport {
    if let Some(c) = cfg.cpu {
        // Best effort: on a one-CPU machine the simulation shares the
        // bridge's CPU.
        let _ = pin(c);
    }
    let mut rep = SimReport::default();
    let n = cfg.n;
    let fms = cfg.frame_ms.max(1) as u64;
    // One slot per millisecond of jitter (bounded by the bridge's
    // MAX_JITTER_MS, checked before the simulation starts).
    let wheel = cfg.jitter_ms as usize + 1;
    // Frames waiting for their (jittered) send millisecond: (participant, seq).
    let mut due: Vec<Vec<(u32, u16)>> = (0..wheel)
        .map(|_| Vec::with_capacity(n / fms as usize + 8))
        .collect();
    let mut seq = vec![0u16; n];
    let mut pkt = vec![0u8; mix::RTP_HEADER + 2 * cfg.samples];
    let mut rbuf = vec![0u8; 65536];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let others_sum: i64 = (0..n).map(|p| i64::from(value_of(p))).sum();
    let start = now_ns();
    let mut ms: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        ms += 1;
        sleep_until_ns(start + ms * 1_000_000);
        let phase = (ms % fms) as usize;
        let mut p = phase;
        while p < n {
            let s = seq[p];
            seq[p] = s.wrapping_add(1);
            if cfg.loss > 0.0 && rng.unit() < cfg.loss {
                rep.lost += 1;
            } else {
                let d = if cfg.jitter_ms > 0 {
                    (rng.next() % (u64::from(cfg.jitter_ms) + 1)) as usize
                } else {
                    0
                };
                due[(ms as usize + d) % wheel].push((p as u32, s));
            }
            p += fms as usize;
        }
        let slot = ms as usize % wheel;
        for &(p, s) in &due[slot] {
            let p = p as usize;
            let ts = u32::from(s).wrapping_mul(cfg.samples as u32);
            mix::write_header(&mut pkt, s, ts, p as u32);
            let v = value_of(p).to_be_bytes();
            for b in pkt[mix::RTP_HEADER..].chunks_exact_mut(2) {
                b.copy_from_slice(&v);
            }
            // SAFETY: sends `pkt.len()` bytes from a live buffer on an open,
            // connected socket.
            let r = unsafe {
                libc::send(
                    socks[p].as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                rep.send_errors += 1;
            } else {
                rep.sent += 1;
            }
        }
        due[slot].clear();
        if cfg.verify {
            for (p, s) in socks.iter().enumerate() {
                while let Ok(len) = s.recv(&mut rbuf) {
                    rep.received += 1;
                    check(&rbuf[..len], p, n, cfg.samples, others_sum, &mut rep);
                }
            }
        }
    }
    rep
}

/// Classifies one frame received by participant `p`.
fn check(pkt: &[u8], p: usize, n: usize, samples: usize, total: i64, rep: &mut SimReport) {
    if mix::frame_seq(pkt, samples).is_none() {
        rep.bad += 1;
        return;
    }
    let pcm = mix::pcm(pkt);
    let first = i16::from_be_bytes([pcm[0], pcm[1]]);
    if pcm
        .chunks_exact(2)
        .any(|b| i16::from_be_bytes([b[0], b[1]]) != first)
    {
        rep.bad += 1;
        return;
    }
    let full = mix::saturate((total - i64::from(value_of(p))).clamp(-1 << 30, 1 << 30) as i32);
    if first == full {
        rep.exact_full += 1;
        return;
    }
    // Some frames were missing: the value must be the saturated sum of a
    // subset of the others (checked exhaustively for small calls).
    if n <= 12 {
        let others: Vec<i64> = (0..n)
            .filter(|&q| q != p)
            .map(|q| i64::from(value_of(q)))
            .collect();
        for mask in 0..(1u32 << others.len()) {
            let s: i64 = others
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, v)| v)
                .sum();
            if mix::saturate(s as i32) == first {
                rep.partial += 1;
                return;
            }
        }
        rep.bad += 1;
    } else {
        rep.partial += 1;
    }
}
