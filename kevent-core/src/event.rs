//! The raw kqueue vocabulary: [`Kevent`], [`Filter`], [`Flags`] and the
//! `NOTE_*` values in [`note`].
//!
//! Every value is FreeBSD's (`sys/event.h`), so code written against
//! FreeBSD's `kevent(2)` translates one to one.

use std::fmt;
use std::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, Not};

/// An event filter: the kind of event source a knote watches.
///
/// The discriminants are FreeBSD's `EVFILT_*` values. A filter this queue
/// has no storage for is refused with `EINVAL` when a change names it.
#[repr(i16)]
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filter {
    /// `EVFILT_READ`: the descriptor has data to read (or a connection to
    /// accept, or hit end-of-file). `data` is the number of bytes readable.
    Read = -1,
    /// `EVFILT_WRITE`: the descriptor can be written. `data` is the space left.
    Write = -2,
    /// `EVFILT_AIO`: a submitted asynchronous operation completed (see
    /// `kevent-net`'s network AIO).
    Aio = -3,
    /// `EVFILT_VNODE`: changes to a file (`note::DELETE`, `note::WRITE`, ...).
    Vnode = -4,
    /// `EVFILT_PROC`: process events (`note::EXIT`).
    Proc = -5,
    /// `EVFILT_SIGNAL`: a signal was delivered to the process; `data` counts
    /// deliveries since the last report.
    Signal = -6,
    /// `EVFILT_TIMER`: a timer expired; `data` counts expirations.
    Timer = -7,
    /// `EVFILT_USER`: a user event, triggered with `note::TRIGGER`.
    User = -11,
}

impl Filter {
    /// Every filter this version knows, in FreeBSD's order.
    pub const ALL: [Filter; 8] = [
        Filter::Read,
        Filter::Write,
        Filter::Aio,
        Filter::Vnode,
        Filter::Proc,
        Filter::Signal,
        Filter::Timer,
        Filter::User,
    ];

    /// The raw `EVFILT_*` value.
    #[inline]
    pub const fn raw(self) -> i16 {
        self as i16
    }

    /// The filter with this raw `EVFILT_*` value, if this version knows it.
    ///
    /// ```
    /// use kevent_core::Filter;
    /// assert_eq!(Filter::from_raw(-7), Some(Filter::Timer));
    /// assert_eq!(Filter::from_raw(-99), None);
    /// ```
    pub const fn from_raw(raw: i16) -> Option<Filter> {
        Some(match raw {
            -1 => Filter::Read,
            -2 => Filter::Write,
            -3 => Filter::Aio,
            -4 => Filter::Vnode,
            -5 => Filter::Proc,
            -6 => Filter::Signal,
            -7 => Filter::Timer,
            -11 => Filter::User,
            _ => return None,
        })
    }

    /// A small dense index (0..16) used for per-filter tables.
    #[inline]
    pub(crate) const fn slot(self) -> usize {
        (-(self as i16)) as usize & 15
    }
}

/// The `flags` of a [`Kevent`]: what a change asks for, and what an event
/// reports. A `u16` set with FreeBSD's `EV_*` bits, in the style of the
/// `bitflags` crate.
///
/// ```
/// use kevent_core::Flags;
/// let f = Flags::ADD | Flags::CLEAR;
/// assert!(f.contains(Flags::ADD));
/// assert_eq!(f.bits(), 0x0021);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Flags(u16);

impl Flags {
    /// `EV_ADD`: add the knote, or modify it if it exists.
    pub const ADD: Flags = Flags(0x0001);
    /// `EV_DELETE`: remove the knote.
    pub const DELETE: Flags = Flags(0x0002);
    /// `EV_ENABLE`: let a disabled knote deliver again.
    pub const ENABLE: Flags = Flags(0x0004);
    /// `EV_DISABLE`: stop delivery (the knote stays registered).
    pub const DISABLE: Flags = Flags(0x0008);
    /// `EV_ONESHOT`: deliver once, then delete.
    pub const ONESHOT: Flags = Flags(0x0010);
    /// `EV_CLEAR`: edge-triggered; state is reset after each delivery.
    pub const CLEAR: Flags = Flags(0x0020);
    /// `EV_RECEIPT`: report the result of this change as an entry with
    /// `ERROR` set and `data` = errno (0 on success) instead of waiting.
    pub const RECEIPT: Flags = Flags(0x0040);
    /// `EV_DISPATCH`: disable the knote after each delivery.
    pub const DISPATCH: Flags = Flags(0x0080);
    /// `EV_ERROR` (output): this entry reports a change's error in `data`.
    pub const ERROR: Flags = Flags(0x4000);
    /// `EV_EOF` (output): the source hit end-of-file; `fflags` may hold an
    /// error number.
    pub const EOF: Flags = Flags(0x8000);

