//! A channel's consumer waiting in a kevent [`Kqueue`].
//!
//! # Design
//!
//! The channel's [`Notifier`](super::Notifier) is an eventfd; the queue
//! watches it as an ordinary `READ` knote (`EV_CLEAR`, `NOTE_NODATA`), so
//! no new filter or storage is needed and the consumer's thread waits for
//! packets, timers, sockets and signals in the same `kevent()` call. The
//! eventfd is readable exactly when the producer made a wake-up syscall;
//! the need-wakeup protocol keeps those rare:
//!
//! ```text
//! consumer thread                              producer thread
//!   prepare_wait()  (flag set, ring re-checked)
//!   kq.kevent(.., timeout)  -- blocks           push(..) sees the flag:
//!                                               one eventfd write
//!   <- READ event on the eventfd
//!   finish_wait()   (flag cleared)              push(..): no syscall
//!   drain_into(..)
//! ```
//!
//! A consumer that skips `prepare_wait` is never woken (the producer sees
//! no flag); one that skips `finish_wait` costs the producer one extra
//! syscall per later sleep epoch at most. [`wait_in`] does both around the
//! call for any number of consumers, so the pairing cannot be forgotten,
//! and turns the queue's timeout into a poll when a re-check finds
//! descriptors already waiting.
//!
//! The eventfd count is not read back: with `EV_CLEAR` each producer write
//! is a new edge (eventfd wakes its pollers on every write), so a count
//! left over costs nothing but at most one spurious event, which
//! `drain_into` answers with 0.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use kevent_core::{note, Filter, Flags, Kevent, Kqueue};

use super::{Consumer, PacketDesc, WaitPrep};

/// A [`Consumer`] registered in a [`Kqueue`]: its eventfd is a `READ`
/// knote there (ident = the eventfd, `udata` as given).
///
/// # Examples
///
/// ```
/// use kevent_core::{Kevent, Kqueue};
/// use kevent_net::{channel, wait_in, ChannelConsumer, PacketDesc};
/// use std::time::Duration;
///
/// let kq = Kqueue::new()?;
/// let (mut tx, rx) = channel(64)?;
/// let mut rx = ChannelConsumer::register(&kq, rx, 7)?;
/// let t = std::thread::spawn(move || tx.push_slice(&[PacketDesc::new(1, 60, 0); 4]));
/// let mut events = [Kevent::default(); 4];
/// let mut got = [PacketDesc::default(); 16];
/// let mut total = 0;
/// while total < 4 {
///     let n = wait_in(&kq, std::slice::from_mut(&mut rx), &[], &mut events,
///                     Some(Duration::from_secs(5)))?;
///     // Ready or not, draining is cheap: events only say "look now".
///     let _ = &events[..n];
///     total += rx.drain_into(&mut got);
/// }
/// t.join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ChannelConsumer {
    rx: Consumer,
    ident: u64,
    udata: u64,
    /// `prepare_wait` returned `MaySleep` and `finish_wait` is pending.
    sleeping: bool,
}

impl ChannelConsumer {
    /// Registers `rx`'s eventfd for `READ` (`CLEAR | NODATA`) in `kq` with
    /// `udata`, and wraps it.
    ///
    /// # Errors
    ///
    /// The queue's error for the `EV_ADD` (e.g. `EBADF` for a closed queue).
    pub fn register(kq: &Kqueue, rx: Consumer, udata: u64) -> io::Result<Self> {
        let ident = rx.notifier().as_fd().as_raw_fd() as u64;
        let add = Kevent::new(
            ident,
            Filter::Read,
            Flags::ADD | Flags::CLEAR,
            note::NODATA,
            0,
            udata,
        );
        kq.kevent(&[add], &mut [], None)?;
        Ok(Self {
            rx,
            ident,
            udata,
            sleeping: false,
        })
    }

    /// Removes the knote and hands the consumer back.
    ///
    /// # Errors
    ///
    /// The queue's error for the `EV_DELETE`; the consumer is lost with
    /// the error only if the queue is closed (its knotes are gone anyway).
    pub fn deregister(mut self, kq: &Kqueue) -> io::Result<Consumer> {
        self.finish_wait();
        let del = Kevent::new(self.ident, Filter::Read, Flags::DELETE, 0, 0, 0);
        kq.kevent(&[del], &mut [], None)?;
        Ok(self.rx)
    }

    /// The knote's ident (the eventfd's number).
    #[must_use]
    pub fn ident(&self) -> u64 {
        self.ident
    }

    /// The `udata` given at registration.
    #[must_use]
    pub fn udata(&self) -> u64 {
        self.udata
    }

    /// Whether `ev` is this consumer's wake-up event.
    #[must_use]
    pub fn is_event(&self, ev: &Kevent) -> bool {
        ev.filter == Filter::Read && ev.ident == self.ident
    }

    /// First half of a wait in the queue; see [`Consumer::prepare_wait`].
    /// Prefer [`wait_in`], which pairs it with [`finish_wait`](Self::finish_wait).
    pub fn prepare_wait(&mut self) -> WaitPrep {
        if self.sleeping {
            return WaitPrep::MaySleep;
        }
        let p = self.rx.prepare_wait();
        self.sleeping = p == WaitPrep::MaySleep;
        p
    }

    /// Second half of a wait; see [`Consumer::finish_wait`]. Idempotent.
    pub fn finish_wait(&mut self) {
        if self.sleeping {
            self.rx.finish_wait();
            self.sleeping = false;
        }
    }

    /// Pops up to `out.len()` descriptors (one release store); returns how
    /// many. Clears a pending sleep announcement first, so a consumer
    /// that drains after its event makes later pushes syscall-free.
    pub fn drain_into(&mut self, out: &mut [PacketDesc]) -> usize {
        self.finish_wait();
        self.rx.pop_into(out)
    }

    /// The consumer inside (pop, read chunks, counters).
    pub fn consumer(&mut self) -> &mut Consumer {
        &mut self.rx
    }
}

/// Clears the sleep flags of every consumer when the wait ends, even by
/// an error or a panic.
struct FinishOnDrop<'a>(&'a mut [ChannelConsumer]);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        for c in self.0.iter_mut() {
            c.finish_wait();
        }
    }
}

/// `kq.kevent(changes, events, timeout)` with every consumer's
/// need-wakeup flag set for the duration of the call: a producer pushing
/// while this thread may block makes one wake-up syscall, one pushing
/// before or after makes none.
///
/// If a re-check finds descriptors already waiting in any channel, the
/// call only polls the queue (timeout zero) and returns; drain the
/// channels after it either way. Returns the number of events written.
///
/// # Errors
///
/// As [`Kqueue::kevent`] (including `EINTR`); the flags are cleared on
/// every path.
pub fn wait_in(
    kq: &Kqueue,
    consumers: &mut [ChannelConsumer],
    changes: &[Kevent],
    events: &mut [Kevent],
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let mut ready = false;
    for c in consumers.iter_mut() {
        // Keep announcing for the others even if one is ready: a Ready
        // consumer has cleared its own flag already.
        ready |= c.prepare_wait() == WaitPrep::Ready;
    }
    let guard = FinishOnDrop(consumers);
    let timeout = if ready { Some(Duration::ZERO) } else { timeout };
    let r = kq.kevent(changes, events, timeout);
    drop(guard);
    r
}
