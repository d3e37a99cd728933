//! Net channels: a single-producer/single-consumer ring of
//! [`PacketDesc`]s, after Van Jacobson and Felderman's net channels
//! (linux.conf.au 2006) and rtrb's ring.
//!
//! # Design
//!
//! - **Indices on separate regions.** The producer's `tail` and the
//!   consumer's `head` each live in their own 128-byte-aligned region;
//!   neither side ever writes the other's line.
//! - **Cached indices.** Each end keeps a private copy of the other's index
//!   and re-reads the shared one only when its copy says full (producer) or
//!   empty (consumer), as in rtrb: in steady state a push or pop touches
//!   only lines its own side writes, plus the slot.
//! - **Bursts.** [`Producer::write_chunk`] / [`Consumer::read_chunk`]
//!   hand out up to two slices (split at the wrap); a whole burst is
//!   published with one Release store and one need-wakeup check.
//! - **Publication is never deferred past a call**: every push, pop and
//!   commit publishes its index before returning, so the one invariant a
//!   sleeping protocol needs — nothing is left unpublished when a side
//!   waits — holds by construction.
//!
//! # Need-wakeup (AF_XDP's `XDP_USE_NEED_WAKEUP`)
//!
//! The consumer may spin, or sleep on an eventfd ([`Notifier`]), directly
//! or in a kevent queue ([`ChannelConsumer`], [`wait_in`]). A
//! producer that made a syscall after every publication would pay
//! ~250–300 ns per push even while the consumer is running; so the
//! consumer advertises that it may be asleep with a flag (an odd sleep
//! epoch) in a third region, and the producer makes the syscall only if it
//! sees it:
//!
//! ```text
//! producer (publish)                consumer (prepare_wait)
//!   tail.store(t, Release)            seq += 1 (odd: may sleep)
//!                                     wake.seq.store(seq, Relaxed)
//!   fence(SeqCst)        ----+----    fence(SeqCst)
//!   s = wake.seq.load(Relaxed)        if tail.load(Acquire) != head
//!   if s is odd && s != woken             { seq += 1; store; don't sleep }
//!      { woken = s; eventfd write }   else { block on the eventfd;
//!                                            seq += 1; store }
//! ```
//!
//! The two SeqCst fences are totally ordered. If the producer's fence comes
//! first, the consumer's `tail` load (after its fence) sees the new tail;
//! if the consumer's comes first, the producer's `seq` load sees the odd
//! epoch. Either the consumer does not sleep or it is woken: no lost
//! wake-up. Without the fences this is the store-buffering litmus test,
//! where both loads may read stale values. The flag is an epoch counter
//! rather than a bool so the producer can make the syscall once per sleep
//! (it remembers the epoch it woke) without writing the consumer's line;
//! a burst costs at most one wake-up and a running consumer costs none.
//! Leftover notifications only cause spurious wake-ups, which
//! [`Consumer::wait`] reports as `false`.
//!
//! # Where the flag lives
//!
//! In a third 128-byte region, not beside `head` on the consumer's line
//! as the issue (and AF_XDP's first layout) had it: the producer reads the
//! flag after every publication, and beside `head` that read pulls the
//! line the consumer writes on every pop. Interleaved runs measured single
//! push/pop 2–2.5x slower (and 2–2.5x the CPU) with the flag beside
//! `head`, bursts and the one-way hand-off equal; see the figures in
//! `ring.rs`. Today's AF_XDP ring also gives `flags` a line
//! of its own.
//!
//! # Waiting in a kevent queue: the eventfd as a `READ` knote
//!
//! A channel is a storage in the sense of the kevent model — something
//! whose activity moves knotes to a queue's ready list — but it needs no
//! storage or filter of its own: the consumer's wake-up is an eventfd, and
//! [`ChannelConsumer`] registers it in the consumer's `Kqueue` as an
//! ordinary `READ` knote (`EV_CLEAR | NOTE_NODATA`), served by the core's
//! fd storage like any socket. Need-wakeup decides *when* the producer
//! signals (only while the consumer may sleep, once per sleep); the
//! eventfd is *how*. The alternative — a `Filter::User` knote in the
//! consumer's queue that the producer triggers (`NOTE_TRIGGER`) — was
//! measured against it (`benches/channel.rs`: group
//! `channel/wake_per_burst`, the interleaved summary, and
//! `CHANNEL_WAKE_ONLY=2000` runs; a consumer blocked in `kevent()` woken
//! 500–2000 times per run; medians / ranges of the runs):
//!
//! | backend  | design        | machine quiet (load 1.5): waker CPU, latency | under load (5–7): waker CPU, latency |
//! |----------|---------------|----------------------------------|-----------------------|
//! | epoll    | eventfd READ  | 6.0–9.2 µs, 19–23 µs             | 3.3 µs, 17 µs         |
//! | epoll    | USER trigger  | 7.8–10.7 µs, 20–29 µs            | 8.9 µs, 90 µs         |
//! | io_uring | eventfd READ  | 7.5–10.0 µs, 23–33 µs            | 3.8 µs, 15 µs         |
//! | io_uring | USER trigger  | 8.4–10.6 µs, 20–27 µs            | 9.0 µs, 695 µs        |
//!
//! On a quiet machine the two cost about the same — the wake-up of a
//! sleeping thread dominates both, and both make exactly one `write(2)`
//! per wake-up (`strace -f -c` of 1000 wake-ups: the trigger's is the
//! queue's internal wake-up of its blocked waiter) — with the eventfd
//! cheaper for the producer in 9 of 10 paired runs, by up to 24 %, and
//! latencies within each other's noise. Under load the trigger degrades:
//! 0.1–2.2 `sched_yield` per wake-up, because the producer's `kevent()`
//! holds the consumer's queue lock while it applies the change and wakes
//! the waiter, which then contends for that lock to collect its event
//! (parking_lot's spin-then-yield). The eventfd keeps the producer off the
//! consumer's queue entirely — it needs no `Kqueue` handle, never
//! contends for its lock, and its syscall is the cheapest that can wake a
//! thread — so it is the design kept.
//!
//! # Verification
//!
//! - loom (`RUSTFLAGS="--cfg loom" cargo test -p kevent-net --release
//!   --test loom_channel`): index publication through a full ring, bursts
//!   published whole, the need-wakeup protocol (no lost wake-up; at most
//!   one wake-up per burst; a timed-out wait clears the flag), and the
//!   chunk API: reserve, partial commit, partial release and uncommitted
//!   drops, with every slot access tracked, and a commit waking a
//!   sleeping consumer once. Under loom the chunks are filled through
//!   indexed accessors (`WriteChunk::write`, `ReadChunk::read`) instead of
//!   the slices, which loom cannot track; the slice code is Miri's.
//! - Miri with `-Zmiri-strict-provenance` (`cargo +nightly miri test -p
//!   kevent-net --lib --tests`): every channel and pool test, including
//!   the threaded ones, through the unsafe slice code (`write_chunk`,
//!   `read_chunk`, `push_slice`, `pop_into`). Miri models the eventfd; the
//!   `ppoll(2)` it lacks is replaced under `cfg(miri)` by polling the
//!   eventfd ([`Notifier::wait`]).
//!
//! # Examples
//!
//! ```
//! use kevent_net::{channel, PacketDesc};
//!
//! let (mut tx, mut rx) = channel(1024)?;
//! let producer = std::thread::spawn(move || {
//!     for i in 0..10_000u32 {
//!         let mut d = PacketDesc::new(i, 64, 0);
//!         while let Err(e) = tx.push(d) {
//!             d = e.into_inner();
//!             std::hint::spin_loop();
//!         }
//!     }
//! });
//! let mut next = 0;
//! while next < 10_000 {
//!     match rx.pop() {
//!         Ok(d) => {
//!             assert_eq!(d.buf, next);
//!             next += 1;
//!         }
//!         Err(_) => {
//!             rx.wait(None)?;
//!         }
//!     }
//! }
//! producer.join().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod consumer;
mod desc;
mod error;
mod notify;
mod producer;
#[cfg(not(loom))]
mod queue;
mod ring;

