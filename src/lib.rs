//! # kevent
//!
//! A kqueue-style event notification runtime for Linux: one queue takes
//! every kind of event a network or media server cares about — socket
//! readiness, file changes, timers, signals, process exits, user wake-ups,
//! completed network I/O, packets on a channel — and returns them through
//! one call with FreeBSD kqueue's semantics, driving epoll or io_uring.
//!
//! This facade re-exports the three crates, and assembles their storages
//! into one queue: [`Kqueue`] is [`kevent_core::Kqueue`] with every storage
//! installed (a newtype that derefs to it; its docs say why), built by
//! [`Kqueue::new`], [`Kqueue::with_backend`] or [`Kqueue::builder`].
//! - [`kevent_core`]: the queue, knotes, the ready list, the backends, and
//!   the storages every program has (fd readiness, USER, SIGNAL, PROC,
//!   VNODE);
//! - [`kevent_timer`]: the timer wheel and the 1 kHz tick source;
//! - [`kevent_net`]: sockets, network AIO, packet channels.
//!
//! ```
//! use kevent::{Kqueue, Kevent, Filter, Flags, note};
//! use std::time::Duration;
//!
//! let kq = Kqueue::new()?;
//! let mut out = [Kevent::default(); 8];
//! kq.kevent(&[Kevent::new(1, Filter::User, Flags::ADD | Flags::CLEAR, 0, 0, 0)], &mut [], None)?;
//! kq.kevent(&[Kevent::new(1, Filter::User, Flags::empty(), note::TRIGGER, 0, 9)], &mut [], None)?;
//! let n = kq.kevent(&[], &mut out, Some(Duration::from_secs(1)))?;
//! assert_eq!((n, out[0].udata), (1, 9));
//! # Ok::<(), std::io::Error>(())
//! ```

pub use kevent_core::{
    block_signals, note, storage, Backend, Context, Errno, Filter, Flags, Interest, Kevent, Knote,
    KnoteId, Readiness, Storage,
};
pub use {kevent_core, kevent_net, kevent_timer};

use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

/// The queue with every storage of the three crates installed: the core's
/// (fd readiness, USER, SIGNAL, PROC, VNODE) plus `kevent-timer`'s
/// `Filter::Timer`.
///
/// # Why a newtype and not the core type itself
///
/// It is [`kevent_core::Kqueue`] with its storages chosen, and it derefs
/// to it: every method of the core queue ([`close`](kevent_core::Kqueue::close),
/// [`trigger`](kevent_core::Kqueue::trigger), ...) works on it, and so does
/// every API taking a `&kevent_core::Kqueue` (`&kq` coerces). The contract
/// methods of `kevent(2)` ([`Kqueue::new`], [`Kqueue::with_backend`],
/// [`Kqueue::backend`], [`Kqueue::kevent`], [`Kqueue::kevent_min`]) are
/// also inherent here, so they can be named as `kevent::Kqueue::kevent`.
///
/// It cannot be the core type re-exported: `Kqueue::new()` must install
/// the timer storage, and the core cannot name `kevent-timer`
/// (dependencies point one way: the timer crate implements the core's
/// `Storage` trait). The alternatives — a process-wide registry of
/// default storages that the core's `new()` consults, filled in by the
/// facade before first use — would make a core queue's filters depend on
/// what else was linked and initialised, so the facade assembles the full
/// set in its own type instead. [`Kqueue::into_inner`] and `From` convert
/// between the two.
///
/// ```
/// use kevent::{Kqueue, Kevent, Filter, Flags, note};
/// use std::time::Duration;
///
/// let kq = Kqueue::new()?;
/// // A 5 ms one-shot timer: the facade's queue has Filter::Timer.
/// kq.kevent(&[Kevent::new(1, Filter::Timer, Flags::ADD | Flags::ONESHOT, note::MSECONDS, 5, 0)], &mut [], None)?;
/// let mut out = [Kevent::default(); 4];
/// assert_eq!(kq.kevent(&[], &mut out, Some(Duration::from_secs(2)))?, 1);
/// assert_eq!(out[0].filter, Filter::Timer);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Kqueue(kevent_core::Kqueue);

impl Kqueue {
    /// A queue on the best backend available ([`Backend::Auto`]).
    ///
    /// # Errors
    /// As [`kevent_core::Kqueue::with_backend`].
    pub fn new() -> io::Result<Kqueue> {
        Kqueue::with_backend(Backend::Auto)
    }

    /// A queue on the given backend, with every storage installed.
    ///
    /// # Errors
    /// `Unsupported` if `IoUring` cannot work here (never a silent
    /// fallback); otherwise the OS error from creating the backend.
    pub fn with_backend(backend: Backend) -> io::Result<Kqueue> {
        Kqueue::builder(backend)?.build()
    }

    /// A builder with every storage of the three crates already added, to
    /// add more (network AIO, channels) before the queue runs.
    ///
    /// # Errors
    /// As [`Kqueue::with_backend`].
    pub fn builder(backend: Backend) -> io::Result<Builder> {
        let b = kevent_core::Kqueue::builder(backend)?;
        Ok(Builder(install_storages(b)))
    }

