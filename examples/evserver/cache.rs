//! The per-thread file cache: for each file served, its response heads
//! rendered once (one per `Connection` variant, `200` and `304`) and its
//! body read once (when small), right after the keep-alive `200` head in
//! one buffer: the common response (HTTP/1.1 keep-alive, `GET` or `HEAD`)
//! is one `send` of a slice of it. The other variants copy their head
//! into the connection's buffer with the current `Date` and send it with
//! the same body in one `sendmsg`; `--sendfile` sends a head, then the
//! file.
//!
//! Entries are shared (`Arc`) with the responses in flight and never
//! change under them: reloading a changed file makes a new entry, and the
//! once-a-second `Date` of the keep-alive head is patched in place only
//! when no response holds the entry (else on a copy). Each entry is
//! revalidated at most once a second — on the first request for it in a
//! new second of the cache's clock: its path is resolved again (the root
//! check included) and stat'ed, and a change of inode, device, size or
//! mtime (ns) reloads it; a file gone is dropped. In steady state that is
//! no syscall per request.

use crate::http::{content_type, http_date, DATE_LEN};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// By default, bodies up to this size are kept in memory; larger ones go
/// by `sendfile` from the open file.
pub(crate) const BODY_CACHE_MAX: u64 = 1 << 20;
/// At most this many files are cached per thread; past it, lookups of new
/// files fail with 503 rather than grow without bound.
pub(crate) const MAX_ENTRIES: usize = 16_384;

/// Which `Connection` header a response carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnHdr {
    /// None (HTTP/1.1 keep-alive is the default).
    None = 0,
    /// `Connection: close`.
    Close = 1,
    /// `Connection: keep-alive` (an HTTP/1.0 client that asked for it).
    KeepAlive = 2,
}

/// A cached file (immutable while shared, but for the `Date` in `ka`).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The keep-alive `200` head (no `Connection` header), then the body
    /// if it is cached: the hot path's one buffer.
    pub(crate) ka: Box<[u8]>,
    /// Where the head ends in `ka`.
    pub(crate) ka_head: usize,
    /// The second whose `Date` `ka` carries.
    stamped: u64,
    /// The `200` heads, by [`ConnHdr`].
    pub(crate) ok: [Box<[u8]>; 3],
    /// The `304` heads, by [`ConnHdr`].
    pub(crate) not_modified: [Box<[u8]>; 3],
    /// Where the `Date` value starts in the `200` heads.
    pub(crate) ok_date: usize,
    /// Where the `Date` value starts in the `304` heads.
    pub(crate) nm_date: usize,
    pub(crate) etag: Box<[u8]>,
    pub(crate) last_modified: [u8; DATE_LEN],
    pub(crate) len: u64,
    /// Whether the body is cached (in `ka`, after the head).
    pub(crate) body_cached: bool,
    /// Open file, for `sendfile`.
    pub(crate) file: Arc<File>,
    id: FileId,
}

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    Hit(Arc<Entry>),
    NotFound,
    /// The cache is full, or the file could not be opened for now (out of
    /// descriptors or memory): 503, try again.
    Unavailable,
}

#[derive(Debug)]
struct Slot {
    entry: Arc<Entry>,
    /// The cache clock's second of the last check.
    checked: u64,
    is_dir: bool,
}

/// The index's hasher: FxHash's multiply-rotate over 8-byte words (the
/// keys are request paths, not attacker-chosen in a way that matters for
/// a per-thread cache of at most `MAX_ENTRIES`; SipHash cost ~190
/// instructions per request here).
#[derive(Debug, Default, Clone, Copy)]
struct PathHasher(u64);

impl std::hash::Hasher for PathHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
        self.0 = h;
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type PathMap<V> = HashMap<Box<[u8]>, V, std::hash::BuildHasherDefault<PathHasher>>;

/// The cache of one thread.
#[derive(Debug)]
pub(crate) struct Cache {
    root: PathBuf,
    index: PathMap<Slot>,
    date: [u8; DATE_LEN],
    date_secs: u64,
    path_buf: PathBuf,
    /// Reloads of changed files (for the stats line).
    pub(crate) reloads: u64,
    /// Bodies up to this size are kept in memory.
    body_max: u64,
}

