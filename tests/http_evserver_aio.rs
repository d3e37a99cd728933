//! evserver `--mode aio` (network AIO completions: multishot accept,
//! pooled multishot receive, send, sendfile) against real clients nobody
//! here wrote (curl, Python's http.client) and raw sockets: the same checks
//! as readiness mode's `http_evserver.rs` — 200, HEAD, 304, 404, 405,
//! keep-alive, pipelining, 4xx, traversal refused, slowloris closed, fd
//! exhaustion survived, SIGTERM exits — plus what is AIO's own: bodies by
//! sendfile (`--sendfile on`, and files past the copy limit), a long
//! pipelined burst answered in order, and a client that pipelines without
//! reading (the receive pauses instead of buffering without bound). Runs
//! the built example binary on each backend.

#[macro_use]
mod util;

use kevent::Backend;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

backends_complete_test!();

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn evserver_bin() -> PathBuf {
    // tests live in target/<profile>/deps; examples in target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join("evserver");
    assert!(
        p.exists(),
        "{} missing: cargo builds examples with the tests",
        p.display()
    );
    p
}

fn backend_arg(b: Backend) -> &'static str {
    match b {
        Backend::IoUring => "uring",
        _ => "epoll",
    }
}

fn start(b: Backend, extra: &[&str]) -> Server {
    let mut child = Command::new(evserver_bin())
        .args([
            "--addr",
            "127.0.0.1:0",
            "--quiet",
            "--backend",
            backend_arg(b),
            "--mode",
            "aio",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    Server { child, port }
}

fn curl(s: &Server, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args.iter().map(|a| a.replace("PORT", &s.port.to_string())))
        .output()
        .expect("curl is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Send raw bytes, read until the server closes or 2 s pass.
fn raw(s: &Server, req: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn index_len() -> usize {
    std::fs::metadata(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/www/index.html"
    ))
    .unwrap()
    .len() as usize
}

backend_test!(curl_get_head_304_404_405, |b: Backend| {
    let s = start(b, &[]);
    let r = curl(&s, &["-i", "http://127.0.0.1:PORT/"]);
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    for h in [
        "Content-Type: text/html",
        "Content-Length: 3931",
        "Date: ",
        "Last-Modified: ",
        "ETag: \"",
    ] {
        assert!(r.contains(h), "missing {h}: {r}");
    }
    assert_eq!(index_len(), 3931);
    assert!(r.ends_with("</html>\n"));
    let h = curl(&s, &["-I", "http://127.0.0.1:PORT/index.html"]);
    assert!(
        h.starts_with("HTTP/1.1 200 OK") && h.contains("Content-Length: 3931"),
        "{h}"
    );
    let etag = r
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .unwrap()
        .trim()
        .to_string();
    let nm = curl(
        &s,
        &[
            "-i",
            "-H",
            &format!("If-None-Match: {etag}"),
            "http://127.0.0.1:PORT/",
        ],
    );
    assert!(nm.starts_with("HTTP/1.1 304"), "{nm}");
    let lm = r
        .lines()
        .find_map(|l| l.strip_prefix("Last-Modified: "))
        .unwrap()
        .trim()
        .to_string();
    let nm = curl(
        &s,
        &[
            "-i",
            "-H",
            &format!("If-Modified-Since: {lm}"),
            "http://127.0.0.1:PORT/",
        ],
    );
    assert!(nm.starts_with("HTTP/1.1 304"), "{nm}");
    let nf = curl(&s, &["-i", "http://127.0.0.1:PORT/no/such/file"]);
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    let na = curl(&s, &["-i", "-X", "POST", "http://127.0.0.1:PORT/"]);
    assert!(
        na.starts_with("HTTP/1.1 405") && na.contains("Allow: GET, HEAD"),
        "{na}"
    );
});

backend_test!(curl_keep_alive_reuses_connection, |b: Backend| {
    let s = start(b, &[]);
    let out = curl(
        &s,
        &[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}:%{num_connects} ",
            "http://127.0.0.1:PORT/",
            "http://127.0.0.1:PORT/index.html",
            "http://127.0.0.1:PORT/",
        ],
    );
    assert_eq!(out.trim(), "200:1 200:0 200:0", "{out}");
});

backend_test!(python_http_client, |b: Backend| {
    let s = start(b, &[]);
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {})\n\
         for p in ['/', '/index.html', '/missing', '/']:\n\
         \x20   c.request('GET', p)\n\
         \x20   r = c.getresponse()\n\
         \x20   body = r.read()\n\
         \x20   print(r.status, len(body), r.getheader('Content-Type'))\n\
         c.request('HEAD', '/')\n\
         r = c.getresponse(); r.read()\n\
         print(r.status, r.getheader('Content-Length'))\n",
        s.port
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "200 3931 text/html; charset=utf-8",
            "200 3931 text/html; charset=utf-8",
            "404 14 text/plain; charset=utf-8",
            "200 3931 text/html; charset=utf-8",
            "200 3931"
        ],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
});

