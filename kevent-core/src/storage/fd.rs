//! READ and WRITE on file descriptors.
//!
//! One backend registration per fd (edge-triggered, both directions), with
//! up to two knotes on it (READ, WRITE), each with its own mode. The
//! kernel's edge activates the knotes; at collection the knote is
//! re-checked and its `data` computed:
//!
//! | kind | READ `data` | WRITE `data` |
//! |---|---|---|
//! | pipe / FIFO | bytes in the pipe (`FIONREAD`) | pipe size − bytes in it |
//! | stream or datagram socket | bytes readable (`FIONREAD`; for UDP Linux reports the next datagram's size) | send buffer − queued (`SIOCOUTQ`) |
//! | listening TCP socket | accept backlog length (`TCP_INFO.tcpi_unacked`) | — |
//! | listening Unix socket | accept backlog length (`sock_diag` `UNIX_DIAG_RQLEN`; 1 where `sock_diag` is unavailable) | — |
//! | other listening socket (SCTP, vsock, ...) | 1 when a connection waits (Linux has no portable count) | — |
//! | tty / pty / char device | `FIONREAD` | 1 when writable |
//! | regular file, directory | bytes from offset to EOF (may be negative) | 0, always writable |
//! | eventfd, timerfd, a queue, other | 1 when readable | 1 when writable |
//!
//! With `note::NODATA` (a kevent extension) READ and WRITE report
//! `data` = 1 and skip the per-event `ioctl`.
//!
//! **Regular files follow FreeBSD, not `poll(2)`/epoll.** FreeBSD's
//! `filt_vfsread` (`sys/kern/vfs_subr.c`) sets `data` = file size − offset
//! and fires only while that is not 0 (or with `NOTE_FILE_POLL`): a file
//! read to its end is *not* readable, and one whose offset lies beyond its
//! end reports a negative `data`. (The issue text's "a regular file is
//! always readable" is `poll(2)`'s rule, and epoll refuses regular files
//! with `EPERM` altogether.) `note::FILE_POLL` gives the `poll(2)` rule:
//! always readable, `data` still the bytes to EOF. An inotify watch on the
//! file brings the knote back when the file is written, as FreeBSD wakes
//! the filter on write (`tail -f`).
//!
//! **The socket error.** `EOF` on a socket carries its pending error
//! (`ECONNRESET`, ...) in `fflags`, as FreeBSD reports `so_error`. Linux
//! hands the error out only through `getsockopt(SO_ERROR)`, which clears
//! it: the storage reads it once, when `EPOLLERR` was seen, and keeps it,
//! so every later `EOF` delivery of the fd's knotes (a level knote
//! reported again and again) carries the same errno. The library thus
//! consumes the error: after an `EOF` with an error a `read()` returns 0
//! rather than failing with it, and the program's own `SO_ERROR` reads 0.
//! Take the errno from `fflags`.
//!
//! **Close and reuse.** Linux drops a closed fd from epoll silently, and
//! that is what tells a stale entry: a change for an fd that has an entry
//! asks epoll whether the fd still names the registered file (an
//! `EPOLL_CTL_ADD` answering `EEXIST` changes nothing; a `DELETE` is its
//! own `EPOLL_CTL_DEL`/`MOD`, whose `ENOENT`/`EBADF` say the same), and a
//! knote re-checked without a fresh kernel event asks the same before
//! reporting. A stale entry's knotes are dropped first (so `ADD` starts
//! clean, a file reopened at the same number included), and a reused
//! number never yields a stale event. An `ADD` that finds its entry stale
//! keeps the probe's registration (made for the direction asked, under
//! the new entry's generation) as the new entry's watch: a server's
//! connection landing on the number of one closed without `EV_DELETE`
//! costs one `epoll_ctl`, as a fresh number does. No `fstat` on these
//! paths (an `epoll_ctl` costs ~210 ns of CPU here, an `fstat` ~370 ns): a
//! new entry is registered at once, and its kind is learnt at its first
//! event — one `getsockopt(SO_ACCEPTCONN)` for a connected socket (none
//! with `note::SOCKET`, the caller's word for it), an `fstat` for
//! anything else (or at once when epoll refuses the fd: a
//! regular file or directory, which has no registration and keeps its
//! `(st_dev, st_ino)` for the same checks).
//!
//! **Level re-check.** A level knote stays on the ready list after its
//! delivery and is re-checked before the next one: the condition's
//! syscall (`FIONREAD`; `poll` with `NODATA`), then, only if there is
//! something to report, the identity probe above (a loop that consumed
//! the data pays one syscall to find the condition gone, not two); when
//! new activity has arrived meanwhile, the call's peek of the backend
//! finds the knote fresh and the probe is skipped. A regular file's one
//! `fstat` serves both its identity and its size. Two kernel
//! re-checks were measured and not kept:
//! - re-arming the registration (`EPOLL_CTL_MOD`, which re-polls the file
//!   and reports it again if still ready) at the next call, instead of
//!   keeping the knote queued: fewer syscalls in a loop that consumes and
//!   waits (3 per message instead of 5), but an `EPOLL_CTL_MOD` costs far
//!   more than the probe, and on the queue bench `level_redelivery` went
//!   from 1.12x to 1.71x raw level-triggered epoll + `FIONREAD` (CPU), and
//!   `pingpong_level` from 1.11x to 1.38x;
//! - a level-triggered registration, which would re-check for free in
//!   every wait: a registration outlives the fd number while a dup or a
//!   forked child keeps the file open, and a level one would then report
//!   on every wait for good (no fd names it any more, so it cannot be
//!   deleted): a user closing such an fd without `EV_DELETE` — normal
//!   under kqueue — would turn every blocking `kevent()` into a busy loop.
//!
//! On io_uring the backend keeps a watch per knote (per direction) in
//! epoll instances the ring waits on, not a `PollAdd`: a poll request pins
//! the file, so a `close()` without `EV_DELETE` would not release a socket
//! (no FIN) while epoll drops the registration on the last close, as
//! FreeBSD drops knotes (see `sys/uring.rs`).
//!
//! **WRITE low-water marks.** `note::LOWAT` is applied at each check; a
//! WRITE knote found below its mark waits for the kernel's next write-space
//! wake-up. Linux wakes a pipe's writers only when the pipe was full, and a
//! socket's when a third of its send buffer is free, so a mark is noticed
//! at those points rather than the moment space crosses it (FreeBSD
//! re-evaluates on every read).
//!
//! **Duplicated fds.** The kernel keeps a registration while *any* fd
//! refers to the file (epoll(7), Q6). If fd N is closed while a dup (or a
//! forked child) keeps the file open, a fresh kernel event may still name
//! N: a closed N reports nothing (the `data` syscall fails with `EBADF`),
//! but if N was already reused by another file, that file's byte count is
//! reported until N is re-added or deleted. Delete knotes before closing a
//! duplicated fd, as with raw epoll. (With `note::NODATA` no syscall is
//! made, so even a closed N may report.)
//!
//! **Epoll caveat.** Activity in one direction re-reports the other on the
//! same fd (epoll reports the whole readiness mask with each edge). A
//! `CLEAR` knote whose condition still holds may then be delivered again
//! without new activity in its own direction. The io_uring backend watches
//! each knote separately and has no such cross-talk.