fn render(
    code: u16,
    ctype: &str,
    len: u64,
    lm: &[u8; DATE_LEN],
    etag: &[u8],
    conn: ConnHdr,
) -> (Box<[u8]>, usize) {
    use std::io::Write;
    let mut buf = Vec::with_capacity(256);
    let _ = write!(
        buf,
        "HTTP/1.1 {code} {}\r\nServer: kevent-evserver\r\nDate: ",
        crate::http::reason(code)
    );
    let date_off = buf.len();
    buf.extend_from_slice(&[b'-'; DATE_LEN]);
    if code == 200 {
        let _ = write!(buf, "\r\nContent-Type: {ctype}\r\nContent-Length: {len}");
    }
    buf.extend_from_slice(b"\r\nLast-Modified: ");
    buf.extend_from_slice(lm);
    buf.extend_from_slice(b"\r\nETag: ");
    buf.extend_from_slice(etag);
    match conn {
        ConnHdr::None => {}
        ConnHdr::Close => buf.extend_from_slice(b"\r\nConnection: close"),
        ConnHdr::KeepAlive => buf.extend_from_slice(b"\r\nConnection: keep-alive"),
    }
    buf.extend_from_slice(b"\r\n\r\n");
    (buf.into_boxed_slice(), date_off)
}

impl Cache {
    /// A cache serving files under `root` (already canonical), keeping
    /// bodies up to `body_max` bytes in memory.
    pub(crate) fn new(root: PathBuf, now_secs: u64, body_max: u64) -> Cache {
        let mut date = [0u8; DATE_LEN];
        http_date(now_secs, &mut date);
        Cache {
            root,
            index: PathMap::default(),
            date,
            date_secs: now_secs,
            path_buf: PathBuf::new(),
            reloads: 0,
            body_max,
        }
    }

    /// The current `Date` value.
    pub(crate) fn date(&self) -> &[u8; DATE_LEN] {
        &self.date
    }

    /// Advance the clock; re-format the `Date` if the second changed.
    pub(crate) fn tick(&mut self, now_secs: u64) {
        if now_secs != self.date_secs {
            self.date_secs = now_secs;
            http_date(now_secs, &mut self.date);
        }
    }

    /// Find (or load) the file for a normalised path, revalidating a
    /// cached entry not checked yet in this second.
    pub(crate) fn lookup(&mut self, norm: &[u8], is_dir: bool) -> Lookup {
        let now = self.date_secs;
        if let Some(s) = self.index.get(norm) {
            if s.checked == now && s.is_dir == is_dir {
                return Lookup::Hit(s.entry.clone());
            }
        }
        self.refresh(norm, is_dir, now)
    }

    /// The slow path: load, or revalidate and maybe reload. `/d` and
    /// `/d/` share a key (both serve `d/index.html`); a request of the
    /// other form is checked but does not replace the entry.
    fn refresh(&mut self, norm: &[u8], is_dir: bool, now: u64) -> Lookup {
        let resolved = self.resolve(norm, is_dir);
        let full = self.index.len() >= MAX_ENTRIES;
        match (self.index.get_mut(norm), &resolved) {
            (Some(s), Some((_, m))) if FileId::of(m) == s.entry.id => {
                if s.is_dir == is_dir {
                    s.checked = now;
                }
                if s.entry.stamped != now {
                    // In place if no response holds it, else on a copy:
                    // bytes in flight never change.
                    Arc::make_mut(&mut s.entry).stamp(now, &self.date);
                }
                return Lookup::Hit(s.entry.clone());
            }
            (Some(s), None) => {
                if s.is_dir == is_dir {
                    self.index.remove(norm);
                }
                return Lookup::NotFound;
            }
            (Some(_), Some(_)) => self.reloads += 1,
            (None, _) if full => return Lookup::Unavailable,
            (None, None) => return Lookup::NotFound,
            (None, Some(_)) => {}
        }
        let Some((canon, meta)) = resolved else {
            return Lookup::NotFound;
        };
        match load(&canon, &meta, self.body_max) {
            Ok(Some(mut e)) => {
                e.stamp(now, &self.date);
                let entry = Arc::new(e);
                self.index.insert(
                    norm.into(),
                    Slot {
                        entry: entry.clone(),
                        checked: now,
                        is_dir,
                    },
                );
                Lookup::Hit(entry)
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
                ) =>
            {
                // Keep what is cached; this is no verdict on the file.
                Lookup::Unavailable
            }
            _ => {
                self.index.remove(norm);
                Lookup::NotFound
            }
        }
    }

