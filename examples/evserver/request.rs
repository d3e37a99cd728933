//! One request, whatever the I/O: parse it (httparse), route it (GET or
//! HEAD of a cached file, `304`, the errors), and say what the response
//! is — bytes appended to the connection's output buffer, or on the hot
//! path a slice of the cache entry's own buffer. Both modes call
//! [`Responder::respond`] on the bytes they buffered and keep only the
//! sending.

use crate::cache::{Cache, ConnHdr, Entry, Lookup};
use crate::http::{self, DATE_LEN};
use crate::worker::{Config, Stats};
use std::io::Write;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// Bytes of request head looked at: a head not complete within them is
/// refused (414 or 431). Readiness mode's read buffer is this size.
pub(crate) const RBUF: usize = 8192;
/// Longest request target accepted.
const MAX_TARGET: usize = 2048;
/// Most request headers accepted (431 past them).
const MAX_HEADERS: usize = 48;

/// The body after a head appended to the output buffer.
#[derive(Debug)]
pub(crate) enum Body {
    /// Nothing (HEAD, 304, error responses: all in the buffer).
    None,
    /// The entry's cached body ([`Entry::body`]).
    Mem(Arc<Entry>),
    /// The entry's file, `len` bytes from offset 0, by `sendfile`.
    File(Arc<Entry>),
}

/// Where a response's bytes are.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Its head (or all of it) was appended to the output buffer; the
    /// body follows.
    Out(Body),
    /// Nothing was appended: the response is `entry.ka[..end]` (the
    /// keep-alive `200` head, and the body unless `then_file`), then the
    /// file by `sendfile` if `then_file`. The common response (HTTP/1.1
    /// keep-alive GET or HEAD): one send of a slice of the entry.
    Whole {
        entry: Arc<Entry>,
        end: usize,
        then_file: bool,
    },
}

/// A request answered by [`Responder::respond`].
#[derive(Debug)]
pub(crate) struct Answer {
    /// Bytes of input it used up (after an error: all of them — the
    /// request stream can no longer be trusted).
    pub(crate) consumed: usize,
    /// Close the connection once the response is out.
    pub(crate) close: bool,
    pub(crate) reply: Reply,
}

/// The request handler of one worker: its file cache and scratch space.
#[derive(Debug)]
pub(crate) struct Responder {
    pub(crate) cache: Cache,
    /// The normalised path of the request at hand.
    norm: Vec<u8>,
    sendfile: bool,
    /// Cached bodies larger than this go by `sendfile` too.
    copy_max: u64,
}

impl Responder {
    /// A handler serving `cfg.root`; bodies go by `sendfile` when
    /// `cfg.sendfile`, when not cached, or when larger than `copy_max`.
    pub(crate) fn new(cfg: &Config, now_secs: u64, copy_max: u64) -> Responder {
        Responder {
            cache: Cache::new(cfg.root.clone(), now_secs, cfg.cache_max),
            norm: Vec::with_capacity(MAX_TARGET),
            sendfile: cfg.sendfile,
            copy_max,
        }
    }

