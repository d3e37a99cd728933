//! HTTP helpers that allocate nothing: dates, request-target
//! normalisation, header inspection, canned error responses.

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) const DATE_LEN: usize = 29;

const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Format `secs` since the Unix epoch as an IMF-fixdate (RFC 9110 §5.6.7).
/// Civil-from-days after Howard Hinnant's algorithm.
pub(crate) fn http_date(secs: u64, out: &mut [u8; DATE_LEN]) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem / 60) % 60, rem % 60);
    let wd = DAYS[(days % 7) as usize];
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let two = |v: u64| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    out[0..3].copy_from_slice(wd);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(d as u64));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(mo - 1) as usize]);
    out[11] = b' ';
    let y = y.clamp(0, 9999) as u64;
    out[12..14].copy_from_slice(&two(y / 100));
    out[14..16].copy_from_slice(&two(y % 100));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(h));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(m));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(s));
    out[25..29].copy_from_slice(b" GMT");
}

/// Segments a normalised path may have.
const MAX_DEPTH: usize = 128;

/// Why a request target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Not origin-form, bad percent-encoding, or a NUL byte: 400.
    Bad,
    /// Tries to leave the root (`..` above it): refused as 404.
    Escape,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise a request target into `out` as `/seg/seg...`: query and
/// fragment dropped, percent-decoding applied *before* dot-segments are
/// resolved (so `%2e%2e` is `..`), empty and `.` segments dropped, `..`
/// popping a segment and refused at the root. Returns whether the target
/// named a directory (ended in `/`, `.` or `..`).
pub(crate) fn normalise(target: &[u8], out: &mut Vec<u8>) -> Result<bool, PathError> {
    out.clear();
    let mut t = target;
    // Absolute-form (`http://host/path`): keep the path.
    if let Some(rest) = t
        .strip_prefix(b"http://")
        .or_else(|| t.strip_prefix(b"https://"))
    {
        t = match rest.iter().position(|&b| b == b'/') {
            Some(i) => &rest[i..],
            None => b"/",
        };
    }
    if t.first() != Some(&b'/') {
        return Err(PathError::Bad);
    }
    if let Some(i) = t.iter().position(|&b| b == b'?' || b == b'#') {
        t = &t[..i];
    }
    // `out` is `/` then `seg/` per segment kept; `..` pops the last one
    // (found by scanning back for its `/`: no side array to initialise).
    let mut depth = 0usize;
    let mut seg_start = 1usize; // start of the current segment in `out`
    let mut dir = true;
    out.push(b'/');
    let mut i = 1;
    let finish_seg =
        |out: &mut Vec<u8>, depth: &mut usize, seg_start: usize| -> Result<bool, PathError> {
            let seg = &out[seg_start..];
            if seg.is_empty() || seg == b"." {
                out.truncate(seg_start);
                return Ok(true);
            }
            if seg == b".." {
                if *depth == 0 {
                    return Err(PathError::Escape);
                }
                *depth -= 1;
                // Drop `..` and the segment before it (`prev/`).
                let prev_end = seg_start - 1; // the '/' ending the previous segment
                let start = out[..prev_end]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .map_or(1, |p| p + 1);
                out.truncate(start);
                return Ok(true);
            }
            if *depth == MAX_DEPTH {
                return Err(PathError::Bad);
            }
            *depth += 1;
            out.push(b'/');
            Ok(false)
        };
    while i <= t.len() {
        let b = if i == t.len() { b'/' } else { t[i] };
        let (byte, adv) = if b == b'%' {
            let (Some(&h), Some(&l)) = (t.get(i + 1), t.get(i + 2)) else {
                return Err(PathError::Bad);
            };
            match (hex(h), hex(l)) {
                (Some(h), Some(l)) => (h << 4 | l, 3),
                _ => return Err(PathError::Bad),
            }
        } else {
            (b, 1)
        };
        if byte == 0 {
            return Err(PathError::Bad);
        }
        if byte == b'/' || byte == b'\\' {
            dir = finish_seg(out, &mut depth, seg_start)?;
            seg_start = out.len();
        } else {
            out.push(byte);
        }
        i += adv;
    }
    // Drop the trailing '/' (kept only for the root).
    if out.len() > 1 && out.last() == Some(&b'/') {
        out.pop();
    }
    Ok(dir)
}

