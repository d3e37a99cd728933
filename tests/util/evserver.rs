//! The evserver behaviour tests, shared by both modes: each test body
//! takes the backend and the [`Mode`], and [`evserver_tests!`] turns every
//! one into a `backend_test!` for one mode (`tests/http_evserver.rs`:
//! readiness, `tests/http_evserver_aio.rs`: network AIO). Against real
//! clients nobody here wrote (curl, Python's http.client) and raw sockets:
//! 200, HEAD, 304, 404, 405, keep-alive (HTTP/1.1 and HTTP/1.0's
//! `Connection: keep-alive`), pipelining (a long burst too), `--sendfile
//! on`/`off` (bodies past the body cache and past AIO's copy limit too),
//! `--threads 2`, edited files revalidated, a replaced or shrunk file
//! under a response in flight, traversal refused, slowloris answered 408
//! and closed, a client that never reads, fd exhaustion survived and
//! counted, SIGINT/SIGTERM drain (a slow reader's response completes), a
//! busy port refused. Runs the built example binary.
//!
//! Include with `#[macro_use] #[path = "util/evserver.rs"] mod evserver;`
//! after `#[macro_use] mod util;`.

#![allow(dead_code, unreachable_pub)]

use kevent::Backend;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which evserver `--mode` a test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Readiness,
    Aio,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Readiness => "readiness",
            Mode::Aio => "aio",
        }
    }
}

/// Every shared test, as one `backend_test!` each, for mode `$mode` (an
/// `evserver::Mode`).
macro_rules! evserver_tests {
    ($mode:expr) => {
        evserver_tests!(@each $mode;
            curl_get_head_304_404_405,
            curl_keep_alive_reuses_connection,
            python_http_client,
            pipelined_requests_answered_in_order,
            long_pipelined_burst_in_order,
            bad_requests_get_4xx,
            traversal_never_leaves_root,
            slowloris_closed_by_idle_timeout,
            lingering_close_is_bounded,
            client_that_never_reads_is_not_buffered_without_bound,
            client_stuck_on_a_large_answer_is_not_buffered_without_bound,
            fd_exhaustion_is_survived,
            sigterm_exits_cleanly,
            sendfile_on_serves_whole_files,
            large_files_keep_alive,
            file_shrunk_under_sendfile,
            replaced_file_keeps_response_in_flight,
            http10_keep_alive_honoured,
            edited_file_is_revalidated,
            two_threads_both_serve,
            sigint_completes_slow_readers_response,
            busy_port_is_refused,
            date_advances_on_keep_alive,
        );
    };
    (@each $mode:expr; $($name:ident),* $(,)?) => {
        $(backend_test!($name, |b: Backend| crate::evserver::$name(b, $mode));)*
    };
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// SIGINT, wait (at most `within`) for the exit; its status and the
    /// stderr (servers started with `start_loud`).
    #[track_caller]
    fn stop(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let st = wait_exit(&mut self.child, within);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (st, err)
    }
}

/// Wait for a child's exit, failing the test after `within`.
#[track_caller]
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t.elapsed() > within {
            let _ = child.kill();
            panic!("no exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A number in the server's `done:` line: the word before `what`.
#[track_caller]
fn stat(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("evserver: done:"))
        .unwrap_or_else(|| panic!("no done line in {stderr:?}"));
    let i = line
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line}"));
    line[..i]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line}"))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn evserver_bin() -> PathBuf {
    example_bin("evserver")
}

/// The built example `name`, first (once per test binary) rebuilt by
/// cargo if stale: `cargo test --test X` builds only the test, so without
/// this an edited server would be tested as last built.
pub fn example_bin(name: &str) -> PathBuf {
    // Tests live in <target>[/<triple>]/<profile>/deps; examples in
    // <target>[/<triple>]/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| build_examples(profile_dir));
    let p = profile_dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} missing: cargo builds examples with the tests",
        p.display()
    );
    p
}

