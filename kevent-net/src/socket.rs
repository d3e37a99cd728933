//! Sockets that register themselves in a queue: [`TcpListener`],
//! [`TcpStream`], [`UdpSocket`].
//!
//! Each is a non-blocking std socket plus an optional [`Registration`]: up
//! to two knotes (`Filter::Read`, `Filter::Write`) in one queue, each with
//! its own mode, `udata` and low-water mark ([`KnoteOpts`]). The knotes are
//! the core's fd knotes, so the events carry FreeBSD's `data`:
//!
//! | socket | READ `data` | WRITE `data` |
//! |---|---|---|
//! | [`TcpStream`] | bytes readable | send space left |
//! | [`TcpListener`] | accept backlog length | — |
//! | [`UdpSocket`] | size of the next datagram | send space left |
//!
//! and `Flags::EOF` once the peer shut down (with the socket error, if
//! any, in `fflags`). Dropping a socket deletes its knotes before its fd
//! is closed, so no stale knote outlives it.
//!
//! ```
//! use kevent_core::{Filter, Kevent, Kqueue};
//! use kevent_net::{Interest, KnoteOpts, TcpListener, TcpStream};
//! use std::io::Write;
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let kq = Arc::new(Kqueue::new()?);
//! let mut l = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//! l.register(&kq, Interest::READ, KnoteOpts::level(1))?;
//! let mut c = std::net::TcpStream::connect(l.local_addr()?)?;
//! let mut out = [Kevent::default(); 4];
//! let n = kq.kevent(&[], &mut out, Some(Duration::from_secs(5)))?;
//! assert_eq!((n, out[0].udata, out[0].data), (1, 1, 1)); // one in the backlog
//! let (mut s, _) = l.accept()?;
//! s.register(&kq, Interest::READ, KnoteOpts::edge(2))?;
//! c.write_all(b"ping")?;
//! let n = kq.kevent(&[], &mut out, Some(Duration::from_secs(5)))?;
//! assert_eq!((n, out[0].udata, out[0].data), (1, 2, 4)); // four bytes readable
//! # Ok::<(), std::io::Error>(())
//! ```

use crate::sys::cvt;
use kevent_core::{note, Filter, Flags, Kevent, Kqueue};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{self, Shutdown, SocketAddr};
use std::ops::BitOr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Something that holds a [`Kqueue`]: the core queue itself, or a wrapper
/// such as the facade's `kevent::Kqueue`. A [`Registration`] keeps an
/// `Arc` of it so it can delete its knotes when the socket drops.
pub trait QueueRef: Send + Sync + 'static {
    /// The queue.
    fn queue(&self) -> &Kqueue;
}

impl QueueRef for Kqueue {
    #[inline]
    fn queue(&self) -> &Kqueue {
        self
    }
}

/// Which knotes of a socket: READ, WRITE or both.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Interest(u8);

impl Interest {
    /// A `Filter::Read` knote.
    pub const READ: Interest = Interest(1);
    /// A `Filter::Write` knote.
    pub const WRITE: Interest = Interest(2);
    /// Both knotes.
    pub const BOTH: Interest = Interest(3);

    /// Whether the READ knote is included.
    #[inline]
    #[must_use]
    pub const fn is_read(self) -> bool {
        self.0 & 1 != 0
    }

    /// Whether the WRITE knote is included.
    #[inline]
    #[must_use]
    pub const fn is_write(self) -> bool {
        self.0 & 2 != 0
    }

    /// The union of two interests.
    #[inline]
    #[must_use]
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }

    fn filters(self) -> impl Iterator<Item = Filter> {
        [(1u8, Filter::Read), (2u8, Filter::Write)]
            .into_iter()
            .filter(move |(b, _)| self.0 & b != 0)
            .map(|(_, f)| f)
    }
}