/// Whether a comma-separated header value contains `token`
/// (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison).
pub(crate) fn etag_matches(value: &[u8], etag: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        t == b"*" || t == etag
    })
}

/// Parse a decimal `Content-Length`.
pub(crate) fn parse_len(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u64)
    })
}

/// The `Content-Type` for a file name.
pub(crate) fn content_type(name: &[u8]) -> &'static str {
    let ext = match name.iter().rposition(|&b| b == b'.') {
        Some(i) => &name[i + 1..],
        None => b"",
    };
    let mut lower = [0u8; 8];
    if ext.len() > lower.len() {
        return "application/octet-stream";
    }
    for (d, s) in lower.iter_mut().zip(ext) {
        *d = s.to_ascii_lowercase();
    }
    match &lower[..ext.len()] {
        b"html" | b"htm" => "text/html; charset=utf-8",
        b"css" => "text/css; charset=utf-8",
        b"js" | b"mjs" => "text/javascript; charset=utf-8",
        b"json" => "application/json",
        b"txt" => "text/plain; charset=utf-8",
        b"xml" => "application/xml",
        b"svg" => "image/svg+xml",
        b"png" => "image/png",
        b"jpg" | b"jpeg" => "image/jpeg",
        b"gif" => "image/gif",
        b"webp" => "image/webp",
        b"ico" => "image/x-icon",
        b"wasm" => "application/wasm",
        b"pdf" => "application/pdf",
        b"woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// A status line's reason phrase.
pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let mut d = [0u8; DATE_LEN];
        http_date(784_111_777, &mut d);
        assert_eq!(&d, b"Sun, 06 Nov 1994 08:49:37 GMT");
        http_date(0, &mut d);
        assert_eq!(&d, b"Thu, 01 Jan 1970 00:00:00 GMT");
        http_date(951_782_400, &mut d); // leap day
        assert_eq!(&d, b"Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn paths() {
        let mut o = Vec::new();
        let n = |t: &[u8], o: &mut Vec<u8>| normalise(t, o).map(|d| (o.clone(), d));
        assert_eq!(n(b"/", &mut o), Ok((b"/".to_vec(), true)));
        assert_eq!(
            n(b"/index.html?x=1", &mut o),
            Ok((b"/index.html".to_vec(), false))
        );
        assert_eq!(n(b"/a/./b//c", &mut o), Ok((b"/a/b/c".to_vec(), false)));
        assert_eq!(n(b"/a/../b", &mut o), Ok((b"/b".to_vec(), false)));
        assert_eq!(n(b"/a/b/../c", &mut o), Ok((b"/a/c".to_vec(), false)));
        assert_eq!(n(b"/a/bb/../../c", &mut o), Ok((b"/c".to_vec(), false)));
        assert_eq!(n(b"/a/b/c/../../..", &mut o), Ok((b"/".to_vec(), true)));
        assert_eq!(n(b"/a/b/..", &mut o), Ok((b"/a".to_vec(), true)));
        assert_eq!(n(b"/a/b/../../..", &mut o), Err(PathError::Escape));
        assert_eq!(n(b"/a/", &mut o), Ok((b"/a".to_vec(), true)));
        assert_eq!(n(b"/../etc/passwd", &mut o), Err(PathError::Escape));
        assert_eq!(n(b"/%2e%2e/etc/passwd", &mut o), Err(PathError::Escape));
        assert_eq!(
            n(b"/a/%2e%2e%2f%2e%2e%2fetc", &mut o),
            Err(PathError::Escape)
        );
        assert_eq!(n(b"/a/..%5c..%5cetc", &mut o), Err(PathError::Escape));
        assert_eq!(n(b"/%00", &mut o), Err(PathError::Bad));
        assert_eq!(n(b"/%zz", &mut o), Err(PathError::Bad));
        assert_eq!(n(b"index.html", &mut o), Err(PathError::Bad));
        assert_eq!(n(b"http://h/x", &mut o), Ok((b"/x".to_vec(), false)));
    }

    #[test]
    fn headers() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(etag_matches(b"W/\"1-2\", \"3\"", b"\"1-2\""));
        assert_eq!(parse_len(b" 42 "), Some(42));
        assert_eq!(parse_len(b"4x"), None);
        assert_eq!(content_type(b"/a/index.HTML"), "text/html; charset=utf-8");
    }
}