use super::{Context, Errno, Storage};
use crate::event::{note, Filter, Flags, Kevent};
use crate::knote::KnoteId;
use crate::sys::{self, Interest, Readiness};
use std::os::fd::RawFd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Registered with the backend, not classified yet (the first event
    /// classifies it: [`classify_registered`]).
    Unknown,
    Pipe,
    Socket,
    TcpListener,
    UnixListener,
    Listener,
    Tty,
    Regular,
    Other,
}

#[derive(Debug)]
struct FdEntry {
    gen: u32,
    dev: u64,
    ino: u64,
    kind: Kind,
    read: Option<KnoteId>,
    write: Option<KnoteId>,
    /// Directions registered with the backend (bit 0 read, bit 1 write).
    registered: u8,
    eof_rd: bool,
    eof_wr: bool,
    /// `EPOLLERR` seen: the socket error is still to be fetched.
    err: bool,
    /// The socket error fetched (`SO_ERROR`, which clears it in the
    /// kernel), reported in `fflags` with every `EOF` delivery.
    so_error: i32,
    /// Cached send buffer or pipe size (0 = not fetched yet).
    cap: i32,
    fionread_ok: bool,
}

/// The READ/WRITE storage.
#[derive(Debug, Default)]
pub(crate) struct FdStorage {
    fds: Vec<Option<FdEntry>>,
    next_gen: u32,
    /// `fstat` of the fd named by the change being resolved.
    last: Option<(RawFd, u64, u64, u32)>,
    /// `(fd, gen, direction bit)`: the change being resolved (an `EV_ADD`)
    /// found the fd's entry stale, and the probe's registration was kept
    /// as the watch of the new entry [`Storage::attach`] makes next.
    adopted: Option<(RawFd, u32, u8)>,
    /// Regular files have no readiness edges; an inotify watch per file
    /// re-activates their READ knotes when the file is written (FreeBSD
    /// wakes `filt_vfsread` on write: the `tail -f` case).
    files: FileWatches,
    /// `sock_diag` for the accept backlog of listening Unix sockets.
    diag: super::unix_diag::UnixDiag,
}

/// `last`'s mode when the change did not `fstat` the fd.
const MODE_UNKNOWN: u32 = u32::MAX;

/// Payload tag of the fd storage's own inotify fd.
const TAG_FILES: u8 = 3;

#[derive(Debug, Default)]
struct FileWatches {
    ifd: Option<std::os::fd::OwnedFd>,
    /// watch descriptor → READ knotes on that file.
    knotes: std::collections::HashMap<i32, Vec<KnoteId>>,
    /// knote key → watch descriptor.
    wd_of: std::collections::HashMap<u32, i32>,
    buf: Vec<u8>,
}