impl BitOr for Interest {
    type Output = Interest;
    #[inline]
    fn bitor(self, rhs: Interest) -> Interest {
        self.add(rhs)
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            1 => "READ",
            2 => "WRITE",
            3 => "READ | WRITE",
            _ => "NONE",
        })
    }
}

/// How one knote of a socket behaves: its `udata`, its mode flags, and an
/// optional low-water mark (`note::LOWAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnoteOpts {
    /// Returned unchanged with every event of the knote.
    pub udata: u64,
    /// Mode flags: empty (level), `CLEAR`, `ONESHOT`, `DISPATCH`, `DISABLE`.
    /// `ADD` is implied.
    pub flags: Flags,
    /// Fire only once at least this many bytes are readable (READ) or this
    /// much send space is free (WRITE). `None` = 1.
    pub lowat: Option<i64>,
    /// Extra `note` flags of the change, e.g. `note::NODATA`: the events
    /// carry `data` = 1 instead of a byte count, which saves an `ioctl`
    /// per event (for loops that read or write until `EAGAIN`).
    pub fflags: u32,
}

impl KnoteOpts {
    /// Level-triggered (the default mode): reported while the condition
    /// holds.
    #[must_use]
    pub const fn level(udata: u64) -> KnoteOpts {
        KnoteOpts {
            udata,
            flags: Flags::empty(),
            lowat: None,
            fflags: 0,
        }
    }

    /// Edge-triggered (`EV_CLEAR`): reported again only after new activity.
    #[must_use]
    pub const fn edge(udata: u64) -> KnoteOpts {
        KnoteOpts {
            udata,
            flags: Flags::CLEAR,
            lowat: None,
            fflags: 0,
        }
    }

    /// `EV_ONESHOT`: reported once, then deleted.
    #[must_use]
    pub const fn oneshot(udata: u64) -> KnoteOpts {
        KnoteOpts {
            udata,
            flags: Flags::ONESHOT,
            lowat: None,
            fflags: 0,
        }
    }

    /// `EV_DISPATCH`: disabled after each report until re-enabled.
    #[must_use]
    pub const fn dispatch(udata: u64) -> KnoteOpts {
        KnoteOpts {
            udata,
            flags: Flags::DISPATCH,
            lowat: None,
            fflags: 0,
        }
    }

    /// The same options with a low-water mark.
    #[must_use]
    pub const fn with_lowat(mut self, lowat: i64) -> KnoteOpts {
        self.lowat = Some(lowat);
        self
    }

    /// The same options with `note::NODATA`: events report `data` = 1 (and
    /// `EOF`) without counting bytes, one syscall fewer per event.
    #[must_use]
    pub const fn with_nodata(mut self) -> KnoteOpts {
        self.fflags |= note::NODATA;
        self
    }

    /// The `EV_ADD` change for `fd` and `filter` with these options.
    #[must_use]
    pub fn change(&self, fd: RawFd, filter: Filter) -> Kevent {
        let (fflags, data) = match self.lowat {
            Some(n) => (note::LOWAT | self.fflags, n),
            None => (self.fflags, 0),
        };
        Kevent::new(
            fd as u64,
            filter,
            Flags::ADD | self.flags,
            fflags,
            data,
            self.udata,
        )
    }
}

/// The knotes one socket has in one queue. Deletes them when dropped.
pub struct Registration {
    kq: Arc<dyn QueueRef>,
    fd: RawFd,
    /// Knotes added (bit 0 READ, bit 1 WRITE). A ONESHOT knote that fired
    /// is gone from the queue but may still be set here; deleting it then
    /// fails with `ENOENT`, which is ignored.
    dirs: u8,
    /// `note` hint bits added to every change: `note::SOCKET` for a
    /// stream or datagram socket (its first event then needs no
    /// classification of the fd), none for a listener.
    hint: u32,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("fd", &self.fd)
            .field("interest", &Interest(self.dirs))
            .finish_non_exhaustive()
    }
}