/// `cargo build --example evserver --example httpload` for the target
/// directory, triple and profile the tests were built for.
fn build_examples(profile_dir: &Path) {
    // `<target>/tmp`: in the target directory of this build.
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", "evserver", "--example", "httpload"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if profile != "debug" {
        // `dev` builds into `debug`; any other profile into its name.
        cmd.args(["--profile", profile]);
    }
    // `<target>/<triple>/<profile>` when built with `--target`.
    let above = profile_dir.parent().unwrap();
    if above != target_dir {
        cmd.arg("--target").arg(above.file_name().unwrap());
    }
    let st = cmd.stdout(Stdio::null()).status().unwrap();
    assert!(st.success(), "building the examples failed: {cmd:?}");
}

pub fn backend_arg(b: Backend) -> &'static str {
    match b {
        Backend::IoUring => "uring",
        _ => "epoll",
    }
}

/// A quiet server (no stderr).
fn start(b: Backend, m: Mode, extra: &[&str]) -> Server {
    spawn(b, m, extra, true)
}

/// A server whose stderr (with its `done:` line) `Server::stop` returns.
fn start_loud(b: Backend, m: Mode, extra: &[&str]) -> Server {
    spawn(b, m, extra, false)
}

fn spawn(b: Backend, m: Mode, extra: &[&str], quiet: bool) -> Server {
    let mut child = Command::new(evserver_bin())
        .args(["--addr", "127.0.0.1:0", "--backend", backend_arg(b)])
        .args(["--mode", m.arg()])
        .args(quiet.then_some("--quiet"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(if quiet { Stdio::null() } else { Stdio::piped() })
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

/// The status code curl gets for `path`.
fn status(s: &Server, path: &str) -> String {
    let url = format!("http://127.0.0.1:PORT{path}");
    curl(s, &["-o", "/dev/null", "-w", "%{http_code}", &url])
}

/// `code:connects_made` per path, fetched by one curl (with `opts`) that
/// reuses its connection where the server keeps it.
fn codes_and_connects(s: &Server, opts: &[&str], paths: &[&str]) -> String {
    let mut args: Vec<String> = opts.iter().map(|o| o.to_string()).collect();
    for p in paths {
        args.extend(["-o".into(), "/dev/null".into()]);
        args.push(format!("http://127.0.0.1:PORT{p}"));
    }
    args.extend(["-w".into(), "%{http_code}:%{num_connects} ".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(s, &args).trim().to_string()
}

/// One response read off a keep-alive connection: status line, head, body.
struct Resp {
    status: String,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Read one response (head, then `Content-Length` bytes unless `head_only`).
#[track_caller]
fn read_resp(r: &mut impl BufRead, head_only: bool) -> Resp {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 "), "status line {status:?}");
    let mut head = String::new();
    loop {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "EOF in head: {head}");
        if l == "\r\n" {
            break;
        }
        head.push_str(&l);
    }
    let mut resp = Resp {
        status: status.trim().to_string(),
        head,
        body: Vec::new(),
    };
    let len: usize = resp
        .header("Content-Length")
        .map_or(0, |v| v.parse().unwrap());
    if !head_only {
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body).unwrap();
    }
    resp
}

/// Connect to `s`, with a read timeout.
fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Whether the peer has closed: the next read returns 0 (not a timeout).
#[track_caller]
fn at_eof(r: &mut impl Read) -> bool {
    let mut b = [0u8; 1];
    match r.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => panic!("read: {e} (expected data or EOF)"),
    }
}

fn index_len() -> usize {
    std::fs::metadata(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/www/index.html"
    ))
    .unwrap()
    .len() as usize
}

pub fn curl_get_head_304_404_405(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
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
    // Revalidation by either validator.
    for (ask, tell) in [
        ("If-None-Match", "ETag: "),
        ("If-Modified-Since", "Last-Modified: "),
    ] {
        let v = r.lines().find_map(|l| l.strip_prefix(tell)).unwrap().trim();
        let nm = curl(
            &s,
            &["-i", "-H", &format!("{ask}: {v}"), "http://127.0.0.1:PORT/"],
        );
        assert!(nm.starts_with("HTTP/1.1 304"), "{ask}: {nm}");
    }
    let nf = curl(&s, &["-i", "http://127.0.0.1:PORT/no/such/file"]);
    assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
    let na = curl(&s, &["-i", "-X", "POST", "http://127.0.0.1:PORT/"]);
    assert!(
        na.starts_with("HTTP/1.1 405") && na.contains("Allow: GET, HEAD"),
        "{na}"
    );
}

pub fn curl_keep_alive_reuses_connection(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
    let out = codes_and_connects(&s, &[], &["/", "/index.html", "/"]);
    assert_eq!(out, "200:1 200:0 200:0");
}

pub fn python_http_client(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
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
}

pub fn pipelined_requests_answered_in_order(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
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
}

pub fn bad_requests_get_4xx(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
    assert!(raw(&s, b"GARBAGE\x01\r\n\r\n").starts_with("HTTP/1.1 400"));
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(3000));
    assert!(raw(&s, long.as_bytes()).starts_with("HTTP/1.1 414"));
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(9000));
    assert!(raw(&s, huge.as_bytes()).starts_with("HTTP/1.1 431"));
    let body = b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    assert!(raw(&s, body).starts_with("HTTP/1.1 413"));
}

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