    /// Answer the first request in `buf` (what the connection has
    /// buffered), appending to `out` what [`Reply`] says is there; `None`
    /// while its head is incomplete. While `draining` every response
    /// closes its connection.
    pub(crate) fn respond(
        &mut self,
        buf: &[u8],
        draining: bool,
        stats: &mut Stats,
        out: &mut Vec<u8>,
    ) -> Option<Answer> {
        let window = &buf[..buf.len().min(RBUF)];
        let date = *self.cache.date();
        let fail = |code: u16, stats: &mut Stats, out: &mut Vec<u8>| {
            stats.errors += 1;
            render_error(out, code, &date, ConnHdr::Close, false);
            Some(Answer {
                consumed: buf.len(),
                close: true,
                reply: Reply::Out(Body::None),
            })
        };
        // Uninitialised: no 1.5 KiB memset per request.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(window, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if window.len() < RBUF {
                    return None;
                }
                // A full window without a complete head.
                let line_done = window.windows(2).any(|w| w == b"\r\n");
                return fail(if line_done { 431 } else { 414 }, stats, out);
            }
            Err(httparse::Error::TooManyHeaders) => return fail(431, stats, out),
            Err(_) => return fail(400, stats, out),
        };
        stats.requests += 1;
        let method = req.method.unwrap_or("");
        let target = req.path.unwrap_or("").as_bytes();
        let version = req.version.unwrap_or(0);
        // HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0
        // closes it unless told `keep-alive` (RFC 9112 §9.3).
        let mut ask_close = false;
        let mut ask_keep = false;
        let mut inm: Option<&[u8]> = None;
        let mut ims: Option<&[u8]> = None;
        let mut body_len = 0u64;
        let mut chunked = false;
        for h in req.headers.iter() {
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"connection") {
                ask_close |= http::has_token(h.value, b"close");
                ask_keep |= http::has_token(h.value, b"keep-alive");
            } else if n.eq_ignore_ascii_case(b"if-none-match") {
                inm = Some(h.value);
            } else if n.eq_ignore_ascii_case(b"if-modified-since") {
                ims = Some(h.value);
            } else if n.eq_ignore_ascii_case(b"content-length") {
                match http::parse_len(h.value) {
                    Some(l) => body_len = l,
                    None => return fail(400, stats, out),
                }
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            }
        }
        let close = ask_close || draining || (version == 0 && !ask_keep);
        let conn = if close {
            ConnHdr::Close
        } else if version == 0 {
            ConnHdr::KeepAlive
        } else {
            ConnHdr::None
        };
        if chunked || body_len > 0 {
            // GET and HEAD carry no body here; refuse rather than guess.
            return fail(413, stats, out);
        }
        if target.len() > MAX_TARGET {
            return fail(414, stats, out);
        }
        let head = method == "HEAD";
        let answered = |reply| {
            Some(Answer {
                consumed: head_len,
                close,
                reply,
            })
        };
        if method != "GET" && !head {
            stats.errors += 1;
            render_error(out, 405, &date, conn, false);
            return answered(Reply::Out(Body::None));
        }
        let found = match http::normalise(target, &mut self.norm) {
            Ok(is_dir) => self.cache.lookup(&self.norm, is_dir),
            Err(http::PathError::Escape) => Lookup::NotFound,
            Err(http::PathError::Bad) => return fail(400, stats, out),
        };
        let e = match found {
            Lookup::Hit(e) => e,
            Lookup::NotFound | Lookup::Unavailable => {
                let code = if matches!(found, Lookup::Unavailable) {
                    503
                } else {
                    404
                };
                stats.errors += 1;
                render_error(out, code, &date, conn, head);
                return answered(Reply::Out(Body::None));
            }
        };
        let not_modified = match (inm, ims) {
            (Some(v), _) => http::etag_matches(v, &e.etag),
            (None, Some(v)) => v.trim_ascii() == e.last_modified,
            _ => false,
        };
        let by_file =
            !head && e.len > 0 && (!e.body_cached || self.sendfile || e.len > self.copy_max);
        if !not_modified && conn == ConnHdr::None {
            // One slice of the entry's buffer (its Date is this second's).
            let end = if head || by_file {
                e.ka_head
            } else {
                e.ka.len()
            };
            return answered(Reply::Whole {
                entry: e,
                end,
                then_file: by_file,
            });
        }
        e.head_into(not_modified, conn, &date, out);
        let body = if not_modified || head || e.len == 0 {
            Body::None
        } else if by_file {
            Body::File(e)
        } else {
            Body::Mem(e)
        };
        answered(Reply::Out(body))
    }
}

/// Append a complete error response (a short text body unless `head`).
pub(crate) fn render_error(
    out: &mut Vec<u8>,
    code: u16,
    date: &[u8; DATE_LEN],
    conn: ConnHdr,
    head: bool,
) {
    let reason = http::reason(code);
    let body_len = 3 + 1 + reason.len() + 1;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nServer: kevent-evserver\r\nDate: "
    );
    out.extend_from_slice(date);
    let _ = write!(
        out,
        "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body_len}\r\n"
    );
    if code == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    match conn {
        ConnHdr::None => {}
        ConnHdr::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ConnHdr::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        let _ = writeln!(out, "{code} {reason}");
    }
}