    /// Resolve `norm` under the root: the canonical path (symlinks
    /// followed) must stay inside the canonical root and name a regular
    /// file (a directory's `index.html`), else `None`.
    fn resolve(&mut self, norm: &[u8], is_dir: bool) -> Option<(PathBuf, std::fs::Metadata)> {
        let rel = Path::new(std::ffi::OsStr::from_bytes(
            norm.strip_prefix(b"/").unwrap_or(norm),
        ));
        self.path_buf.clear();
        self.path_buf.push(&self.root);
        self.path_buf.push(rel);
        let mut canon = std::fs::canonicalize(&self.path_buf).ok()?;
        if !canon.starts_with(&self.root) {
            return None;
        }
        let mut meta = std::fs::metadata(&canon).ok()?;
        if meta.is_dir() || is_dir {
            if !meta.is_dir() {
                return None;
            }
            canon.push("index.html");
            canon = std::fs::canonicalize(&canon)
                .ok()
                .filter(|c| c.starts_with(&self.root))?;
            meta = std::fs::metadata(&canon).ok()?;
        }
        meta.is_file().then_some((canon, meta))
    }
}

/// Open and render a resolved file. `None` if it changed while read.
fn load(canon: &Path, meta: &std::fs::Metadata, body_max: u64) -> io::Result<Option<Entry>> {
    let mut file = File::open(canon)?;
    // The identity of what was opened (it may differ from `meta` if the
    // path was replaced in between; what we read is what we describe).
    let meta_f = file.metadata()?;
    let id = FileId::of(&meta_f);
    if id.ino != meta.ino() || id.dev != meta.dev() {
        return Ok(None);
    }
    let len = id.size;
    let mtime = u64::try_from(meta_f.mtime()).unwrap_or(0);
    let mut lm = [0u8; DATE_LEN];
    http_date(mtime, &mut lm);
    let etag = format!("\"{len:x}-{:x}\"", id.mtime_ns.max(0)).into_bytes();
    let ctype = content_type(canon.as_os_str().as_bytes());
    let (head, off) = render(200, ctype, len, &lm, &etag, ConnHdr::None);
    let ka_head = head.len();
    let mut ka = head.into_vec();
    let body_cached = len <= body_max;
    if body_cached {
        ka.reserve_exact(len as usize);
        (&mut file).take(len + 1).read_to_end(&mut ka)?;
        if ka.len() as u64 != ka_head as u64 + len {
            return Ok(None);
        }
    }
    debug_assert_eq!(off, ok_date_of(&ka));
    let mk = |code: u16| {
        let mut off = 0;
        let heads = [ConnHdr::None, ConnHdr::Close, ConnHdr::KeepAlive].map(|conn| {
            let (h, o) = render(code, ctype, len, &lm, &etag, conn);
            off = o;
            h
        });
        (heads, off)
    };
    let (ok, ok_date) = mk(200);
    let (not_modified, nm_date) = mk(304);
    Ok(Some(Entry {
        ka_head,
        ka: ka.into_boxed_slice(),
        stamped: u64::MAX,
        ok,
        not_modified,
        ok_date,
        nm_date,
        etag: etag.into_boxed_slice(),
        last_modified: lm,
        len,
        body_cached,
        file: Arc::new(file),
        id,
    }))
}

/// Where `Date: ` ends in a rendered head (debug check of `render`).
fn ok_date_of(h: &[u8]) -> usize {
    h.windows(6)
        .position(|w| w == b"Date: ")
        .map_or(0, |p| p + 6)
}

impl Entry {
    /// The cached body, if any.
    pub(crate) fn body(&self) -> Option<&[u8]> {
        self.body_cached.then(|| &self.ka[self.ka_head..])
    }

    /// Put the `Date` of second `secs` into the keep-alive head.
    fn stamp(&mut self, secs: u64, date: &[u8; DATE_LEN]) {
        self.ka[self.ok_date..self.ok_date + DATE_LEN].copy_from_slice(date);
        self.stamped = secs;
    }

    /// Append the head for a response (`304` if `not_modified`) with the
    /// `Connection` variant `conn` to `out`, with the current `date`.
    pub(crate) fn head_into(
        &self,
        not_modified: bool,
        conn: ConnHdr,
        date: &[u8; DATE_LEN],
        out: &mut Vec<u8>,
    ) {
        let (h, off) = if not_modified {
            (&self.not_modified[conn as usize], self.nm_date)
        } else {
            (&self.ok[conn as usize], self.ok_date)
        };
        let start = out.len();
        out.extend_from_slice(h);
        out[start + off..start + off + DATE_LEN].copy_from_slice(date);
    }
}
