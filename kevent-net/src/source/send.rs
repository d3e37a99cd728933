//! `BatchSender`: datagrams out in `sendmmsg(2)` batches.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Counters of one [`BatchSender::send_with`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams dropped because the socket's send buffer was full
    /// (`EAGAIN`): real-time data is not worth queueing.
    pub would_block: usize,
    /// Datagrams dropped by another error (e.g. `ECONNREFUSED` reported
    /// for an earlier datagram).
    pub errors: usize,
    /// `sendmmsg` calls made.
    pub syscalls: usize,
}

/// Sends datagrams from borrowed slices in batches of up to `batch`
/// messages per `sendmmsg(2)`. Headers, iovecs and addresses are allocated
/// once; a send allocates nothing.
///
/// # Examples
///
/// ```
/// use kevent_net::BatchSender;
/// use std::os::fd::AsFd;
///
/// let a = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let b = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// let to = b.local_addr()?;
/// let frames = [b"one".as_slice(), b"two", b"three"];
/// let mut tx = BatchSender::new(64);
/// let st = tx.send_with(a.as_fd(), frames.len(), |i| (frames[i], to));
/// assert_eq!((st.sent, st.syscalls), (3, 1));
/// let mut buf = [0u8; 8];
/// assert_eq!(b.recv(&mut buf)?, 3);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct BatchSender {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in6>,
}

// SAFETY: the raw pointers inside the headers are rewritten before every
// syscall and point only into this value or into slices borrowed for the
// duration of `send_with`; they are never dereferenced otherwise.
unsafe impl Send for BatchSender {}

impl fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSender")
            .field("batch", &self.hdrs.len())
            .finish()
    }
}

impl BatchSender {
    /// A sender of up to `batch` datagrams per syscall (clamped to
    /// 1..=1024).
    #[must_use]
    pub fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        // SAFETY: plain C structs; all-zero is a valid value of each.
        let (h, n): (libc::mmsghdr, libc::sockaddr_in6) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            hdrs: vec![h; batch],
            iovs: vec![iov; batch],
            names: vec![n; batch],
        }
    }

    /// Sends `count` datagrams from `sock`; `item(i)` gives datagram `i`'s
    /// bytes and destination. Never blocks (`MSG_DONTWAIT`); datagrams the
    /// kernel refuses are counted, not retried.
    pub fn send_with<'a, F>(&mut self, sock: BorrowedFd<'_>, count: usize, mut item: F) -> SendStats
    where
        F: FnMut(usize) -> (&'a [u8], SocketAddr),
    {
        let mut st = SendStats::default();
        let batch = self.hdrs.len();
        let mut next = 0;
        while next < count {
            let k = batch.min(count - next);
            for j in 0..k {
                let (bytes, to) = item(next + j);
                let namelen = write_sockaddr(&mut self.names[j], to);
                self.iovs[j] = libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                };
                let h = &mut self.hdrs[j];
                h.msg_hdr.msg_name = std::ptr::from_mut(&mut self.names[j]).cast();
                h.msg_hdr.msg_namelen = namelen;
                h.msg_hdr.msg_iov = std::ptr::from_mut(&mut self.iovs[j]);
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
            }
            let hdrs = self.hdrs.as_mut_ptr();
            drive(k, &mut st, |done| {
                // SAFETY: headers `done..k` are initialised; their names
                // and iovecs point into `self` and into slices borrowed for
                // 'a, alive for this call; the kernel only reads them.
                let r = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        hdrs.add(done),
                        (k - done) as libc::c_uint,
                        libc::MSG_DONTWAIT,
                    )
                };
                // errno is read only when the call reports a failure.
                usize::try_from(r).map_err(|_| io::Error::last_os_error())
            });
            next += k;
        }
        st
    }
}

