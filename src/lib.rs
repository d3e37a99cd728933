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
    Kevent, Knote, KnoteId, Kqueue, Readiness, Storage,
};
pub use {kevent_core, kevent_net, kevent_timer};
