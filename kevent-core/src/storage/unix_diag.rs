//! The accept backlog of a listening Unix socket, through `sock_diag`.
//!
//! `FIONREAD` refuses a listening Unix socket (`EINVAL`) and `TCP_INFO`
//! is TCP's, so the only way to read the length of its accept queue is the
//! `NETLINK_SOCK_DIAG` request `ss -xl` makes: one `UNIX_DIAG_RQLEN` query
//! for the socket's inode, whose `udiag_rqueue` is, for a socket in
//! `LISTEN`, the number of connections waiting to be accepted
//! (`net/unix/diag.c`). The reply is queued during the `send` (the kernel
//! answers in the sender's context), so a query is two syscalls and never
//! blocks. Where `sock_diag` is unavailable (no `unix_diag`, a seccomp
//! filter) the first query fails and the storage falls back to `data` = 1
//! for good.

use crate::sys;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const TCP_LISTEN: u32 = 10;

/// `struct nlmsghdr` + `struct unix_diag_req`.
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

/// One lazily opened `NETLINK_SOCK_DIAG` socket per fd storage.
#[derive(Debug, Default)]
pub(crate) struct UnixDiag {
    fd: Option<OwnedFd>,
    seq: u32,
    /// A query has worked here: later failures are transient.
    worked: bool,
    /// `sock_diag` does not work here: stop asking.
    broken: bool,
}

impl UnixDiag {
    /// Connections waiting in the accept queue of the listening Unix
    /// socket with inode `ino`; `None` if `sock_diag` cannot tell.
    pub(crate) fn backlog(&mut self, ino: u64) -> Option<i64> {
        if self.broken || ino > u32::MAX as u64 {
            return None;
        }
        let r = self.query(ino as u32);
        match r {
            Some(_) => self.worked = true,
            None if !self.worked => {
                self.broken = true;
                self.fd = None;
            }
            None => {}
        }
        r
    }

    fn query(&mut self, ino: u32) -> Option<i64> {
        if self.fd.is_none() {
            let fd = sys::syscall!(socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_SOCK_DIAG
            ))
            .ok()?;
            // SAFETY: a new fd returned by socket(), owned by no one else.
            self.fd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let fd = self.fd.as_ref()?.as_raw_fd();
        self.seq = self.seq.wrapping_add(1);
        let req = Request {
            len: std::mem::size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: libc::NLM_F_REQUEST as u16,
            seq: self.seq,
            pid: 0,
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: 1 << TCP_LISTEN,
            ino,
            show: UDIAG_SHOW_RQLEN,
            // INET_DIAG_NOCOOKIE: look the socket up by inode alone.
            cookie: [!0, !0],
        };
        let len = std::mem::size_of::<Request>();
        let sent = sys::syscall!(send(fd, (&req as *const Request).cast(), len, 0)).ok()?;
        if sent as usize != len {
            return None;
        }
        // A reply is ~52 bytes; u32 words keep the headers aligned.
        let mut buf = [0u32; 64];
        loop {
            let n = sys::syscall!(recv(
                fd,
                buf.as_mut_ptr().cast(),
                std::mem::size_of_val(&buf),
                libc::MSG_DONTWAIT
            ))
            .ok()? as usize;
            // SAFETY: u32 to bytes is a plain reinterpretation of the
            // initialised buffer, `n` of which the kernel wrote.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            match parse(bytes, self.seq) {
                Reply::Backlog(q) => return Some(q),
                Reply::Failed => return None,
                // A late reply to an earlier query: read on.
                Reply::Other => continue,
            }
        }
    }
}

enum Reply {
    Backlog(i64),
    Failed,
    Other,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// One datagram: the `nlmsghdr` (16 bytes), then for our answer the
/// `unix_diag_msg` (16 bytes) and its attributes (`nlattr`, 4-aligned).
fn parse(b: &[u8], seq: u32) -> Reply {
    let (Some(len), Some(kind), Some(got_seq)) = (u32_at(b, 0), u16_at(b, 4), u32_at(b, 8)) else {
        return Reply::Failed;
    };
    if got_seq != seq {
        return Reply::Other;
    }
    let end = (len as usize).min(b.len());
    if kind != SOCK_DIAG_BY_FAMILY {
        // NLMSG_ERROR (the inode is unknown, the family unsupported).
        return Reply::Failed;
    }
    let mut off = 32;
    while off + 4 <= end {
        let (Some(alen), Some(atype)) = (u16_at(b, off), u16_at(b, off + 2)) else {
            break;
        };
        if alen < 4 {
            break;
        }
        if atype == UNIX_DIAG_RQLEN {
            return match u32_at(b, off + 4) {
                Some(q) => Reply::Backlog(q as i64),
                None => Reply::Failed,
            };
        }
        off += (alen as usize + 3) & !3;
    }
    Reply::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u32, kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 32];
        b[4..6].copy_from_slice(&kind.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        for (t, v) in attrs {
            let l = 4 + v.len() as u16;
            b.extend_from_slice(&l.to_ne_bytes());
            b.extend_from_slice(&t.to_ne_bytes());
            b.extend_from_slice(v);
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
        }
        let n = b.len() as u32;
        b[0..4].copy_from_slice(&n.to_ne_bytes());
        b
    }

    #[test]
    fn parse_finds_rqlen_after_other_attributes() {
        let rq = [7u32.to_ne_bytes(), 128u32.to_ne_bytes()].concat();
        let b = msg(5, SOCK_DIAG_BY_FAMILY, &[(6, &[0]), (UNIX_DIAG_RQLEN, &rq)]);
        assert!(matches!(parse(&b, 5), Reply::Backlog(7)));
        assert!(matches!(parse(&b, 4), Reply::Other));
        let err = msg(5, libc::NLMSG_ERROR as u16, &[]);
        assert!(matches!(parse(&err, 5), Reply::Failed));
        let none = msg(5, SOCK_DIAG_BY_FAMILY, &[(6, &[0])]);
        assert!(matches!(parse(&none, 5), Reply::Failed));
        assert!(matches!(parse(&b[..6], 5), Reply::Failed));
    }
}
