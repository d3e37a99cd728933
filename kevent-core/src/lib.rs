//! # kevent-core
//!
//! One queue for every kind of event — fd readiness, user wake-ups,
//! signals, process exits, file changes, and (through storages from the
//! sibling crates) timers, network I/O completions and packet channels —
//! returned through one call with FreeBSD `kevent(2)` semantics, driven by
//! epoll or io_uring underneath.
//!
//! ```
//! use kevent_core::{Kqueue, Kevent, Filter, Flags};
//! use std::io::Write;
//! use std::os::fd::AsRawFd;
//! use std::time::Duration;
//!
//! let kq = Kqueue::new()?;
//! let (rx, mut tx) = std::io::pipe()?;
//! let fd = rx.as_raw_fd() as u64;
//! kq.kevent(&[Kevent::new(fd, Filter::Read, Flags::ADD, 0, 0, 1)], &mut [], None)?;
//! tx.write_all(b"hello")?;
//! let mut out = [Kevent::default(); 8];
//! let n = kq.kevent(&[], &mut out, Some(Duration::from_secs(1)))?;
//! assert_eq!(n, 1);
//! assert_eq!((out[0].ident, out[0].filter, out[0].data), (fd, Filter::Read, 5));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The model follows the 2006 kernel kevent and FreeBSD: a *knote* is one
//! `(ident, filter)` registration; a [`Storage`] is an event source that
//! keeps the knotes interested in it and moves them to the queue's ready
//! list when it sees activity; collection applies each knote's own mode
//! (level, `CLEAR`, `ONESHOT`, `DISPATCH`).
//!
//! Where FreeBSD and macOS differ, FreeBSD is followed and the item's docs
//! say so; the one exception (USER: an `ADD` with `TRIGGER` fires at once,
//! which FreeBSD's code intends but does not do) says why.

#![deny(unsafe_op_in_unsafe_fn)]

mod event;
mod knote;
mod queue;
pub mod storage;
mod sys;

pub use event::{note, Filter, Flags, Kevent};
/// The `io-uring` crate this core is built with, for storages that submit
/// ring ops through [`Context::submit_op`].
pub use io_uring;
pub use knote::{Knote, KnoteId};
pub use queue::{Backend, Builder, Kqueue};
pub use storage::signal::block_signals;
pub use storage::{Context, Errno, Storage};
pub use sys::{Interest, Readiness};