    const NAMES: [(Flags, &'static str); 10] = [
        (Flags::ADD, "ADD"),
        (Flags::DELETE, "DELETE"),
        (Flags::ENABLE, "ENABLE"),
        (Flags::DISABLE, "DISABLE"),
        (Flags::ONESHOT, "ONESHOT"),
        (Flags::CLEAR, "CLEAR"),
        (Flags::RECEIPT, "RECEIPT"),
        (Flags::DISPATCH, "DISPATCH"),
        (Flags::ERROR, "ERROR"),
        (Flags::EOF, "EOF"),
    ];

    /// No flag set.
    #[inline]
    #[must_use]
    pub const fn empty() -> Flags {
        Flags(0)
    }

    /// The raw bits.
    #[inline]
    #[must_use]
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// A set from raw bits, keeping bits this version has no name for.
    #[inline]
    #[must_use]
    pub const fn from_bits_retain(bits: u16) -> Flags {
        Flags(bits)
    }

    /// Whether every bit of `other` is set.
    #[inline]
    #[must_use]
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set.
    #[inline]
    #[must_use]
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no bit is set.
    #[inline]
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of `self` and `other`.
    #[inline]
    #[must_use]
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// `self` without the bits of `other`.
    #[inline]
    #[must_use]
    pub const fn difference(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }

    /// Set or clear the bits of `other`.
    #[inline]
    pub fn set(&mut self, other: Flags, value: bool) {
        if value {
            self.0 |= other.0
        } else {
            self.0 &= !other.0
        }
    }

    /// Add the bits of `other`.
    #[inline]
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0
    }

    /// Clear the bits of `other`.
    #[inline]
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("Flags(empty)");
        }
        f.write_str("Flags(")?;
        let mut rest = self.0;
        let mut first = true;
        for (flag, name) in Flags::NAMES {
            if rest & flag.0 != 0 {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                rest &= !flag.0;
                first = false;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str(" | ")?;
            }
            write!(f, "{rest:#06x}")?;
        }
        f.write_str(")")
    }
}

impl BitOr for Flags {
    type Output = Flags;
    #[inline]
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    #[inline]
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0
    }
}

impl BitAnd for Flags {
    type Output = Flags;
    #[inline]
    fn bitand(self, rhs: Flags) -> Flags {
        Flags(self.0 & rhs.0)
    }
}

impl BitAndAssign for Flags {
    #[inline]
    fn bitand_assign(&mut self, rhs: Flags) {
        self.0 &= rhs.0
    }
}

impl Not for Flags {
    type Output = Flags;
    #[inline]
    fn not(self) -> Flags {
        Flags(!self.0)
    }
}

/// FreeBSD's `NOTE_*` values (filter-specific flags in [`Kevent::fflags`]),
/// without the prefix.
pub mod note {
    // EVFILT_USER
    /// USER: no change to the knote's flags.
    pub const FFNOP: u32 = 0x0000_0000;
    /// USER: AND the given flags into the knote's flags.
    pub const FFAND: u32 = 0x4000_0000;
    /// USER: OR the given flags into the knote's flags.
    pub const FFOR: u32 = 0x8000_0000;
    /// USER: copy the given flags into the knote's flags.
    pub const FFCOPY: u32 = 0xc000_0000;
    /// USER: mask of the control bits above.
    pub const FFCTRLMASK: u32 = 0xc000_0000;
    /// USER: mask of the user-defined flag bits.
    pub const FFLAGSMASK: u32 = 0x00ff_ffff;
    /// USER: trigger the event.
    pub const TRIGGER: u32 = 0x0100_0000;