backend_test!(pipelined_requests_answered_in_order, |b: Backend| {
    let s = start(b, &[]);
    let r = raw(
        &s,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<&str> = r.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK"
        ],
        "{r}"
    );
});

backend_test!(bad_requests_get_4xx, |b: Backend| {
    let s = start(b, &[]);
    assert!(raw(&s, b"GARBAGE\x01\r\n\r\n").starts_with("HTTP/1.1 400"));
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(3000));
    assert!(raw(&s, long.as_bytes()).starts_with("HTTP/1.1 414"));
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(9000));
    assert!(raw(&s, huge.as_bytes()).starts_with("HTTP/1.1 431"));
    let body = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    assert!(raw(&s, body).starts_with("HTTP/1.1 413"));
});

fn symlink_root() -> (PathBuf, tempdir_lite::Dir) {
    let d = tempdir_lite::Dir::new();
    std::fs::write(d.0.join("index.html"), b"inside").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", d.0.join("leak")).unwrap();
    std::os::unix::fs::symlink("/etc", d.0.join("etcdir")).unwrap();
    (d.0.clone(), d)
}

mod tempdir_lite {
    pub(super) struct Dir(pub(super) std::path::PathBuf);
    impl Dir {
        pub(super) fn new() -> Dir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "evserver-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

backend_test!(traversal_never_leaves_root, |b: Backend| {
    let (root, _d) = symlink_root();
    let s = start(b, &["--root", root.to_str().unwrap()]);
    for t in [
        "/../etc/passwd",
        "/%2e%2e/etc/passwd",
        "/%2e%2e%2fetc%2fpasswd",
        "/a/../../etc/passwd",
        "/..%5c..%5cetc/passwd",
        "/leak",
        "/etcdir/passwd",
        "//etc/passwd",
    ] {
        let r = raw(
            &s,
            format!("GET {t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(!r.contains("root:"), "{t} leaked: {r}");
        assert!(
            r.starts_with("HTTP/1.1 404") || r.starts_with("HTTP/1.1 400"),
            "{t}: {r}"
        );
    }
    let r = curl(
        &s,
        &["--path-as-is", "http://127.0.0.1:PORT/../../etc/passwd"],
    );
    assert!(!r.contains("root:"));
    assert_eq!(curl(&s, &["http://127.0.0.1:PORT/"]), "inside");
    let _ = Path::new(&root);
});

backend_test!(slowloris_closed_by_idle_timeout, |b: Backend| {
    let s = start(b, &["--idle-timeout", "0.5"]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    // Keep trickling header bytes: the request's own age still counts.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        if c.write_all(b"X-a: b\r\n").is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "not closed after {took:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // An idle keep-alive connection is closed too.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
});

backend_test!(fd_exhaustion_is_survived, |b: Backend| {
    let s = start(b, &["--max-fds", "48"]);
    // Hold more connections than the server has descriptors.
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", s.port)) {
            held.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let ticks = |pid: u32| -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = st[st.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let t0 = ticks(s.child.id());
    std::thread::sleep(Duration::from_millis(500));
    let spent = ticks(s.child.id()) - t0;
    assert!(
        spent < 25,
        "server spins while out of fds ({spent} ticks in 0.5 s)"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let r = curl(
        &s,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:PORT/",
        ],
    );
    assert_eq!(r, "200", "server did not recover");
});

backend_test!(sigterm_exits_cleanly, |b: Backend| {
    let mut s = start(b, &[]);
    assert_eq!(
        curl(
            &s,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.0.0.1:PORT/"
            ]
        ),
        "200"
    );
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
});

backend_test!(sendfile_on_serves_the_same_bytes, |b: Backend| {
    let s = start(b, &["--sendfile", "on"]);
    let want = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/www/index.html"
    ))
    .unwrap();
    let got = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/", s.port))
        .output()
        .unwrap()
        .stdout;
    assert_eq!(got, want);
    // HEAD sends no body, by sendfile or not.
    let h = curl(&s, &["-I", "http://127.0.0.1:PORT/"]);
    assert!(
        h.starts_with("HTTP/1.1 200") && h.contains("Content-Length: 3931"),
        "{h}"
    );
    // Keep-alive across sendfile responses.
    let out = curl(
        &s,
        &[
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}:%{size_download}:%{num_connects} ",
            "http://127.0.0.1:PORT/",
            "http://127.0.0.1:PORT/index.html",
        ],
    );
    assert_eq!(out.trim(), "200:3931:1 200:3931:0", "{out}");
});

/// A root holding a file larger than the body cache (1 MiB) and one past
/// the copy limit (64 KiB).
fn big_root() -> (tempdir_lite::Dir, Vec<u8>, Vec<u8>) {
    let d = tempdir_lite::Dir::new();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mid: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(d.0.join("big.bin"), &big).unwrap();
    std::fs::write(d.0.join("mid.bin"), &mid).unwrap();
    std::fs::write(d.0.join("index.html"), b"small").unwrap();
    (d, big, mid)
}

backend_test!(large_files_by_sendfile_keep_alive, |b: Backend| {
    let (d, big, mid) = big_root();
    for mode in ["off", "on"] {
        let s = start(b, &["--root", d.0.to_str().unwrap(), "--sendfile", mode]);
        let script = format!(
            "import http.client, sys\n\
             c = http.client.HTTPConnection('127.0.0.1', {})\n\
             for p in ['/big.bin', '/index.html', '/mid.bin', '/big.bin']:\n\
             \x20   c.request('GET', p)\n\
             \x20   r = c.getresponse()\n\
             \x20   body = r.read()\n\
             \x20   sys.stdout.buffer.write(b'%d %d %d\\n' % (r.status, len(body), sum(body) % 1000003))\n",
            s.port
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let sum = |v: &[u8]| v.iter().map(|&x| x as u64).sum::<u64>() % 1_000_003;
        let want = format!(
            "200 {} {}\n200 5 {}\n200 {} {}\n200 {} {}\n",
            big.len(),
            sum(&big),
            sum(b"small"),
            mid.len(),
            sum(&mid),
            big.len(),
            sum(&big)
        );
        assert_eq!(
            text,
            want,
            "sendfile {mode}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
});

backend_test!(long_pipelined_burst_in_order, |b: Backend| {
    let s = start(b, &[]);
    let mut req = Vec::new();
    for i in 0..200 {
        let path = if i % 3 == 1 { "/missing" } else { "/" };
        req.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    }
    req.extend_from_slice(b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let r = raw(&s, &req);
    let statuses: Vec<&str> = r.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(statuses.len(), 201, "{}", &r[..r.len().min(400)]);
    for (i, st) in statuses.iter().enumerate() {
        let want = if i < 200 && i % 3 == 1 {
            "HTTP/1.1 404 Not Found"
        } else {
            "HTTP/1.1 200 OK"
        };
        assert_eq!(*st, want, "response {i}");
    }
    // 200 bodies of 3931 bytes for the GETs of '/', none for the HEAD.
    let gets = (0..200).filter(|i| i % 3 != 1).count();
    assert!(r.len() > gets * 3931, "{} bytes", r.len());
});

backend_test!(
    client_that_never_reads_is_not_buffered_without_bound,
    |b: Backend| {
        let s = start(b, &[]);
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        c.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        // Pipeline requests without reading a byte: the server's sends fill
        // the socket, then it must stop receiving, so our writes block.
        let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Bounded by bytes, not time (a loaded machine only slows the
        // server down): the writes must block before 64 MiB went in.
        let mut written = 0usize;
        let mut blocked = false;
        let t = Instant::now();
        while written < 64 << 20 && t.elapsed() < Duration::from_secs(120) {
            match c.write(one) {
                Ok(n) => written += n,
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
        }
        assert!(blocked, "server kept reading: {written} bytes");
        // Less than a few MB of requests taken in (socket buffers, the pause
        // threshold): not everything we could write.
        assert!(written < 64 << 20, "{written} bytes accepted");
        // Reading now drains the answers and the server resumes.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        while got < 1 << 20 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        assert!(got >= 1 << 20, "answers stopped after {got} bytes");
        // The server still answers others.
        assert_eq!(
            curl(
                &s,
                &[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:PORT/"
                ]
            ),
            "200"
        );
    }
);