impl FileWatches {
    fn add(&mut self, cx: &mut Context<'_>, fd: RawFd, id: KnoteId) -> Result<(), Errno> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EINVAL);
        if self.ifd.is_none() {
            let ifd = sys::syscall!(inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))
                .map_err(errno)?;
            // SAFETY: a new fd returned by inotify_init1, owned by no one else.
            let ifd = unsafe { OwnedFd::from_raw_fd(ifd) };
            cx.watch_fd(ifd.as_raw_fd(), Interest::Read, payload_of(0, TAG_FILES, 0))
                .map_err(errno)?;
            self.ifd = Some(ifd);
            self.buf = vec![0u8; 4096];
        }
        let ifd = self.ifd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let path =
            std::ffi::CString::new(format!("/proc/self/fd/{fd}")).map_err(|_| libc::EINVAL)?;
        let wd = sys::syscall!(inotify_add_watch(
            ifd,
            path.as_ptr(),
            libc::IN_MODIFY | libc::IN_ATTRIB | libc::IN_CLOSE_WRITE
        ))
        .map_err(errno)?;
        self.knotes.entry(wd).or_default().push(id);
        self.wd_of.insert(id.key, wd);
        Ok(())
    }

    fn remove(&mut self, id: KnoteId) {
        use std::os::fd::AsRawFd;
        if self.wd_of.is_empty() {
            return;
        }
        let Some(wd) = self.wd_of.remove(&id.key) else {
            return;
        };
        if let Some(list) = self.knotes.get_mut(&wd) {
            list.retain(|k| *k != id);
            if list.is_empty() {
                self.knotes.remove(&wd);
                if let Some(ifd) = &self.ifd {
                    // EINVAL if the kernel dropped the watch already.
                    let _ = sys::syscall!(inotify_rm_watch(ifd.as_raw_fd(), wd));
                }
            }
        }
    }

    fn drain(&mut self, cx: &mut Context<'_>) {
        use std::os::fd::AsRawFd;
        let Some(ifd) = self.ifd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        let hdr = std::mem::size_of::<libc::inotify_event>();
        while let Ok(n) = sys::syscall!(read(ifd, self.buf.as_mut_ptr().cast(), self.buf.len())) {
            let n = n as usize;
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off + hdr <= n {
                // SAFETY: the kernel wrote whole inotify_event records;
                // read_unaligned copes with the byte buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(self.buf.as_ptr().add(off).cast()) };
                off += hdr + ev.len as usize;
                if let Some(list) = self.knotes.get(&ev.wd) {
                    for &id in list {
                        cx.activate(id);
                    }
                }
            }
        }
    }
}

/// Payload layout: `[gen: 23 | tag: 2 | fd: 31]`; the tag says which
/// knote a per-knote watch serves (1 READ, 2 WRITE; 0 both, per fd).
const FD_MASK: u64 = (1 << 31) - 1;
const TAG_SHIFT: u32 = 31;
const GEN_SHIFT: u32 = 33;
const GEN_MASK: u32 = (1 << 23) - 1;

fn payload_of(gen: u32, tag: u8, fd: RawFd) -> u64 {
    (gen as u64) << GEN_SHIFT | (tag as u64) << TAG_SHIFT | (fd as u64 & FD_MASK)
}

fn fd_of(ident: u64) -> Result<RawFd, Errno> {
    if ident > i32::MAX as u64 {
        Err(libc::EBADF)
    } else {
        Ok(ident as RawFd)
    }
}

fn poll_one(fd: RawFd) -> Readiness {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP,
        revents: 0,
    };
    match sys::syscall!(poll(&mut p, 1, 0)) {
        Ok(_) if p.revents & libc::POLLNVAL == 0 => Readiness::from_poll(p.revents),
        _ => Readiness(0),
    }
}

fn classify(fd: RawFd, mode: u32) -> Kind {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => Kind::Pipe,
        libc::S_IFREG | libc::S_IFDIR => Kind::Regular,
        libc::S_IFCHR => Kind::Tty,
        libc::S_IFSOCK => {
            if sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0 {
                classify_listener(fd)
            } else {
                Kind::Socket
            }
        }
        _ => Kind::Other,
    }
}

/// Which listener a listening socket is.
fn classify_listener(fd: RawFd) -> Kind {
    let proto = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    if proto == libc::IPPROTO_TCP {
        return Kind::TcpListener;
    }
    let domain = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(0);
    if domain == libc::AF_UNIX {
        Kind::UnixListener
    } else {
        Kind::Listener
    }
}

/// The kind (and, where it is needed, `(st_dev, st_ino)`) of an fd epoll
/// accepted, at its first event, in as few syscalls as the kind allows.
/// `SO_ACCEPTCONN` first: a connected socket — most registrations of a
/// server — takes that one `getsockopt` (no `fstat`); a listener adds an
/// `fstat` (its inode names it for `sock_diag`) and `SO_PROTOCOL` (and
/// `SO_DOMAIN` if not TCP); anything else fails with `ENOTSOCK` and is
/// classified by one `fstat`. `None`: the fd is closed.
fn classify_registered(fd: RawFd) -> Option<(Kind, u64, u64)> {
    match sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) {
        Ok(0) => Some((Kind::Socket, 0, 0)),
        Ok(_) => {
            let st = sys::fstat(fd).ok()?;
            Some((classify_listener(fd), st.st_dev, st.st_ino))
        }
        Err(_) => {
            let st = sys::fstat(fd).ok()?;
            Some((classify(fd, st.st_mode), st.st_dev, st.st_ino))
        }
    }
}