    /// The backend actually in use ([`kevent_core::Kqueue::backend`]).
    #[inline]
    pub fn backend(&self) -> Backend {
        self.0.backend()
    }

    /// FreeBSD `kevent(2)`: apply every change, then return up to
    /// `events.len()` ready events ([`kevent_core::Kqueue::kevent`]).
    ///
    /// # Errors
    /// As [`kevent_core::Kqueue::kevent`].
    #[inline]
    pub fn kevent(
        &self,
        changes: &[Kevent],
        events: &mut [Kevent],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.0.kevent(changes, events, timeout)
    }

    /// As [`Kqueue::kevent`], waiting until at least `min` events are
    /// ready or the timeout ends ([`kevent_core::Kqueue::kevent_min`]).
    ///
    /// # Errors
    /// As [`kevent_core::Kqueue::kevent`].
    #[inline]
    pub fn kevent_min(
        &self,
        changes: &[Kevent],
        events: &mut [Kevent],
        min: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        self.0.kevent_min(changes, events, min, timeout)
    }

    /// The core queue inside.
    pub fn into_inner(self) -> kevent_core::Kqueue {
        self.0
    }
}

/// Builds a facade [`Kqueue`]: a [`kevent_core::Builder`] with every
/// storage of the three crates added ([`Kqueue::builder`]), whose
/// [`build`](Builder::build) returns the facade type.
///
/// ```
/// use kevent::{Backend, Kqueue};
///
/// let (aio, storage) = kevent::kevent_net::aio::Aio::new();
/// let kq: Kqueue = Kqueue::builder(Backend::Auto)?.storage(storage).build()?;
/// # drop((aio, kq));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Builder(kevent_core::Builder);

impl Builder {
    /// Add a storage. A later storage for a filter replaces an earlier one.
    #[must_use]
    pub fn storage(self, s: Box<dyn Storage>) -> Builder {
        Builder(self.0.storage(s))
    }

    /// The backend the queue will use.
    pub fn backend(&self) -> Backend {
        self.0.backend()
    }

    /// One thread only collects events ([`kevent_core::Builder::single_thread`]:
    /// `SINGLE_ISSUER | DEFER_TASKRUN` on io_uring).
    #[must_use]
    pub fn single_thread(self) -> Builder {
        Builder(self.0.single_thread())
    }

    /// Build the queue.
    ///
    /// # Errors
    /// As [`kevent_core::Builder::build`].
    pub fn build(self) -> io::Result<Kqueue> {
        self.0.build().map(Kqueue)
    }

    /// The core builder inside (its `build` returns a core queue).
    pub fn into_core(self) -> kevent_core::Builder {
        self.0
    }
}

/// Add the storages of the sibling crates to a core builder: today
/// `kevent-timer`'s `Filter::Timer`.
pub fn install_storages(b: kevent_core::Builder) -> kevent_core::Builder {
    b.storage(Box::new(kevent_timer::TimerStorage::new()))
}

/// The contract of issue 2 on the facade type, checked at compile time
/// (the signatures spelled out are the point).
#[allow(clippy::type_complexity)]
fn _assert_facade_api() {
    fn is<T: Send + Sync + AsFd + AsRawFd + fmt::Debug>() {}
    is::<Kqueue>();
    let _: fn() -> io::Result<Kqueue> = Kqueue::new;
    let _: fn(Backend) -> io::Result<Kqueue> = Kqueue::with_backend;
    let _: fn(&Kqueue) -> Backend = Kqueue::backend;
    let _: fn(&Kqueue, &[Kevent], &mut [Kevent], Option<Duration>) -> io::Result<usize> =
        Kqueue::kevent;
    let _: fn(&Kqueue, &[Kevent], &mut [Kevent], usize, Option<Duration>) -> io::Result<usize> =
        Kqueue::kevent_min;
    let _: fn(Backend) -> io::Result<Builder> = Kqueue::builder;
    let _: fn(Builder) -> io::Result<Kqueue> = Builder::build;
    let _: fn(&Kqueue) -> &kevent_core::Kqueue = <Kqueue as Deref>::deref;
}

impl Deref for Kqueue {
    type Target = kevent_core::Kqueue;
    #[inline]
    fn deref(&self) -> &kevent_core::Kqueue {
        &self.0
    }
}

impl kevent_net::QueueRef for Kqueue {
    /// The core queue, so `kevent_net` sockets register in a facade queue
    /// (`Arc<kevent::Kqueue>`).
    #[inline]
    fn queue(&self) -> &kevent_core::Kqueue {
        &self.0
    }
}

impl AsRef<kevent_core::Kqueue> for Kqueue {
    fn as_ref(&self) -> &kevent_core::Kqueue {
        &self.0
    }
}

impl From<kevent_core::Kqueue> for Kqueue {
    /// Wrap a core queue (whatever storages it was built with).
    fn from(kq: kevent_core::Kqueue) -> Kqueue {
        Kqueue(kq)
    }
}

impl fmt::Debug for Kqueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl AsFd for Kqueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Kqueue {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
