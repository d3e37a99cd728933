//! The per-thread file cache: for each file served, its response pre-
//! rendered once (status line and headers, and the body when small), with
//! the `Date` patched in place once a second. Serving a cached file is one
//! `write` of a slice of this buffer.

use crate::http::{content_type, http_date, DATE_LEN};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Bodies up to this size are kept in memory; larger ones go by
/// `sendfile` from the open file.
pub(crate) const BODY_CACHE_MAX: u64 = 1 << 20;
/// At most this many files are cached per thread; past it, lookups of new
/// files fail with 503 rather than grow without bound.
pub(crate) const MAX_ENTRIES: usize = 16_384;

/// One rendered response variant: head (and body if cached) in one buffer.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub(crate) buf: Vec<u8>,
    pub(crate) head_len: usize,
    date_off: usize,
}

/// A cached file.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Keep-alive (`[0]`) and `Connection: close` (`[1]`) variants.
    pub(crate) resp: [Rendered; 2],
    /// The `304` heads (same two variants).
    pub(crate) not_modified: [Rendered; 2],
    pub(crate) etag: Vec<u8>,
    pub(crate) last_modified: [u8; DATE_LEN],
    pub(crate) len: u64,
    /// Whether `resp[i].buf` holds the body after the head.
    pub(crate) body_cached: bool,
    /// Open file, for `sendfile`.
    pub(crate) file: File,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit(u32),
    NotFound,
    Full,
}

/// The cache of one thread.
#[derive(Debug)]
pub(crate) struct Cache {
    root: PathBuf,
    index: HashMap<Box<[u8]>, u32>,
    pub(crate) entries: Vec<Entry>,
    date: [u8; DATE_LEN],
    pub(crate) date_secs: u64,
    path_buf: PathBuf,
}

#[allow(clippy::too_many_arguments)]
fn render(
    code: u16,
    date: &[u8; DATE_LEN],
    ctype: &str,
    len: u64,
    lm: &[u8; DATE_LEN],
    etag: &[u8],
    close: bool,
    body: Option<&[u8]>,
) -> Rendered {
    use std::io::Write;
    let mut buf = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
    let _ = write!(
        buf,
        "HTTP/1.1 {code} {}\r\nServer: kevent-evserver\r\nDate: ",
        crate::http::reason(code)
    );
    let date_off = buf.len();
    buf.extend_from_slice(date);
    if code == 200 {
        let _ = write!(buf, "\r\nContent-Type: {ctype}\r\nContent-Length: {len}");
    }
    buf.extend_from_slice(b"\r\nLast-Modified: ");
    buf.extend_from_slice(lm);
    buf.extend_from_slice(b"\r\nETag: ");
    buf.extend_from_slice(etag);
    if close {
        buf.extend_from_slice(b"\r\nConnection: close");
    }
    buf.extend_from_slice(b"\r\n\r\n");
    let head_len = buf.len();
    if let Some(b) = body {
        buf.extend_from_slice(b);
    }
    Rendered {
        buf,
        head_len,
        date_off,
    }
}

impl Cache {
    /// A cache serving files under `root` (already canonical).
    pub(crate) fn new(root: PathBuf, now_secs: u64) -> Cache {
        let mut date = [0u8; DATE_LEN];
        http_date(now_secs, &mut date);
        Cache {
            root,
            index: HashMap::new(),
            entries: Vec::new(),
            date,
            date_secs: now_secs,
            path_buf: PathBuf::new(),
        }
    }

    /// The current `Date` value.
    pub(crate) fn date(&self) -> &[u8; DATE_LEN] {
        &self.date
    }

    /// Advance the clock; re-render every `Date` if the second changed.
    pub(crate) fn tick(&mut self, now_secs: u64) {
        if now_secs == self.date_secs {
            return;
        }
        self.date_secs = now_secs;
        http_date(now_secs, &mut self.date);
        for e in &mut self.entries {
            for r in e.resp.iter_mut().chain(e.not_modified.iter_mut()) {
                r.buf[r.date_off..r.date_off + DATE_LEN].copy_from_slice(&self.date);
            }
        }
    }

    /// Find (or load) the file for a normalised path.
    pub(crate) fn lookup(&mut self, norm: &[u8], is_dir: bool) -> Lookup {
        if let Some(&i) = self.index.get(norm) {
            return Lookup::Hit(i);
        }
        if self.entries.len() >= MAX_ENTRIES {
            return Lookup::Full;
        }
        match self.load(norm, is_dir) {
            Ok(Some(e)) => {
                let i = self.entries.len() as u32;
                self.entries.push(e);
                self.index.insert(norm.into(), i);
                Lookup::Hit(i)
            }
            _ => Lookup::NotFound,
        }
    }

    /// Resolve `norm` under the root: the canonical path (symlinks
    /// followed) must stay inside the canonical root, else it is not found.
    fn load(&mut self, norm: &[u8], is_dir: bool) -> io::Result<Option<Entry>> {
        let rel = Path::new(std::ffi::OsStr::from_bytes(
            norm.strip_prefix(b"/").unwrap_or(norm),
        ));
        self.path_buf.clear();
        self.path_buf.push(&self.root);
        self.path_buf.push(rel);
        let mut canon = match std::fs::canonicalize(&self.path_buf) {
            Ok(c) => c,
            Err(_) => return Ok(None),
        };
        if !canon.starts_with(&self.root) {
            return Ok(None);
        }
        let mut meta = std::fs::metadata(&canon)?;
        if meta.is_dir() || is_dir {
            if !meta.is_dir() {
                return Ok(None);
            }
            canon.push("index.html");
            canon = match std::fs::canonicalize(&canon) {
                Ok(c) if c.starts_with(&self.root) => c,
                _ => return Ok(None),
            };
            meta = std::fs::metadata(&canon)?;
        }
        if !meta.is_file() {
            return Ok(None);
        }
        let mut file = File::open(&canon)?;
        let len = meta.len();
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut lm = [0u8; DATE_LEN];
        http_date(mtime, &mut lm);
        let etag = format!("\"{len:x}-{mtime:x}\"").into_bytes();
        let ctype = content_type(canon.as_os_str().as_bytes());
        let body = if len <= BODY_CACHE_MAX {
            let mut b = Vec::with_capacity(len as usize);
            file.read_to_end(&mut b)?;
            if b.len() as u64 != len {
                return Ok(None);
            }
            Some(b)
        } else {
            None
        };
        let d = self.date;
        let mk = |close: bool, b: Option<&[u8]>| render(200, &d, ctype, len, &lm, &etag, close, b);
        let nm = |close: bool| render(304, &d, ctype, len, &lm, &etag, close, None);
        Ok(Some(Entry {
            resp: [mk(false, body.as_deref()), mk(true, body.as_deref())],
            not_modified: [nm(false), nm(true)],
            etag,
            last_modified: lm,
            len,
            body_cached: body.is_some(),
            file,
        }))
    }
}