/// Current accept backlog of a listening TCP socket.
fn listen_backlog(fd: RawFd) -> Option<i64> {
    // SAFETY: all-zero is a valid `tcp_info`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    sys::syscall!(getsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        (&mut info as *mut libc::tcp_info).cast(),
        &mut len
    ))
    .ok()?;
    // For a socket in LISTEN, Linux reports the accept queue length in
    // tcpi_unacked (and its limit in tcpi_sacked).
    Some(info.tcpi_unacked as i64)
}

impl FdStorage {
    fn entry(&mut self, fd: RawFd) -> Option<&mut FdEntry> {
        self.fds.get_mut(fd as usize).and_then(|e| e.as_mut())
    }

    /// `DELETE` of a registered knote without an `fstat`: take its watch
    /// down (or narrow the fd's watch to the other knote's direction) now,
    /// and let the kernel's answer say whether the number still names the
    /// file registered: `ENOENT`/`EBADF` mean it was closed (FreeBSD
    /// dropped the knotes then), so the entry goes and the change fails
    /// as FreeBSD's would. `None`: not this case (no entry, no such
    /// knote, a regular file), resolve as usual.
    fn delete_checked(
        &mut self,
        cx: &mut Context<'_>,
        fd: RawFd,
        is_read: bool,
    ) -> Option<Result<(), Errno>> {
        let per_knote = cx.per_knote_watches();
        let e = self.entry(fd)?;
        let (mine, other, bit, dir) = if is_read {
            (e.read, e.write, 1, Interest::Read)
        } else {
            (e.write, e.read, 2, Interest::Write)
        };
        if mine.is_none() || e.kind == Kind::Regular {
            return None;
        }
        let (res, left) = if per_knote {
            if e.registered & bit == 0 {
                return None;
            }
            let r = cx.unwatch_checked(fd, dir, None, 0);
            (r, e.registered & !bit)
        } else {
            let left = if other.is_some() { 3 & !bit } else { 0 };
            if e.registered == 0 {
                return None;
            }
            let keep = match left {
                0 => None,
                1 => Some(Interest::Read),
                _ => Some(Interest::Write),
            };
            let r = cx.unwatch_checked(fd, dir, keep, payload_of(e.gen, 0, fd));
            (r, left)
        };
        match res {
            Ok(()) => {
                e.registered = left;
                Some(Ok(()))
            }
            Err(err) => {
                let errno = err.raw_os_error().unwrap_or(libc::EINVAL);
                if matches!(errno, libc::ENOENT | libc::EBADF) {
                    // The file behind the number is gone: so are its knotes.
                    self.drop_entry(cx, fd);
                }
                Some(Err(errno))
            }
        }
    }

    /// Whether `fd` still names the file the entry registered, asked of
    /// epoll (an `EPOLL_CTL_ADD` that finds the registration fails with
    /// `EEXIST` and changes nothing; epoll forgets a registration when its
    /// file is closed): one syscall, as the `fstat` it replaces, and right
    /// also for a file reopened at the same number. `Ok(false)`: stale
    /// (the probe's own registration is undone); `Err(EBADF)`: closed.
    ///
    /// `adopt`: an `EV_ADD` of the READ (`Some(true)`) or WRITE knote is
    /// being resolved. The probe then asks for that direction under the
    /// next entry's generation, and if the entry is stale its registration
    /// is kept as the watch of the entry [`Storage::attach`] makes next
    /// ([`FdStorage::adopted`]): a number reused after a close without
    /// `EV_DELETE` (a server's connections) costs one `epoll_ctl`, not
    /// three (probe, its undo, the new registration). (With per-knote
    /// watches a probe must ask an epoll instance that holds one of the
    /// entry's watches: only a direction the entry has is adopted.)
    fn same_file(
        &mut self,
        cx: &mut Context<'_>,
        fd: RawFd,
        adopt: Option<bool>,
    ) -> Result<bool, Errno> {
        let per_knote = cx.per_knote_watches();
        let next_gen = self.next_gen.wrapping_add(1) & GEN_MASK;
        let Some(e) = self.entry(fd) else {
            return Ok(false);
        };
        if e.registered == 0 {
            return Ok(false);
        }
        let adopt = adopt
            .map(|is_read| if is_read { 1u8 } else { 2 })
            .filter(|&bit| !per_knote || e.registered & bit != 0);
        let (interest, tag, gen) = match (adopt, per_knote, e.registered) {
            (Some(1), p, _) => (Interest::Read, if p { 1 } else { 0 }, next_gen),
            (Some(_), p, _) => (Interest::Write, if p { 2 } else { 0 }, next_gen),
            (None, true, r) if r & 1 != 0 => (Interest::Read, 1, e.gen),
            (None, true, _) => (Interest::Write, 2, e.gen),
            (None, false, 1) => (Interest::Read, 0, e.gen),
            (None, false, 2) => (Interest::Write, 0, e.gen),
            (None, false, _) => (Interest::Both, 0, e.gen),
        };
        match cx.probe_watch(fd, interest, payload_of(gen, tag, fd), adopt.is_some()) {
            Ok(true) => Ok(true),
            Ok(false) => {
                if let Some(bit) = adopt {
                    self.next_gen = gen;
                    self.adopted = Some((fd, gen, bit));
                }
                Ok(false)
            }
            Err(err) => Err(match err.raw_os_error() {
                // Now a file epoll cannot watch: not the one registered.
                Some(libc::EPERM) => return Ok(false),
                Some(errno) => errno,
                None => libc::EINVAL,
            }),
        }
    }