fn apply(kq: &Kqueue, changes: &[Kevent]) -> io::Result<()> {
    // One entry per change: each error is reported, none fails the call.
    let mut errs = [Kevent::default(); 2];
    let mut flagged = [Kevent::default(); 2];
    for (i, c) in changes.iter().enumerate() {
        flagged[i] = *c;
        flagged[i].flags.insert(Flags::RECEIPT);
    }
    let n = kq.kevent(&flagged[..changes.len()], &mut errs, None)?;
    for e in &errs[..n] {
        if e.data != 0 {
            return Err(io::Error::from_raw_os_error(e.data as i32));
        }
    }
    Ok(())
}

impl Registration {
    /// Add (or modify) the knotes of `interest` for `fd` in `kq`.
    fn new<Q: QueueRef>(
        kq: &Arc<Q>,
        fd: RawFd,
        interest: Interest,
        opts: KnoteOpts,
        hint: u32,
    ) -> io::Result<Registration> {
        let mut r = Registration {
            kq: kq.clone(),
            fd,
            dirs: 0,
            hint,
        };
        r.add(interest, opts)?;
        Ok(r)
    }

    fn same_queue<Q: QueueRef>(&self, kq: &Arc<Q>) -> bool {
        std::ptr::eq(self.kq.queue(), kq.queue())
    }

    fn add(&mut self, interest: Interest, opts: KnoteOpts) -> io::Result<()> {
        let mut ch = [Kevent::default(); 2];
        let mut n = 0;
        for f in interest.filters() {
            ch[n] = opts.change(self.fd, f);
            ch[n].fflags |= self.hint;
            n += 1;
        }
        apply(self.kq.queue(), &ch[..n])?;
        self.dirs |= interest.0;
        Ok(())
    }

    fn delete(&mut self, interest: Interest) -> io::Result<()> {
        let mut ch = [Kevent::default(); 2];
        let mut n = 0;
        for f in Interest(interest.0 & self.dirs).filters() {
            ch[n] = Kevent::new(self.fd as u64, f, Flags::DELETE, 0, 0, 0);
            n += 1;
        }
        self.dirs &= !interest.0;
        match apply(self.kq.queue(), &ch[..n]) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    /// The queue the knotes are in.
    pub fn queue(&self) -> &Kqueue {
        self.kq.queue()
    }

    /// The knotes currently added.
    pub fn interest(&self) -> Option<Interest> {
        (self.dirs != 0).then_some(Interest(self.dirs))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.dirs != 0 {
            let _ = self.delete(Interest::BOTH);
        }
    }
}

/// The registration methods every socket type shares.
macro_rules! registration_methods {
    () => {
        /// Add knotes for this socket to `kq` (`EV_ADD` of each filter in
        /// `interest`, with `opts`). Calling it again for the same queue
        /// adds the other filter or modifies an existing knote (its mode,
        /// `udata`, low-water mark), as `EV_ADD` does.
        ///
        /// # Errors
        /// `AlreadyExists` if the socket is registered in another queue;
        /// otherwise the errno of the failed change.
        pub fn register<Q: QueueRef>(
            &mut self,
            kq: &Arc<Q>,
            interest: Interest,
            opts: KnoteOpts,
        ) -> io::Result<()> {
            match &mut self.reg {
                Some(r) if r.same_queue(kq) => r.add(interest, opts),
                Some(_) => Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "socket is registered in another queue",
                )),
                None => {
                    self.reg = Some(Registration::new(
                        kq,
                        self.as_raw_fd(),
                        interest,
                        opts,
                        Self::KIND_HINT,
                    )?);
                    Ok(())
                }
            }
        }

        /// Delete the knotes of `interest` (a missing one is not an error).
        /// With no knote left the socket may be registered elsewhere.
        ///
        /// # Errors
        /// The errno of a failed change other than `ENOENT`.
        pub fn deregister(&mut self, interest: Interest) -> io::Result<()> {
            let Some(r) = &mut self.reg else {
                return Ok(());
            };
            let res = r.delete(interest);
            if r.dirs == 0 {
                self.reg = None;
            }
            res
        }