pub fn traversal_never_leaves_root(b: Backend, m: Mode) {
    let (root, _d) = symlink_root();
    let s = start(b, m, &["--root", root.to_str().unwrap()]);
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
}

pub fn slowloris_closed_by_idle_timeout(b: Backend, m: Mode) {
    let s = start(b, m, &["--idle-timeout", "0.5"]);
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
    // The 408 then EOF: the server closes gracefully (shut down, input
    // discarded), so the reply is never lost to a reset.
    let mut out = Vec::new();
    c.read_to_end(&mut out)
        .expect("a clean EOF after the 408, not a reset or a timeout");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500), "closed early: {took:?}");
    assert!(took < Duration::from_secs(4), "not closed after {took:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text:?}"
    );
    assert!(text.contains("Connection: close\r\n"), "{text}");
    // An idle keep-alive connection (one request answered) is closed too,
    // after the timeout, without a reply.
    let mut c = connect(&s);
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(read_resp(&mut r, false).status, "HTTP/1.1 200 OK");
    let t = Instant::now();
    assert!(at_eof(&mut r), "data after the reply");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(450), "closed early: {took:?}");
    assert!(took < Duration::from_secs(4), "not closed after {took:?}");
}

/// After an error answer the server shuts its side and discards what the
/// client still sends until the client's EOF — but not for ever: a client
/// that keeps sending is closed once the idle limit has passed since the
/// close began (nginx's lingering_time), however steadily it sends.
pub fn lingering_close_is_bounded(b: Backend, m: Mode) {
    let s = start(b, m, &["--idle-timeout", "0.5"]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.write_all(b"BAD REQUEST LINE\r\n\r\n").unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    r.get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 400 "), "{line:?}");
    // Keep sending: each write lands in the discarding server until it
    // closes (then the writes fail with a reset).
    let t = Instant::now();
    let mut failed = false;
    while t.elapsed() < Duration::from_secs(6) {
        if c.write_all(b"more input\r\n").is_err() {
            failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    assert!(failed, "still discarding input after {took:?}");
    assert!(took >= Duration::from_millis(400), "closed early: {took:?}");
    assert_eq!(status(&s, "/"), "200");
}

pub fn fd_exhaustion_is_survived(b: Backend, m: Mode) {
    let d = tempdir_lite::Dir::new();
    std::fs::write(d.0.join("index.html"), b"index").unwrap();
    std::fs::write(d.0.join("other.txt"), b"other").unwrap();
    let s = start_loud(b, m, &["--max-fds", "48", "--root", d.0.to_str().unwrap()]);
    // The index is cached (its file open) before the fds run out.
    assert_eq!(curl(&s, &["http://127.0.0.1:PORT/"]), "index");
    // Hold more connections than the server has descriptors.
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", s.port)) {
            held.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // While out of fds it still serves the connections it holds, and
    // refused the rest (accepted and reset: no reply).
    let mut served = Vec::new();
    let mut refused = 0;
    for c in &held {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = (&*c).write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut r = BufReader::new(c);
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(n) if n > 0 => {
                assert_eq!(line, "HTTP/1.1 200 OK\r\n");
                let mut rest = String::new();
                while r.read_line(&mut rest).unwrap() > 0 && !rest.ends_with("\r\n\r\n") {}
                let mut body = [0u8; 5];
                r.read_exact(&mut body).unwrap();
                assert_eq!(&body, b"index");
                served.push(c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => panic!("no reply, no reset"),
            _ => refused += 1,
        }
    }
    assert!(
        !served.is_empty() && refused > 0,
        "served {}, refused {refused}",
        served.len()
    );
    // A file not cached yet cannot be opened now: 503 (try again), not 404.
    let c = served[0];
    (&*c)
        .write_all(b"GET /other.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let resp = read_resp(&mut BufReader::new(c), false);
    assert!(resp.status.starts_with("HTTP/1.1 503"), "{}", resp.status);
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
    drop(served);
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        curl(&s, &["http://127.0.0.1:PORT/other.txt"]),
        "other",
        "server did not recover"
    );
    let (st, err) = s.stop(Duration::from_secs(5));
    assert!(st.success(), "{st:?}: {err}");
    let counted = stat(&err, "refused");
    assert!(
        counted >= refused as u64 && counted > 0,
        "{counted} refusals counted, {refused} seen: {err}"
    );
}

pub fn sigterm_exits_cleanly(b: Backend, m: Mode) {
    let mut s = start(b, m, &[]);
    assert_eq!(status(&s, "/"), "200");
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
}

/// A root with `small.txt` (3931 bytes), `big.bin` (2 MiB + 7: past the
/// body cache, so always by sendfile) and `huge.bin` (16 MiB).
fn file_root(huge: bool) -> tempdir_lite::Dir {
    let d = tempdir_lite::Dir::new();
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 + i / 251) as u8).collect() };
    std::fs::write(d.0.join("small.txt"), pattern(3931)).unwrap();
    std::fs::write(d.0.join("big.bin"), pattern((2 << 20) + 7)).unwrap();
    if huge {
        std::fs::write(d.0.join("huge.bin"), pattern(16 << 20)).unwrap();
    }
    d
}

pub fn sendfile_on_serves_whole_files(b: Backend, m: Mode) {
    let d = file_root(false);
    let root = d.0.to_str().unwrap();
    for sf in ["on", "off"] {
        let s = start(b, m, &["--root", root, "--sendfile", sf]);
        let c = connect(&s);
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        // Keep-alive: each file twice, one HEAD between, pipelined.
        w.write_all(
            b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        for (path, head) in [
            ("small.txt", false),
            ("big.bin", false),
            ("big.bin", true),
            ("small.txt", false),
            ("big.bin", false),
        ] {
            let want = std::fs::read(d.0.join(path)).unwrap();
            let resp = read_resp(&mut r, head);
            assert_eq!(resp.status, "HTTP/1.1 200 OK", "--sendfile {sf} {path}");
            assert_eq!(
                resp.header("Content-Length"),
                Some(want.len().to_string().as_str())
            );
            if !head {
                assert!(resp.body == want, "--sendfile {sf}: {path} differs");
            }
        }
        assert!(
            at_eof(&mut r),
            "--sendfile {sf}: open after Connection: close"
        );
        // A real client too.
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-o", "-"])
            .arg(format!("http://127.0.0.1:{}/big.bin", s.port))
            .output()
            .unwrap();
        assert!(
            out.stdout == std::fs::read(d.0.join("big.bin")).unwrap(),
            "curl: --sendfile {sf}"
        );
    }
}

pub fn http10_keep_alive_honoured(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    w.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let a = read_resp(&mut r, false);
    assert_eq!(a.status, "HTTP/1.1 200 OK");
    assert_eq!(a.header("Connection"), Some("keep-alive"), "{}", a.head);
    assert_eq!(a.body.len(), 3931);
    // Still open: a second request on it, and a 404 keeps it too.
    w.write_all(b"GET /nope HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .unwrap();
    let n = read_resp(&mut r, false);
    assert!(n.status.starts_with("HTTP/1.1 404"), "{}", n.status);
    assert_eq!(n.header("Connection"), Some("keep-alive"));
    // Without the header, HTTP/1.0 closes after the reply.
    w.write_all(b"HEAD / HTTP/1.0\r\n\r\n").unwrap();
    let h = read_resp(&mut r, true);
    assert_eq!(h.header("Connection"), Some("close"));
    assert!(at_eof(&mut r));
    // curl as an HTTP/1.0 client asking for keep-alive reuses its
    // connection.
    let opts = ["--http1.0", "-H", "Connection: keep-alive"];
    let out = codes_and_connects(&s, &opts, &["/", "/index.html"]);
    assert_eq!(out, "200:1 200:0");
}

pub fn edited_file_is_revalidated(b: Backend, m: Mode) {
    for sf in ["off", "on"] {
        let d = tempdir_lite::Dir::new();
        let f = d.0.join("page.txt");
        std::fs::write(&f, b"first version of the page").unwrap();
        std::fs::create_dir(d.0.join("sub")).unwrap();
        std::fs::write(d.0.join("sub/index.html"), b"sub index").unwrap();
        let s = start_loud(b, m, &["--root", d.0.to_str().unwrap(), "--sendfile", sf]);
        let get_path = |path: &str, inm: Option<&str>| {
            let mut c = connect(&s);
            let extra = inm.map_or(String::new(), |e| format!("If-None-Match: {e}\r\n"));
            c.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            let mut r = BufReader::new(c);
            let resp = read_resp(&mut r, false);
            assert!(at_eof(&mut r));
            resp
        };
        let get = |inm: Option<&str>| get_path("/page.txt", inm);
        // A directory by both spellings, across revalidations: one entry,
        // no reload.
        for _ in 0..2 {
            for p in ["/sub", "/sub/", "/sub/index.html"] {
                assert_eq!(get_path(p, None).body, b"sub index", "{p}");
            }
            std::thread::sleep(Duration::from_millis(1100));
        }
        let one = get(None);
        assert_eq!(one.body, b"first version of the page");
        let etag1 = one.header("ETag").unwrap().to_string();
        assert!(get(Some(&etag1)).status.starts_with("HTTP/1.1 304"));
        // Shrink it in place (same inode): past the revalidation interval
        // the new body and a new ETag are served, the old ETag is stale.
        std::fs::write(&f, b"second").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let two = get(None);
        assert_eq!(two.body, b"second", "--sendfile {sf}");
        let etag2 = two.header("ETag").unwrap().to_string();
        assert_ne!(etag1, etag2);
        assert_eq!(get(Some(&etag1)).status, "HTTP/1.1 200 OK");
        assert!(get(Some(&etag2)).status.starts_with("HTTP/1.1 304"));
        // Same size, new content (mtime in ns tells them apart).
        std::fs::write(&f, b"SECOND").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(get(None).body, b"SECOND", "--sendfile {sf}");
        // Replaced by rename (new inode), then removed.
        std::fs::write(d.0.join("new.tmp"), b"third, by rename").unwrap();
        std::fs::rename(d.0.join("new.tmp"), &f).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(get(None).body, b"third, by rename");
        std::fs::remove_file(&f).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(get(None).status.starts_with("HTTP/1.1 404"));
        let (st, err) = s.stop(Duration::from_secs(5));
        assert!(st.success(), "{st:?}: {err}");
        // Three changes seen (shrink, same size, rename); the removal
        // drops the entry.
        assert_eq!(stat(&err, "files reloaded"), 3, "{err}");
    }
}

pub fn two_threads_both_serve(b: Backend, m: Mode) {
    let s = start_loud(b, m, &["--threads", "2"]);
    // SO_REUSEPORT spreads connections by their 4-tuple hash: with 64 of
    // them, one thread getting none has probability 2^-63.
    for _ in 0..64 {
        let c = connect(&s);
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(read_resp(&mut r, false).body.len(), 3931);
    }
    let (st, err) = s.stop(Duration::from_secs(5));
    assert!(st.success(), "{st:?}: {err}");
    let line = err
        .lines()
        .find_map(|l| l.split_once("connections per thread: "))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("no per-thread counts: {err}"));
    let per: Vec<u64> = line.split(',').map(|n| n.parse().unwrap()).collect();
    assert_eq!(per.len(), 2, "{line}");
    assert_eq!(per.iter().sum::<u64>(), 64, "{line}");
    assert!(
        per.iter().all(|&n| n > 0),
        "a thread served nothing: {line}"
    );
}

pub fn sigint_completes_slow_readers_response(b: Backend, m: Mode) {
    let d = file_root(true);
    let want = std::fs::read(d.0.join("huge.bin")).unwrap();
    // By sendfile (past the body cache), and from the cached body.
    for extra in [&[][..], &["--cache-max", "33554432"][..]] {
        let mut args = vec!["--root", d.0.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut s = start_loud(b, m, &args);
        // The server is mid-response when the signal comes.
        let mut r = huge_in_flight(&s);
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(s.child.id() as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            s.child.try_wait().unwrap().is_none(),
            "exited with a response in flight"
        );
        // Read it all, slowly (64 KiB at a time with pauses).
        let mut body = Vec::with_capacity(want.len());
        let mut buf = vec![0u8; 65536];
        while body.len() < want.len() {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "EOF after {} of {} bytes", body.len(), want.len());
            body.extend_from_slice(&buf[..n]);
            if body.len() % (1 << 20) < n {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(body == want, "the body differs ({extra:?})");
        // Then the server closes the connection and exits cleanly.
        assert!(at_eof(&mut r), "connection left open while draining");
        drop(r);
        let st = wait_exit(&mut s.child, Duration::from_secs(3));
        assert!(st.success(), "{st:?}");
    }
}

pub fn busy_port_is_refused(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
    let mut second = Command::new(evserver_bin())
        .args(["--addr", &format!("127.0.0.1:{}", s.port)])
        .args(["--backend", backend_arg(b), "--mode", m.arg(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_exit(&mut second, Duration::from_secs(5));
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!st.success(), "a second server bound the same port");
    assert!(err.contains("address in use"), "{err}");
    // The first one still has all the traffic.
    assert_eq!(status(&s, "/"), "200");
}

pub fn date_advances_on_keep_alive(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
    let c = connect(&s);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    let mut dates = Vec::new();
    for i in 0..3 {
        // GET, HEAD and a Connection: keep-alive variant share the entry.
        let req: &[u8] = match i {
            0 => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            1 => b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            _ => b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        };
        w.write_all(req).unwrap();
        let resp = read_resp(&mut r, i == 1);
        let d = resp.header("Date").unwrap().to_string();
        assert_eq!(d.len(), 29, "{d}");
        assert!(d.ends_with(" GMT"), "{d}");
        dates.push(d);
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(
        dates[0] != dates[1] && dates[1] != dates[2],
        "Date did not advance: {dates:?}"
    );
}

/// A root holding a file larger than the body cache (1 MiB), one past
/// AIO mode's copy limit (64 KiB) and a small index.
fn big_root() -> (tempdir_lite::Dir, Vec<u8>, Vec<u8>) {
    let d = tempdir_lite::Dir::new();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mid: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(d.0.join("big.bin"), &big).unwrap();
    std::fs::write(d.0.join("mid.bin"), &mid).unwrap();
    std::fs::write(d.0.join("index.html"), b"small").unwrap();
    (d, big, mid)
}

pub fn large_files_keep_alive(b: Backend, m: Mode) {
    let (d, big, mid) = big_root();
    for sf in ["off", "on"] {
        let s = start(b, m, &["--root", d.0.to_str().unwrap(), "--sendfile", sf]);
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
            "--sendfile {sf}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub fn long_pipelined_burst_in_order(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
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
}

pub fn client_that_never_reads_is_not_buffered_without_bound(b: Backend, m: Mode) {
    let s = start(b, m, &[]);
    let c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    flood_without_reading(&s, c, "/", b"");
}

/// The deterministic form of the test above: the server's send is stuck
/// (a 16 MiB answer the client does not read) while its request buffer
/// is still empty, and only then do requests pour in. The receive must
/// pause on what arrives while the send waits, not only when a send
/// completes (the CI failure of that test: a send blocked for good just
/// after a completion that found little buffered, and the server read on
/// without bound).
pub fn client_stuck_on_a_large_answer_is_not_buffered_without_bound(b: Backend, m: Mode) {
    let d = file_root(true);
    let s = start(b, m, &["--root", d.0.to_str().unwrap()]);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Let the answer fill the socket buffers and the send block.
    std::thread::sleep(Duration::from_millis(300));
    flood_without_reading(&s, c, "/small.txt", b"HTTP/1.1 200 OK");
}

/// Pipeline requests for `path` on `c` without reading a byte: the server's sends
/// fill the socket, then it must stop receiving, so the writes block
/// (bounded by bytes, not time: a loaded machine only slows the server
/// down). Then reading drains the answers (the first starting `head`),
/// the server resumes, and still answers others.
#[track_caller]
fn flood_without_reading(s: &Server, mut c: TcpStream, path: &str, head: &[u8]) {
    c.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let one = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let one = one.as_bytes();
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
    // Less than a few MB of requests taken in (socket buffers, the pause
    // threshold), not everything we could write.
    assert!(blocked, "server kept reading: {written} bytes");
    // Reading now drains the answers and the server resumes.
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0usize;
    let mut first = Vec::new();
    while got < 1 << 20 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if first.len() < head.len() {
                    first.extend_from_slice(&buf[..n.min(head.len() - first.len())]);
                }
                got += n;
            }
        }
    }
    assert!(got >= 1 << 20, "answers stopped after {got} bytes");
    assert_eq!(first, head);
    assert_eq!(status(s, path), "200");
}

/// Request `/huge.bin` (16 MiB) on a new connection and read its head:
/// 16 MiB cannot all sit in the socket buffers (tcp_wmem's max is 4 MiB;
/// the client's receive buffer does not grow while it does not read), so
/// after a pause the server is mid-response.
#[track_caller]
fn huge_in_flight(s: &Server) -> BufReader<TcpStream> {
    let mut c = connect(s);
    c.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let resp = read_resp(&mut r, true);
    assert_eq!(resp.header("Content-Length"), Some("16777216"));
    std::thread::sleep(Duration::from_millis(200));
    r
}

/// Read up to `n` bytes, stopping early at EOF.
#[track_caller]
fn read_up_to(r: &mut impl Read, n: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(n);
    let mut buf = vec![0u8; 65536];
    while body.len() < n {
        let k = r.read(&mut buf[..(n - body.len()).min(65536)]).unwrap();
        if k == 0 {
            break;
        }
        body.extend_from_slice(&buf[..k]);
    }
    body
}

pub fn file_shrunk_under_sendfile(b: Backend, m: Mode) {
    // With the body cached, the response finishes from the cache (the
    // version its head describes); without, the promised length cannot be
    // kept and the connection closes short.
    for cached in [true, false] {
        let d = file_root(true);
        let path = d.0.join("huge.bin");
        let want = std::fs::read(&path).unwrap();
        let mut args = vec!["--root", d.0.to_str().unwrap(), "--sendfile", "on"];
        if cached {
            args.extend_from_slice(&["--cache-max", "33554432"]);
        }
        let s = start(b, m, &args);
        let mut r = huge_in_flight(&s);
        // Cut past what the socket buffers can hold already: bytes in
        // flight by sendfile are the page cache's (zero-copy), and the
        // kernel zeroes the cut part of a large folio under them.
        let cut = 12 << 20;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let body = read_up_to(&mut r, want.len());
        if cached {
            let diff = body.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                body == want,
                "cached: {} bytes, first difference at {diff:?}",
                body.len()
            );
        } else {
            assert_eq!(body.len(), cut, "uncached: not the file's new length");
            assert!(body == want[..cut], "uncached: the bytes differ");
            assert!(at_eof(&mut r), "uncached: left open after a short body");
        }
    }
}

pub fn replaced_file_keeps_response_in_flight(b: Backend, m: Mode) {
    // From the cached body (sendfile off; AIO sends a body this large by
    // sendfile anyway) and by sendfile: the response in flight holds its
    // cache entry, so a revalidation that replaces the entry changes
    // nothing it sends, while new requests get the new file.
    for sf in ["off", "on"] {
        let d = file_root(true);
        let path = d.0.join("huge.bin");
        let want = std::fs::read(&path).unwrap();
        let root = d.0.to_str().unwrap();
        let s = start(
            b,
            m,
            &["--root", root, "--cache-max", "33554432", "--sendfile", sf],
        );
        let mut r = huge_in_flight(&s);
        std::fs::write(d.0.join("new.tmp"), b"the new version").unwrap();
        std::fs::rename(d.0.join("new.tmp"), &path).unwrap();
        // Past the revalidation interval.
        std::thread::sleep(Duration::from_millis(1100));
        let mut c = connect(&s);
        c.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let fresh = read_resp(&mut BufReader::new(c), false);
        assert_eq!(fresh.body, b"the new version", "--sendfile {sf}");
        let body = read_up_to(&mut r, want.len());
        assert!(
            body == want,
            "--sendfile {sf}: the response in flight changed ({} bytes)",
            body.len()
        );
    }
}