    /// [`Storage::attach`] for a regular file or directory: no
    /// registration; a READ knote gets the file's inotify watch.
    fn attach_file(
        &mut self,
        cx: &mut Context<'_>,
        fd: RawFd,
        id: KnoteId,
        is_read: bool,
    ) -> Result<(), Errno> {
        if is_read {
            if let Err(err) = self.files.add(cx, fd, id) {
                if let Some(e) = self.entry(fd) {
                    e.read = None;
                    if e.write.is_none() {
                        self.fds[fd as usize] = None;
                    }
                }
                return Err(err);
            }
        }
        cx.activate(id);
        Ok(())
    }

    /// Drop an entry's knotes without callbacks (the file behind it is gone).
    fn drop_entry(&mut self, cx: &mut Context<'_>, fd: RawFd) {
        if let Some(e) = self.fds.get_mut(fd as usize).and_then(|e| e.take()) {
            for id in [e.read, e.write].into_iter().flatten() {
                self.files.remove(id);
                cx.drop_knote(id);
            }
        }
    }
}

impl Storage for FdStorage {
    fn filters(&self) -> &'static [Filter] {
        &[Filter::Read, Filter::Write]
    }

    fn resolve(&mut self, cx: &mut Context<'_>, ch: &Kevent) -> Result<(), Errno> {
        let fd = fd_of(ch.ident)?;
        self.last = None;
        self.adopted = None;
        if ch.flags.contains(Flags::DELETE) && !ch.flags.contains(Flags::ADD) {
            if let Some(r) = self.delete_checked(cx, fd, ch.filter == Filter::Read) {
                return r;
            }
        }
        match self.entry(fd).map(|e| e.kind) {
            Some(Kind::Regular) => {
                // No registration to ask: compare the file's identity.
                let st = match sys::fstat(fd) {
                    Ok(st) => st,
                    Err(_) => {
                        // Closed: whatever we had for this number is stale.
                        self.drop_entry(cx, fd);
                        return Err(libc::EBADF);
                    }
                };
                if self
                    .entry(fd)
                    .is_some_and(|e| e.dev != st.st_dev || e.ino != st.st_ino)
                {
                    self.drop_entry(cx, fd);
                }
                self.last = Some((fd, st.st_dev, st.st_ino, st.st_mode));
                return Ok(());
            }
            Some(_) => match self.same_file(
                cx,
                fd,
                ch.flags
                    .contains(Flags::ADD)
                    .then_some(ch.filter == Filter::Read),
            ) {
                Ok(true) => {
                    self.last = Some((fd, 0, 0, MODE_UNKNOWN));
                    return Ok(());
                }
                // Closed, or its number reused: FreeBSD dropped the knotes
                // at close; start clean.
                Ok(false) => self.drop_entry(cx, fd),
                Err(errno) => {
                    self.drop_entry(cx, fd);
                    return Err(errno);
                }
            },
            None => {}
        }
        if !ch.flags.contains(Flags::ADD) {
            // Nothing registered: the change fails with ENOENT, or EBADF
            // for a closed number (FreeBSD looks the fd up first).
            sys::syscall!(fcntl(fd, libc::F_GETFD)).map_err(|_| libc::EBADF)?;
        }
        // A new entry: no fstat; the registration's own epoll_ctl tells a
        // bad fd (EBADF) or one epoll cannot watch (EPERM: a regular file
        // or directory is then classified by `fstat`).
        self.last = Some((fd, 0, 0, MODE_UNKNOWN));
        Ok(())
    }

    fn attach(&mut self, cx: &mut Context<'_>, id: KnoteId) -> Result<(), Errno> {
        let k = cx.knote(id);
        let fd = fd_of(k.ident())?;
        let is_read = k.filter() == Filter::Read;
        let Some((lfd, dev, ino, mode)) = self.last.take().filter(|l| l.0 == fd) else {
            return Err(libc::EBADF);
        };
        debug_assert_eq!(lfd, fd);
        if self.fds.len() <= fd as usize {
            // Never grow the table for a number that is not open (a bad
            // fd can be any number up to i32::MAX).
            sys::syscall!(fcntl(fd, libc::F_GETFD)).map_err(|_| libc::EBADF)?;
            self.fds.resize_with(fd as usize + 1, || None);
        }
        let bit = if is_read { 1 } else { 2 };
        let adopted = self.adopted.take().filter(|a| a.0 == fd && a.2 == bit);
        if self.fds[fd as usize].is_none() {
            let kind = if mode == MODE_UNKNOWN {
                Kind::Unknown
            } else {
                classify(fd, mode)
            };
            let gen = match adopted {
                Some((_, gen, _)) => gen,
                None => {
                    self.next_gen = self.next_gen.wrapping_add(1) & GEN_MASK;
                    self.next_gen
                }
            };
            self.fds[fd as usize] = Some(FdEntry {
                gen,
                dev,
                ino,
                kind,
                read: None,
                write: None,
                registered: 0,
                eof_rd: false,
                eof_wr: false,
                err: false,
                so_error: 0,
                cap: 0,
                fionread_ok: true,
            });
        }
        let e = self.fds[fd as usize].as_mut().expect("entry just made");
        if is_read {
            e.read = Some(id);
        } else {
            e.write = Some(id);
        }
        if let Some((_, gen, _)) = adopted {
            if e.gen == gen && e.registered == 0 {
                // `resolve`'s probe registered this direction for the file
                // the number names now, under this entry's generation; as
                // any new registration it reports the current readiness.
                e.registered = bit;
                return Ok(());
            }
        }
        if e.kind == Kind::Regular {
            return self.attach_file(cx, fd, id, is_read);
        }
        // Register only the directions that have knotes: an idle writable
        // fd registered for both would flood every wait with write edges.
        // With per-knote watches (io_uring) each direction is its own
        // registration, tagged in the payload so it activates only its knote.
        let per_knote = cx.per_knote_watches();
        let want = e.registered | bit;
        let first = e.registered == 0;
        if want != e.registered {
            let tag = if per_knote { bit } else { 0 };
            let payload = payload_of(e.gen, tag, fd);
            let interest = match if per_knote { bit } else { want } {
                1 => Interest::Read,
                2 => Interest::Write,
                _ => Interest::Both,
            };
            // A second direction on epoll's one registration per fd: one
            // `EPOLL_CTL_MOD` (the fd is known registered), not ADD, EEXIST, MOD.
            let r = if first || per_knote {
                cx.watch_fd(fd, interest, payload)
            } else {
                cx.rewatch_fd(fd, interest, payload)
            };
            if let Err(err) = r {
                let errno = err.raw_os_error().unwrap_or(libc::EINVAL);
                // EPERM for a new entry: no poll support. A regular file or
                // a directory is watched its own way, anything else is
                // refused.
                if errno == libc::EPERM && first && e.kind == Kind::Unknown {
                    let st = sys::fstat(fd).ok().filter(|st| {
                        matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
                    });
                    if let Some(st) = st {
                        (e.kind, e.dev, e.ino) = (Kind::Regular, st.st_dev, st.st_ino);
                        return self.attach_file(cx, fd, id, is_read);
                    }
                }
                if is_read {
                    e.read = None;
                } else {
                    e.write = None;
                }
                if e.read.is_none() && e.write.is_none() {
                    self.fds[fd as usize] = None;
                }
                return Err(errno);
            }
            e.registered = want;
        }
        if !first && !per_knote {
            // The fd was registered before: its first edge is gone (a
            // re-registration's edge may not cover this direction), so
            // check now.
            cx.activate(id);
        }
        Ok(())
    }

    fn modify(&mut self, cx: &mut Context<'_>, id: KnoteId, ch: &Kevent) -> Result<(), Errno> {
        let k = cx.knote_mut(id);
        k.set_sfflags(ch.fflags);
        k.sdata = ch.data;
        // `resolve` proved the registration is still the file's (a file
        // reopened at the same number is a new open file: its knotes were
        // dropped and this change made a new one).
        // FreeBSD re-evaluates the filter after a change.
        cx.activate(id);
        Ok(())
    }

    fn detach(&mut self, cx: &mut Context<'_>, id: KnoteId) {
        self.files.remove(id);
        let k = cx.knote(id);
        let Ok(fd) = fd_of(k.ident()) else { return };
        let is_read = k.filter() == Filter::Read;
        let Some(e) = self.entry(fd) else { return };
        if is_read && e.read == Some(id) {
            e.read = None;
        } else if !is_read && e.write == Some(id) {
            e.write = None;
        } else {
            return;
        }
        if cx.per_knote_watches() {
            let bit = if is_read { 1 } else { 2 };
            if e.registered & bit != 0 {
                let dir = if is_read {
                    Interest::Read
                } else {
                    Interest::Write
                };
                let _ = cx.unwatch_fd_dir(fd, dir);
                e.registered &= !bit;
            }
        }
        if e.read.is_none() && e.write.is_none() {
            if e.registered != 0 {
                let _ = cx.unwatch_fd(fd);
            }
            self.fds[fd as usize] = None;
        }
    }

    #[inline(always)]
    fn os_event(&mut self, cx: &mut Context<'_>, payload: u64, ready: Readiness) {
        let fd = (payload & FD_MASK) as usize;
        let tag = (payload >> TAG_SHIFT) & 3;
        if tag == TAG_FILES as u64 {
            self.files.drain(cx);
            return;
        }
        let gen = (payload >> GEN_SHIFT) as u32;
        let Some(Some(e)) = self.fds.get_mut(fd) else {
            return;
        };
        if e.gen != gen {
            return;
        }
        const HUP_ERR: u32 = Readiness::RDHUP.0 | Readiness::HUP.0 | Readiness::ERROR.0;
        if ready.0 & HUP_ERR != 0 {
            if ready.any(Readiness::RDHUP | Readiness::HUP) {
                e.eof_rd = true;
            }
            if ready.any(Readiness::HUP | Readiness::ERROR) {
                e.eof_wr = true;
            }
            if ready.any(Readiness::ERROR) {
                e.err = true;
            }
        }
        const RD: u32 = Readiness::READABLE.0 | HUP_ERR;
        const WR: u32 = Readiness::WRITABLE.0 | Readiness::HUP.0 | Readiness::ERROR.0;
        if tag != 2 && ready.0 & RD != 0 {
            if let Some(id) = e.read {
                cx.activate_with(id, ready);
            }
        }
        if tag != 1 && ready.0 & WR != 0 {
            if let Some(id) = e.write {
                cx.activate_with(id, ready);
            }
        }
    }

    #[inline(always)]
    fn event(&mut self, cx: &mut Context<'_>, id: KnoteId, out: &mut Kevent) -> bool {
        // The hot case inline: a READ knote on a pipe, socket or tty with a
        // fresh kernel event (so no identity check), no mark, no EOF.
        let k = cx.knote(id);
        let sfflags = k.sfflags();
        if k.fresh_round > cx.core.call_round
            && k.filter() == Filter::Read
            && sfflags & (note::LOWAT | note::FILE_POLL) == 0
        {
            if let Some(Some(e)) = self.fds.get(k.ident() as usize) {
                if matches!(e.kind, Kind::Pipe | Kind::Socket | Kind::Tty)
                    && !e.eof_rd
                    && k.hint() & (Readiness::HUP.0 | Readiness::RDHUP.0) == 0
                {
                    let data = if sfflags & note::NODATA != 0 {
                        1
                    } else if e.fionread_ok {
                        match sys::ioctl_int(k.ident() as RawFd, libc::FIONREAD) {
                            Ok(n) => n as i64,
                            Err(_) => return self.event_slow(cx, id, out),
                        }
                    } else {
                        return self.event_slow(cx, id, out);
                    };
                    if data < 1 || (data == 1 && k.hint() & Readiness::READABLE.0 == 0) {
                        return self.event_slow(cx, id, out);
                    }
                    *out = k.to_event();
                    out.data = data;
                    return true;
                }
            }
        }
        self.event_slow(cx, id, out)
    }
}