        /// The registration, if the socket has knotes in a queue.
        pub fn registration(&self) -> Option<&Registration> {
            self.reg.as_ref()
        }
    };
}

fn socket_for(addr: &SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(*addr),
        ty.nonblocking().cloexec(),
        Some(proto),
    )?;
    Ok(s)
}

// ---------------------------------------------------------------- listener

/// A non-blocking TCP listening socket. Its READ knote's `data` is the
/// accept backlog length (connections waiting for `accept`).
pub struct TcpListener {
    // Declared first: dropped (knotes deleted) before the fd closes.
    reg: Option<Registration>,
    inner: net::TcpListener,
}

impl TcpListener {
    /// No hint: the fd storage classifies a listener itself.
    const KIND_HINT: u32 = 0;

    /// Bind to `addr` with `SO_REUSEADDR` and a backlog of 1024.
    ///
    /// # Errors
    /// The OS error from `socket`, `bind` or `listen`.
    pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind_with(addr, false, 1024)
    }

    /// Bind to `addr` with `SO_REUSEADDR`, `SO_REUSEPORT` if `reuse_port`
    /// (several listeners on one port, one per thread, the kernel spreading
    /// connections), and the given backlog.
    ///
    /// # Errors
    /// The OS error from `socket`, `setsockopt`, `bind` or `listen`.
    pub fn bind_with(addr: SocketAddr, reuse_port: bool, backlog: i32) -> io::Result<TcpListener> {
        let s = socket_for(&addr, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        s.bind(&SockAddr::from(addr))?;
        s.listen(backlog)?;
        Ok(TcpListener {
            reg: None,
            inner: s.into(),
        })
    }

    /// Wrap a std listener, switching it to non-blocking mode.
    ///
    /// # Errors
    /// The OS error from `fcntl`.
    pub fn from_std(l: net::TcpListener) -> io::Result<TcpListener> {
        l.set_nonblocking(true)?;
        Ok(TcpListener {
            reg: None,
            inner: l,
        })
    }

    /// Accept one connection (`accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`).
    ///
    /// # Errors
    /// `WouldBlock` when the backlog is empty; `EMFILE`/`ENFILE` when out of
    /// descriptors (the connection stays in the backlog); other OS errors.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let lfd = self.inner.as_raw_fd();
        // SAFETY: `try_init` hands a zeroed storage and its length, valid for
        // writes; accept4 writes at most `*len` bytes into it.
        let (fd, addr) = unsafe {
            SockAddr::try_init(|storage, len| {
                let fd = libc::accept4(
                    lfd,
                    storage.cast(),
                    len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                );
                if fd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(fd)
                }
            })
        }?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = addr
            .as_socket()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok((TcpStream::from_owned(owned), addr))
    }

    /// The local address.
    ///
    /// # Errors
    /// The OS error from `getsockname`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The pending socket error (`SO_ERROR`), cleared by reading it.
    ///
    /// # Errors
    /// The OS error from `getsockopt`.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// Set `TCP_NODELAY` on the listener: Linux copies it to every accepted
    /// connection, which saves a `setsockopt` per connection.
    ///
    /// # Errors
    /// The OS error from `setsockopt`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.inner).set_tcp_nodelay(on)
    }

    /// Set `TCP_DEFER_ACCEPT`: a connection becomes acceptable (and the
    /// READ knote fires) only once its first data has arrived, or `secs`
    /// after the handshake (Linux rounds up to a SYN-ACK retransmission;
    /// the connection is then accepted without data). For servers whose
    /// clients speak first, like HTTP: one wake-up per connection fewer
    /// when the request trails the handshake. `0` turns it off.
    ///
    /// # Errors
    /// The OS error from `setsockopt`.
    pub fn set_defer_accept(&self, secs: u32) -> io::Result<()> {
        let v = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: `v` is a valid c_int for reads during the call and the
        // length passed is its size.
        cvt(unsafe {
            libc::setsockopt(
                self.inner.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    registration_methods!();
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("fd", &self.inner.as_raw_fd())
            .field("reg", &self.reg)
            .finish()
    }
}

// ------------------------------------------------------------------ stream

/// A non-blocking TCP connection. READ `data` = bytes readable, WRITE
/// `data` = send space left; `EOF` once the peer shut down (or reset: the
/// error is in `fflags`).
pub struct TcpStream {
    reg: Option<Registration>,
    inner: net::TcpStream,
}

impl TcpStream {
    /// A connected stream socket (`note::SOCKET`).
    const KIND_HINT: u32 = note::SOCKET;

    fn from_owned(fd: OwnedFd) -> TcpStream {
        TcpStream {
            reg: None,
            inner: net::TcpStream::from(fd),
        }
    }

    /// Start connecting to `addr` without blocking. The connection is
    /// established when the WRITE knote fires; check
    /// [`TcpStream::take_error`] then (or read the error from an `EOF`
    /// event's `fflags`).
    ///
    /// # Errors
    /// The OS error from `socket` or `connect` other than `EINPROGRESS`
    /// (e.g. `EADDRNOTAVAIL` when out of ephemeral ports, `EMFILE`).
    pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let s = socket_for(&addr, Type::STREAM, Protocol::TCP)?;
        match s.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream {
            reg: None,
            inner: s.into(),
        })
    }

    /// Wrap a std stream, switching it to non-blocking mode.
    ///
    /// # Errors
    /// The OS error from `fcntl`.
    pub fn from_std(s: net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        Ok(TcpStream {
            reg: None,
            inner: s,
        })
    }

    /// The peer's address (`ENOTCONN` while connecting).
    ///
    /// # Errors
    /// The OS error from `getpeername`.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// The local address.
    ///
    /// # Errors
    /// The OS error from `getsockname`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Set `TCP_NODELAY`.
    ///
    /// # Errors
    /// The OS error from `setsockopt`.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.inner.set_nodelay(on)
    }

    /// Set `SO_LINGER` to zero when `abort` is true: the next close sends a
    /// reset and leaves no `TIME_WAIT` (for load generators).
    ///
    /// # Errors
    /// The OS error from `setsockopt`.
    pub fn set_linger_abort(&self, abort: bool) -> io::Result<()> {
        socket2::SockRef::from(&self.inner).set_linger(abort.then_some(std::time::Duration::ZERO))
    }

    /// Shut down one or both directions.
    ///
    /// # Errors
    /// The OS error from `shutdown`.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// The pending socket error (`SO_ERROR`), cleared by reading it.
    ///
    /// # Errors
    /// The OS error from `getsockopt`.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// Close the socket without deleting its knotes first — what `close(2)`
    /// does on FreeBSD, where closing a descriptor drops its knotes. Linux
    /// drops a closed fd from epoll by itself, and the core's fd storage
    /// discards the stale knotes when the number is next registered, or
    /// before reporting them (see its "Close and reuse" rule): the number's
    /// next `EV_ADD` registers the new socket with the one `epoll_ctl` it
    /// costs anyway. Saves the `EV_DELETE` (an `epoll_ctl`) per connection.
    ///
    /// Only for a socket no other descriptor refers to (no `dup`, no
    /// forked child holding it): the kernel keeps a registration while any
    /// descriptor of the file is open. Use the ordinary drop otherwise.
    pub fn close_unregistered(mut self) {
        if let Some(mut r) = self.reg.take() {
            r.dirs = 0;
        }
    }

    /// Give up the registration (its knotes are deleted) and return the
    /// std stream.
    pub fn into_std(mut self) -> net::TcpStream {
        self.reg = None;
        let fd = self.inner.as_raw_fd();
        std::mem::forget(self);
        // SAFETY: `self` was forgotten after its registration was dropped,
        // so the fd it owned is now owned by the returned stream only.
        unsafe { net::TcpStream::from_raw_fd(fd) }
    }

    registration_methods!();
}

