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
//! The consumer may spin, or sleep on an eventfd ([`Notifier`]). A
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
//! The protocol and the index publication are model-checked with loom
//! (`RUSTFLAGS="--cfg loom" cargo test -p kevent-net --release loom`).
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