    // EVFILT_READ / EVFILT_WRITE
    /// READ/WRITE: `data` of the change is the low-water mark.
    pub const LOWAT: u32 = 0x0001;
    /// READ on a regular file: fire unconditionally, as `poll(2)` does
    /// (FreeBSD's `NOTE_FILE_POLL`).
    pub const FILE_POLL: u32 = 0x0002;
    /// READ/WRITE (**kevent extension**, not in FreeBSD): do not compute
    /// `data`; a ready knote reports `data` = 1. FreeBSD's byte counts cost
    /// Linux one `ioctl` per event (about 0.5 µs on a VM); a server that
    /// reads until `EAGAIN` anyway can skip it. `EOF` is still reported.
    pub const NODATA: u32 = 0x0100_0000;
    /// READ/WRITE (**kevent extension**, a hint): the caller vouches that
    /// the fd is a socket that is not listening (a connected stream socket
    /// or a datagram socket), so its first event skips the classification
    /// of the fd (one `getsockopt` per new fd; a server's connections).
    /// kevent-net's `TcpStream` and `UdpSocket` set it. A wrong hint is
    /// not unsafe, but its `data` is then a socket's arithmetic (a pipe
    /// would report no write space); a regular file is still told apart.
    pub const SOCKET: u32 = 0x0200_0000;

    // EVFILT_VNODE
    /// VNODE: the file was unlinked (its link count dropped to zero).
    pub const DELETE: u32 = 0x0001;
    /// VNODE: the file's contents changed.
    pub const WRITE: u32 = 0x0002;
    /// VNODE: the file grew.
    pub const EXTEND: u32 = 0x0004;
    /// VNODE: the file's attributes changed.
    pub const ATTRIB: u32 = 0x0008;
    /// VNODE: the file's link count changed.
    pub const LINK: u32 = 0x0010;
    /// VNODE: the file was renamed.
    pub const RENAME: u32 = 0x0020;
    /// VNODE: access was revoked (the file system was unmounted).
    pub const REVOKE: u32 = 0x0040;

    // EVFILT_PROC
    /// PROC: the process exited; `data` is its wait status.
    pub const EXIT: u32 = 0x8000_0000;
    /// PROC: the process forked (not available on Linux: refused).
    pub const FORK: u32 = 0x4000_0000;
    /// PROC: the process called exec (not available on Linux: refused).
    pub const EXEC: u32 = 0x2000_0000;

    // EVFILT_TIMER
    /// TIMER: `data` is in seconds.
    pub const SECONDS: u32 = 0x0000_0001;
    /// TIMER: `data` is in milliseconds (the default).
    pub const MSECONDS: u32 = 0x0000_0002;
    /// TIMER: `data` is in microseconds.
    pub const USECONDS: u32 = 0x0000_0004;
    /// TIMER: `data` is in nanoseconds.
    pub const NSECONDS: u32 = 0x0000_0008;
    /// TIMER: `data` is an absolute time (since the Unix epoch), not a period.
    pub const ABSTIME: u32 = 0x0000_0010;
}

/// One change or one event: FreeBSD's `struct kevent`.
///
/// As a change it names a knote by `(ident, filter)` and says what to do
/// with it in `flags`; as an event it reports a knote that fired.
///
/// ```
/// use kevent_core::{Kevent, Filter, Flags};
/// const TRIGGER_ME: Kevent = Kevent::new(1, Filter::User, Flags::ADD, 0, 0, 7);
/// assert_eq!(TRIGGER_ME.udata, 7);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kevent {
    /// The identifier: a file descriptor, a signal number, a pid, a timer
    /// or user id, an AIO operation id.
    pub ident: u64,
    /// The filter.
    pub filter: Filter,
    /// Action flags (change) or status flags (event).
    pub flags: Flags,
    /// Filter-specific flags (`note::*`).
    pub fflags: u32,
    /// Filter-specific data.
    pub data: i64,
    /// Opaque user data, returned unchanged with every event.
    pub udata: u64,
}

impl Kevent {
    /// A change or event with every field given (FreeBSD's `EV_SET`).
    #[inline]
    #[must_use]
    pub const fn new(
        ident: u64,
        filter: Filter,
        flags: Flags,
        fflags: u32,
        data: i64,
        udata: u64,
    ) -> Kevent {
        Kevent {
            ident,
            filter,
            flags,
            fflags,
            data,
            udata,
        }
    }

    /// Whether this entry reports an error (`EV_ERROR`); the errno is `data`.
    #[inline]
    pub const fn is_error(&self) -> bool {
        self.flags.contains(Flags::ERROR)
    }

    /// Whether end-of-file was reported (`EV_EOF`).
    #[inline]
    pub const fn is_eof(&self) -> bool {
        self.flags.contains(Flags::EOF)
    }
}

impl Default for Kevent {
    fn default() -> Kevent {
        Kevent::new(0, Filter::User, Flags::empty(), 0, 0, 0)
    }
}