impl Read for TcpStream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.inner).read(buf)
    }
    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.inner).read_vectored(bufs)
    }
}

impl Write for TcpStream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.inner).write(buf)
    }
    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.inner).write_vectored(bufs)
    }
    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for &TcpStream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.inner).read(buf)
    }
}

impl Write for &TcpStream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.inner).write(buf)
    }
    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.inner).write_vectored(bufs)
    }
    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.inner.as_raw_fd())
            .field("reg", &self.reg)
            .finish()
    }
}

// --------------------------------------------------------------------- udp

/// A non-blocking UDP socket. READ `data` = size of the next datagram,
/// WRITE `data` = send space left.
pub struct UdpSocket {
    reg: Option<Registration>,
    inner: net::UdpSocket,
}

impl UdpSocket {
    /// A datagram socket (`note::SOCKET`).
    const KIND_HINT: u32 = note::SOCKET;

    /// Bind to `addr`.
    ///
    /// # Errors
    /// The OS error from `socket` or `bind`.
    pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
        let s = socket_for(&addr, Type::DGRAM, Protocol::UDP)?;
        s.bind(&SockAddr::from(addr))?;
        Ok(UdpSocket {
            reg: None,
            inner: s.into(),
        })
    }

    /// Wrap a std socket, switching it to non-blocking mode.
    ///
    /// # Errors
    /// The OS error from `fcntl`.
    pub fn from_std(s: net::UdpSocket) -> io::Result<UdpSocket> {
        s.set_nonblocking(true)?;
        Ok(UdpSocket {
            reg: None,
            inner: s,
        })
    }

    /// Set the default peer for [`UdpSocket::send`] / [`UdpSocket::recv`].
    ///
    /// # Errors
    /// The OS error from `connect`.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.inner.connect(addr)
    }

    /// Send one datagram to `addr`.
    ///
    /// # Errors
    /// `WouldBlock` when the send buffer is full; other OS errors.
    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.inner.send_to(buf, addr)
    }

    /// Receive one datagram and its sender.
    ///
    /// # Errors
    /// `WouldBlock` when none is queued; other OS errors.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner.recv_from(buf)
    }

    /// Send one datagram to the connected peer.
    ///
    /// # Errors
    /// As [`UdpSocket::send_to`]; `ENOTCONN` if not connected.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.send(buf)
    }

    /// Receive one datagram from the connected peer.
    ///
    /// # Errors
    /// As [`UdpSocket::recv_from`].
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.recv(buf)
    }

    /// The local address.
    ///
    /// # Errors
    /// The OS error from `getsockname`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The pending socket error (`SO_ERROR`), cleared by reading it.
    ///
    /// # Errors
    /// The OS error from `getsockopt`.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    registration_methods!();
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("fd", &self.inner.as_raw_fd())
            .field("reg", &self.reg)
            .finish()
    }
}

macro_rules! fd_impls {
    ($($t:ty),*) => {$(
        impl AsRawFd for $t {
            #[inline]
            fn as_raw_fd(&self) -> RawFd {
                self.inner.as_raw_fd()
            }
        }
        impl AsFd for $t {
            #[inline]
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.inner.as_fd()
            }
        }
        impl IntoRawFd for $t {
            /// Give up the registration (its knotes are deleted) and the fd.
            fn into_raw_fd(mut self) -> RawFd {
                self.reg = None;
                let fd = self.inner.as_raw_fd();
                std::mem::forget(self);
                fd
            }
        }
    )*};
}
fd_impls!(TcpListener, TcpStream, UdpSocket);