/// Sends messages `0..k` of one prepared batch through `call(done)`, a
/// `sendmmsg` of messages `done..k` returning how many the kernel took,
/// and counts the outcome in `st`.
///
/// - `Ok(n)`, `n > 0`: `n` sent; the rest goes in the next call.
/// - `Ok(0)`: the kernel took nothing and reported no error (`sendmmsg`
///   returns 0 only for an empty vector, never passed here): the rest of
///   the batch counts as errors. No errno is read (it would be stale).
/// - `EINTR`: retried.
/// - `EAGAIN`: the send buffer is full; the rest of the batch is dropped
///   and counted as `would_block` (real-time data is not worth queueing).
/// - another error: it belongs to the first unsent message (the kernel
///   reports an error only when it sent nothing in that call); that one
///   is counted and skipped, the rest goes in the next call.
fn drive(k: usize, st: &mut SendStats, mut call: impl FnMut(usize) -> io::Result<usize>) {
    let mut done = 0;
    while done < k {
        st.syscalls += 1;
        match call(done) {
            Ok(0) => {
                st.errors += k - done;
                done = k;
            }
            Ok(n) => {
                let n = n.min(k - done);
                done += n;
                st.sent += n;
            }
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    st.would_block += k - done;
                    done = k;
                }
                _ => {
                    st.errors += 1;
                    done += 1;
                }
            },
        }
    }
}

/// Writes `to` as a `sockaddr_in`/`sockaddr_in6`; returns its length.
fn write_sockaddr(slot: &mut libc::sockaddr_in6, to: SocketAddr) -> libc::socklen_t {
    match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a sockaddr_in (16 bytes) fits in a sockaddr_in6 (28);
            // the write is unaligned-safe.
            unsafe {
                std::ptr::from_mut(slot)
                    .cast::<libc::sockaddr_in>()
                    .write_unaligned(sin)
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            *slot = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `drive` over a batch of `k` against scripted syscall results;
    /// also checks every call starts at the first unsent message.
    fn script(k: usize, results: &[io::Result<usize>], starts: &[usize]) -> SendStats {
        let mut st = SendStats::default();
        let mut i = 0;
        drive(k, &mut st, |done| {
            assert_eq!(done, starts[i], "call {i} starts at message {done}");
            let r = match &results[i] {
                Ok(n) => Ok(*n),
                Err(e) => Err(io::Error::from(e.kind())),
            };
            i += 1;
            r
        });
        assert_eq!(i, results.len(), "calls made");
        st
    }

    fn errno(e: i32) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(e))
    }

    #[test]
    fn partial_sends_continue_where_the_kernel_stopped() {
        let st = script(10, &[Ok(4), Ok(5), Ok(1)], &[0, 4, 9]);
        assert_eq!(
            (st.sent, st.would_block, st.errors, st.syscalls),
            (10, 0, 0, 3)
        );
    }

    #[test]
    fn would_block_drops_the_rest_of_the_batch() {
        let st = script(8, &[Ok(3), errno(libc::EAGAIN)], &[0, 3]);
        assert_eq!(
            (st.sent, st.would_block, st.errors, st.syscalls),
            (3, 5, 0, 2)
        );
    }

    #[test]
    fn an_error_skips_one_message_and_goes_on() {
        let st = script(
            4,
            &[
                Ok(1),
                errno(libc::ECONNREFUSED),
                Ok(1),
                errno(libc::EAFNOSUPPORT),
            ],
            &[0, 1, 2, 3],
        );
        assert_eq!(
            (st.sent, st.would_block, st.errors, st.syscalls),
            (2, 0, 2, 4)
        );
    }

    #[test]
    fn eintr_is_retried() {
        let st = script(2, &[errno(libc::EINTR), Ok(2)], &[0, 0]);
        assert_eq!((st.sent, st.errors, st.syscalls), (2, 0, 2));
    }

    #[test]
    fn zero_sent_without_an_error_ends_the_batch() {
        // No errno is consulted: a stale EAGAIN or EINTR left by an
        // earlier call must not be mistaken for this one's outcome.
        let st = script(5, &[Ok(2), Ok(0)], &[0, 2]);
        assert_eq!(
            (st.sent, st.would_block, st.errors, st.syscalls),
            (2, 0, 3, 2)
        );
    }
}
