//! Shared by the peer servers (peer_mio, peer_tokio): the one response
//! they serve, rendered as evserver renders it (same headers, same
//! lengths), and a request parser.
//! Not an example of its own (included with `#[path]`).

#![allow(dead_code)]

use std::io;
use std::path::Path;
use std::time::UNIX_EPOCH;

/// The pre-rendered `200` response (head + body) and its `HEAD` length.
#[derive(Debug)]
pub(crate) struct Response {
    buf: Vec<u8>,
    head_len: usize,
    date_off: usize,
    secs: u64,
    not_found: Vec<u8>,
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// IMF-fixdate of `secs` since the epoch.
pub(crate) fn http_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(mo - 1) as usize],
        y,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

impl Response {
    /// Load `file` (default: the bundled examples/www/index.html).
    pub(crate) fn load(file: Option<&Path>) -> io::Result<Response> {
        let default = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/www/index.html");
        let path = file.unwrap_or(Path::new(default));
        let body = std::fs::read(path)?;
        let meta = std::fs::metadata(path)?;
        let mtime_d = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let mtime = mtime_d.as_secs();
        let mtime_ns = mtime_d.as_nanos();
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut buf = b"HTTP/1.1 200 OK\r\nServer: kevent-evserver\r\nDate: ".to_vec();
        let date_off = buf.len();
        buf.extend_from_slice(http_date(now).as_bytes());
        buf.extend_from_slice(
            format!(
                "\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nLast-Modified: {}\r\nETag: \"{:x}-{:x}\"\r\n\r\n",
                body.len(),
                http_date(mtime),
                body.len(),
                mtime_ns
            )
            .as_bytes(),
        );
        let head_len = buf.len();
        buf.extend_from_slice(&body);
        let not_found =
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nAllow: GET, HEAD\r\n\r\n"
                .to_vec();
        Ok(Response {
            buf,
            head_len,
            date_off,
            secs: now,
            not_found,
        })
    }

    /// Re-render the `Date` if the second changed.
    pub(crate) fn tick(&mut self, secs: u64) {
        if secs != self.secs {
            self.secs = secs;
            let d = http_date(secs);
            self.buf[self.date_off..self.date_off + d.len()].copy_from_slice(d.as_bytes());
        }
    }

    /// Parse one request at the start of `input`; append its response to
    /// `out` and return the bytes used, or `None` if incomplete. A
    /// malformed request gets `None` too (the peer then waits for the
    /// idle client to go away; it is a yardstick, not a server).
    pub(crate) fn answer(&self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => {
                match req.method {
                    Some("GET") => out.extend_from_slice(&self.buf),
                    Some("HEAD") => out.extend_from_slice(&self.buf[..self.head_len]),
                    _ => out.extend_from_slice(&self.not_found),
                }
                Some(n)
            }
            _ => None,
        }
    }

    /// The full `200` response.
    pub(crate) fn full(&self) -> &[u8] {
        &self.buf
    }
}