pub use consumer::{Consumer, ReadChunk, WaitPrep};
pub use desc::PacketDesc;
pub use error::{ChannelError, ChunkError, PopError, PushError};
pub use notify::Notifier;
pub use producer::{Producer, WriteChunk};

#[cfg(not(loom))]
pub use queue::{wait_in, ChannelConsumer};

use crate::loom::Arc;
use ring::Ring;

/// The largest capacity [`channel`] accepts: 2^26 descriptors (1 GiB).
pub const MAX_CAPACITY: usize = 1 << 26;

/// Creates a channel of `capacity` descriptors and its eventfd.
///
/// # Errors
///
/// [`ChannelError::Capacity`] if `capacity` is zero, not a power of two or
/// above [`MAX_CAPACITY`]; [`ChannelError::Notifier`] if the eventfd cannot
/// be created.
///
/// # Examples
///
/// ```
/// use kevent_net::{channel, ChannelError};
///
/// assert!(matches!(channel(100), Err(ChannelError::Capacity(100))));
/// let (tx, rx) = channel(256)?;
/// assert_eq!(tx.capacity(), rx.capacity());
/// # Ok::<(), ChannelError>(())
/// ```
pub fn channel(capacity: usize) -> Result<(Producer, Consumer), ChannelError> {
    if !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
        return Err(ChannelError::Capacity(capacity));
    }
    let notifier = Notifier::new().map_err(ChannelError::Notifier)?;
    let ring = Arc::new(Ring::new(capacity, notifier));
    Ok((Producer::new(Arc::clone(&ring)), Consumer::new(ring)))
}

#[allow(dead_code)]
fn _assert_send() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Producer>();
    send::<Consumer>();
    sync::<Notifier>();
}
