//! # kevent
//!
//! A kqueue-style event notification runtime for Linux: one queue takes
//! every kind of event a network or media server cares about — socket
//! readiness, file changes, timers, signals, process exits, user wake-ups,
//! completed network I/O, packets on a channel — and returns them through
//! one call with FreeBSD kqueue's semantics, driving epoll or io_uring.
//!
//! This facade re-exports the three crates:
//! - [`kevent_core`]: the queue ([`Kqueue`]), knotes, the ready list, the
//!   backends, and the storages every program has (fd readiness, USER,
//!   SIGNAL, PROC, VNODE);
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
    block_signals, note, storage, Backend, Builder, Context, Errno, Filter, Flags, Interest,
    Kevent, Knote, KnoteId, Readiness, Storage,
};
pub use {kevent_core, kevent_net, kevent_timer};

use std::fmt;
use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// The queue with every storage of the three crates installed: the core's
/// (fd readiness, USER, SIGNAL, PROC, VNODE) plus `kevent-timer`'s
/// `Filter::Timer`.
///
/// It is [`kevent_core::Kqueue`] with its storages chosen: it derefs to it,
/// so every method ([`kevent`](kevent_core::Kqueue::kevent),
/// [`kevent_min`](kevent_core::Kqueue::kevent_min),
/// [`backend`](kevent_core::Kqueue::backend), ...) and every API taking a
/// `&kevent_core::Kqueue` works on it. (The core cannot name the timer
/// crate — dependencies point one way — so the facade is where the full
/// set is assembled.)
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
        Kqueue::builder(backend)?.build().map(Kqueue)
    }

    /// A builder with every storage of the three crates already added, to
    /// add more before the queue runs.
    ///
    /// # Errors
    /// As [`Kqueue::with_backend`].
    pub fn builder(backend: Backend) -> io::Result<Builder> {
        let b = kevent_core::Kqueue::builder(backend)?;
        Ok(install_storages(b))
    }

    /// The core queue inside.
    pub fn into_inner(self) -> kevent_core::Kqueue {
        self.0
    }
}

/// Add the storages of the sibling crates to a core builder: today
/// `kevent-timer`'s `Filter::Timer`.
pub fn install_storages(b: Builder) -> Builder {
    b.storage(Box::new(kevent_timer::TimerStorage::new()))
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