impl FdStorage {
    /// [`Storage::event`] for every case but the inline hot one.
    #[inline(never)]
    fn event_slow(&mut self, cx: &mut Context<'_>, id: KnoteId, out: &mut Kevent) -> bool {
        let call_round = cx.core.call_round;
        let k = cx.knote(id);
        let fresh = k.fresh_round > call_round;
        *out = k.to_event();
        let sfflags = k.sfflags();
        let lowat = if sfflags & note::LOWAT != 0 && k.sdata() > 0 {
            k.sdata()
        } else {
            1
        };
        let hint = Readiness(k.hint());
        let is_read = k.filter() == Filter::Read;
        let file_poll = sfflags & note::FILE_POLL != 0;
        let nodata = sfflags & note::NODATA != 0;
        let Ok(fd) = fd_of(k.ident()) else {
            return false;
        };
        let Some(Some(e)) = self.fds.get_mut(fd as usize) else {
            return false;
        };
        // A regular file's identity `fstat`, whose size is the `data`.
        let mut stat = None;
        // The condition's syscall, made before the identity probe (below).
        let mut pre_fionread = None;
        let mut pre_poll = None;
        let mut pre_backlog = None;
        if !fresh {
            // Without a fresh kernel event the fd may have been closed and
            // its number reused since the knote was queued.
            if e.kind == Kind::Regular {
                match sys::fstat(fd) {
                    Ok(st) if st.st_dev == e.dev && st.st_ino == e.ino => stat = Some(st),
                    _ => return false,
                }
            } else {
                // A condition that no longer holds (a level loop that
                // consumed the data) drops the knote whatever file the
                // number names now: ask it first, and probe the identity
                // only for a report (one syscall, not two, for the last
                // re-check of each message). Nothing of the entry changes
                // before the probe. `polls`: the arms below that take the
                // condition from `poll`.
                let polls = if is_read {
                    match e.kind {
                        Kind::Pipe | Kind::Socket | Kind::Tty => nodata || !e.fionread_ok,
                        Kind::UnixListener => nodata,
                        Kind::Other | Kind::Listener => true,
                        _ => false,
                    }
                } else {
                    true
                };
                if polls {
                    let r = poll_one(fd);
                    let (cond, eof) = if is_read {
                        (
                            Readiness::READABLE | Readiness::HUP | Readiness::RDHUP,
                            e.eof_rd,
                        )
                    } else {
                        (
                            Readiness::WRITABLE | Readiness::HUP | Readiness::ERROR,
                            e.eof_wr,
                        )
                    };
                    if !r.any(cond) && !eof {
                        return false;
                    }
                    pre_poll = Some(r);
                } else if is_read && matches!(e.kind, Kind::Pipe | Kind::Socket | Kind::Tty) {
                    match sys::ioctl_int(fd, libc::FIONREAD) {
                        Ok(n) if (n as i64) < lowat && !e.eof_rd => return false,
                        // Closed: the probe would say so.
                        Err(err) if err.raw_os_error() == Some(libc::EBADF) => return false,
                        r => pre_fionread = Some(r),
                    }
                } else if is_read && e.kind == Kind::TcpListener {
                    match listen_backlog(fd) {
                        Some(n) if n >= lowat => pre_backlog = Some(n),
                        _ => return false,
                    }
                }
                if self.same_file(cx, fd, None) != Ok(true) {
                    return false;
                }
            }
        }
        let Some(Some(e)) = self.fds.get_mut(fd as usize) else {
            return false;
        };
        let ready = || pre_poll.unwrap_or_else(|| if fresh { hint } else { poll_one(fd) });
        if e.kind == Kind::Unknown {
            if sfflags & note::SOCKET != 0 {
                // The caller's word (`note::SOCKET`): no syscall.
                e.kind = Kind::Socket;
            } else {
                let Some((kind, dev, ino)) = classify_registered(fd) else {
                    return false;
                };
                e.kind = kind;
                (e.dev, e.ino) = (dev, ino);
            }
        }
        let kind = e.kind;
        let (active, data, eof) = if is_read {
            match kind {
                Kind::Regular => {
                    let size = match stat {
                        Some(st) => st.st_size,
                        None => sys::fstat(fd).map(|s| s.st_size).unwrap_or(0),
                    };
                    // SEEK_CUR with offset 0 only reads the file offset.
                    let off = sys::syscall!(lseek(fd, 0, libc::SEEK_CUR)).unwrap_or(0);
                    let data = size - off;
                    (data != 0 || file_poll, data, false)
                }
                Kind::TcpListener => match pre_backlog.or_else(|| listen_backlog(fd)) {
                    Some(n) => (n >= lowat, n, false),
                    None => (false, 0, false),
                },
                Kind::UnixListener if !nodata => match self.diag.backlog(e.ino) {
                    Some(n) => (n >= lowat, n, false),
                    None => {
                        let r = ready();
                        (r.any(Readiness::READABLE), 1, false)
                    }
                },
                Kind::Pipe | Kind::Socket | Kind::Tty if nodata => {
                    let r = ready();
                    let eof = e.eof_rd || r.any(Readiness::HUP | Readiness::RDHUP);
                    (r.any(Readiness::READABLE) || eof, 1, eof)
                }
                Kind::Pipe | Kind::Socket | Kind::Tty if e.fionread_ok => {
                    match pre_fionread.unwrap_or_else(|| sys::ioctl_int(fd, libc::FIONREAD)) {
                        Ok(n) => {
                            let n = n as i64;
                            (n >= lowat || e.eof_rd, n, e.eof_rd)
                        }
                        // The number was closed (a dup kept the file, and
                        // so the registration, alive): nothing to report.
                        Err(err) if err.raw_os_error() == Some(libc::EBADF) => return false,
                        Err(_) => {
                            e.fionread_ok = false;
                            let r = ready();
                            let eof = e.eof_rd || r.any(Readiness::HUP | Readiness::RDHUP);
                            (r.any(Readiness::READABLE) || eof, 1, eof)
                        }
                    }
                }
                _ => {
                    let r = ready();
                    let eof = r.any(Readiness::HUP | Readiness::RDHUP);
                    (r.any(Readiness::READABLE) || eof, 1, eof)
                }
            }
        } else {
            match kind {
                Kind::Regular => (true, 0, false),
                _ => {
                    let r = ready();
                    let eof = e.eof_wr || r.any(Readiness::HUP | Readiness::ERROR);
                    let writable = r.any(Readiness::WRITABLE);
                    let data = match kind {
                        _ if nodata => writable as i64,
                        Kind::Socket => {
                            if e.cap == 0 {
                                e.cap = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)
                                    .unwrap_or(0);
                            }
                            let queued = sys::ioctl_int(fd, libc::TIOCOUTQ).unwrap_or(0);
                            (e.cap - queued).max(0) as i64
                        }
                        Kind::Pipe => {
                            if e.cap == 0 {
                                e.cap = sys::syscall!(fcntl(fd, libc::F_GETPIPE_SZ)).unwrap_or(0);
                            }
                            let queued = sys::ioctl_int(fd, libc::FIONREAD).unwrap_or(0);
                            (e.cap - queued).max(0) as i64
                        }
                        _ => writable as i64,
                    };
                    (
                        (writable && (lowat <= 1 || data >= lowat)) || eof,
                        data,
                        eof,
                    )
                }
            }
        };
        if !active {
            return false;
        }
        out.data = data;
        if eof {
            out.flags.insert(Flags::EOF);
            if kind == Kind::Socket {
                if e.err {
                    // Fetched once (reading SO_ERROR clears it), kept for
                    // every later EOF delivery of this file's knotes.
                    e.err = false;
                    let v = sys::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR).unwrap_or(0);
                    if v != 0 {
                        e.so_error = v;
                    }
                }
                out.fflags = e.so_error as u32;
            }
        }
        true
    }
}
