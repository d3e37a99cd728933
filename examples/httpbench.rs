//! httpbench: the project's main demo. Starts evserver on each backend
//! (and, with `--peers`, the tokio and mio peers and nginx if installed),
//! drives each with httpload through the phases below, and prints one
//! table: req/s, latency percentiles, errors and **server CPU µs per
//! request**, with ratios against evserver; with `--peers`, the issue's
//! goals as ratios with PASS/FAIL.
//!
//! ```text
//! cargo run --release --example httpbench                 # evserver: readiness and aio, epoll and io_uring
//! cargo run --release --example httpbench -- --peers --plot http.svg
//! ```
//!
//! Server CPU is the server process's CPU-time clock
//! (`clock_getcpuclockid(pid)` + `clock_gettime`: user + system time of
//! all its threads, exited ones included, in ns — the steadiest figure on
//! a shared machine). Where that clock cannot be read, `/proc/<pid>/stat`
//! utime + stime (clock ticks, 10 ms) is used instead. The source is
//! chosen once per server when it starts and both ends of every delta
//! come from it: the two are never mixed in one figure (the table says
//! which was used).
//!
//! Phases (all on 127.0.0.1, bounded, each stops by itself):
//! 1. `serial` — connections one after another, one request each (the
//!    seed's first httperf test; closed with `SO_LINGER 0` as below);
//! 2. `rate N` — open loop at N new connections/s (1000 → 20000), one
//!    request each, 1 s timeout; the client closes with `SO_LINGER 0` so
//!    no TIME_WAIT piles up between runs (see BENCHMARKING.md);
//! 3. `ka c100`, `ka c1000` — closed loop keep-alive, 100 / 1000
//!    connections re-requesting.
//!
//! With `--peers` and `httperf` installed, a rate sweep of each client
//! against evserver-epoll compares the connection rates they sustain:
//! completed connections per second at the asked rates a client handles
//! (every connection replied, at most 1% errors), stopping at its first
//! failing rate. (httperf counts connections it cannot open past its 1022
//! fds as `fd-unavail` and reports its rate over the rest: a rate alone
//! would flatter it.)
//! Servers run side by side during a phase, one at a time under load
//! (A B C A B C ...); `--repeat N` runs every phase N times and reports
//! medians. Servers and clients share the machine's cores unpinned.
//!
//! Siblings (`evserver`, `httpload`, `peer_*`) live next to this binary.
//! Before anything runs, httpbench has cargo (`$CARGO`, set by `cargo
//! run`, else the cargo that built it) build them in the same profile and
//! target directory, so a fresh clone's first `cargo run` works and a
//! stale sibling is rebuilt (cargo's own freshness check: under a second
//! when nothing changed). `--no-build` skips that.

use clap::Parser;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "HTTP benchmark: evserver vs peers, driven by httpload")]
struct Args {
    /// Also run the tokio and mio peers, and nginx if installed.
    #[arg(long)]
    peers: bool,
    /// Write an SVG chart of the results here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seconds per keep-alive phase.
    #[arg(long, allow_negative_numbers = true, default_value = "2", value_parser = parse_secs)]
    ka_secs: f64,
    /// Seconds per rate-sweep step.
    #[arg(long, allow_negative_numbers = true, default_value = "1", value_parser = parse_secs)]
    rate_secs: f64,
    /// Connections in the serial phase.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    serial_conns: u64,
    /// Rates of the sweep (new connections per second).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,20000",
          value_parser = clap::value_parser!(u64).range(1..=200_000))]
    rates: Vec<u64>,
    /// Run every phase this many times and report medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    repeat: u16,
    /// Do not build the sibling examples first (they must exist).
    #[arg(long)]
    no_build: bool,
    /// Only these phases (serial, rate, ka100, ka1000, httperf).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

/// A duration in seconds: finite, > 0, at most an hour.
fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    match Duration::try_from_secs_f64(v) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Ok(v),
        _ => Err(format!(
            "{s:?}: seconds must be finite, > 0 and at most 3600"
        )),
    }
}

struct Server {
    name: String,
    child: Child,
    pid: u32,
    port: u16,
    cpu: CpuSource,
    _dir: Option<TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Default)]
struct Cell {
    req_rate: f64,
    conn_rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
    replies: u64,
    cpu_us_per_req: f64,
}

/// Where a server's CPU time is read from (one source per server, fixed
/// when it starts: the ends of a delta never come from different ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuSource {
    /// The process CPU-time clock: ns, all threads, exited ones included.
    Clock(libc::clockid_t),
    /// `/proc/<pid>/stat` utime + stime, in clock ticks.
    Ticks,
}

impl CpuSource {
    fn for_pid(pid: u32) -> CpuSource {
        let mut id: libc::clockid_t = 0;
        // SAFETY: `id` is valid for writes.
        if unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut id) } == 0
            && clock_ns(id).is_some()
        {
            CpuSource::Clock(id)
        } else {
            CpuSource::Ticks
        }
    }

    /// CPU time so far in ns.
    fn read(self, pid: u32) -> Option<u64> {
        match self {
            CpuSource::Clock(id) => clock_ns(id),
            CpuSource::Ticks => Some((cpu_ticks(pid)? as f64 * 1e9 / clk_tck()) as u64),
        }
    }

    fn name(self) -> &'static str {
        match self {
            CpuSource::Clock(_) => "process CPU clock, ns",
            CpuSource::Ticks => "/proc/<pid>/stat, 10 ms ticks",
        }
    }
}

fn clock_ns(id: libc::clockid_t) -> Option<u64> {
    // SAFETY: all-zero is a valid timespec; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid for writes.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime are fields 14 and 15 (1-based) = 11, 12 after ')'.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn time_wait() -> usize {
    let mut n = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(s) = std::fs::read_to_string(f) {
            n += s
                .lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some("06"))
                .count();
        }
    }
    n
}

/// Wait (at most 4 s) for TIME_WAIT entries to drop below 2000.
fn drain_time_wait() {
    let t = Instant::now();
    while time_wait() > 2000 && t.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sibling(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let p = dir.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not found: build the examples first (cargo build --release --examples)",
                p.display()
            ),
        ))
    }
}

/// The examples httpbench runs.
const SIBLINGS: [&str; 4] = ["evserver", "httpload", "peer_mio", "peer_tokio"];

/// Have cargo build the siblings into the directory this binary is in:
/// same target directory, target triple and profile (read off the path
/// `<target-dir>[/<triple>]/<profile>/examples/httpbench`). Cargo decides
/// what is stale. Skipped (with a note) when no cargo or no source tree is
/// at hand; the siblings must then exist already.
fn build_siblings(examples_dir: &Path) -> io::Result<()> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO").map(PathBuf::from))
        .filter(|c| c.exists());
    let (Some(cargo), true) = (cargo, manifest.exists()) else {
        eprintln!("httpbench: no cargo or source tree here: using the examples as built");
        return Ok(());
    };
    let profile_dir = examples_dir
        .parent()
        .ok_or_else(|| io::Error::other("httpbench is not in <target>/<profile>/examples"))?;
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("release")
        .to_string();
    let up = profile_dir.parent().unwrap_or(Path::new("."));
    let (target_dir, triple) = if up.join("CACHEDIR.TAG").exists() {
        (up.to_path_buf(), None)
    } else {
        match up.parent() {
            Some(t) if t.join("CACHEDIR.TAG").exists() => {
                (t.to_path_buf(), up.file_name().map(|n| n.to_owned()))
            }
            _ => (up.to_path_buf(), None),
        }
    };
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        p => {
            cmd.args(["--profile", p]);
        }
    }
    if let Some(t) = triple {
        cmd.arg("--target").arg(t);
    }
    for s in SIBLINGS {
        cmd.args(["--example", s]);
    }
    eprintln!(
        "httpbench: building {} ({profile}) ...",
        SIBLINGS.join(", ")
    );
    let st = cmd.stdout(Stdio::null()).status()?;
    if !st.success() {
        return Err(io::Error::other(format!(
            "building the sibling examples failed ({st}): {cmd:?}"
        )));
    }
    Ok(())
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Start a server that prints `listening on ADDR` first. If it exits
/// instead, the error says why (its stderr's last line).
fn start(name: &str, mut cmd: Command) -> io::Result<Server> {
    let err_path =
        std::env::temp_dir().join(format!("httpbench-{}-{name}.stderr", std::process::id()));
    let err_file = std::fs::File::create(&err_path)?;
    cmd.stdout(Stdio::piped()).stderr(err_file);
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().expect("piped");
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    let port = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok());
    let Some(port) = port else {
        let _ = child.kill();
        let st = child.wait();
        let why = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        let why = why
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(io::Error::other(format!(
            "did not start ({}): {why}",
            st.map_or_else(|e| e.to_string(), |s| s.to_string())
        )));
    };
    let _ = std::fs::remove_file(&err_path);
    let pid = child.id();
    Ok(Server {
        name: name.to_string(),
        child,
        pid,
        port,
        cpu: CpuSource::for_pid(pid),
        _dir: None,
    })
}

fn start_nginx(www: &Path) -> io::Result<Option<Server>> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(bin) = bin else { return Ok(None) };
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("httpbench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log crit;\n\
         worker_rlimit_nofile 20000;\nevents {{ worker_connections 16000; }}\n\
         http {{\n  access_log off;\n  sendfile off;\n  tcp_nodelay on;\n  keepalive_requests 10000000;\n  keepalive_timeout 65;\n\
           client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
           types {{ text/html html; }}\n  server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
        www.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let mut child = Command::new(bin)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(3) || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("httpbench: nginx did not start; skipped");
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    Ok(Some(Server {
        name: "nginx".into(),
        child,
        pid,
        port,
        cpu: CpuSource::for_pid(pid),
        _dir: Some(TempDir(dir)),
    }))
}

fn run_load(httpload: &Path, port: u16, extra: &[String]) -> io::Result<serde_json::Value> {
    let out = Command::new(httpload)
        .arg("--port")
        .arg(port.to_string())
        .arg("--json")
        .args(extra)
        .stderr(Stdio::null())
        .output()?;
    serde_json::from_slice(&out.stdout)
        .map_err(|e| io::Error::other(format!("httpload output: {e}")))
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn measure(httpload: &Path, s: &Server, extra: &[String]) -> io::Result<Cell> {
    let c0 = s.cpu.read(s.pid);
    let v = run_load(httpload, s.port, extra)?;
    let c1 = s.cpu.read(s.pid);
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let lat = |k: &str| v["latency_ms"][k].as_f64().unwrap_or(0.0);
    let replies = v["replies"].as_u64().unwrap_or(0);
    Ok(Cell {
        req_rate: f("reply_rate_avg"),
        conn_rate: f("conn_rate"),
        p50: lat("p50"),
        p99: lat("p99"),
        p999: lat("p999"),
        errors: v["errors_total"].as_u64().unwrap_or(0),
        replies,
        cpu_us_per_req: match (c0, c1) {
            (Some(a), Some(b)) if replies > 0 => b.saturating_sub(a) as f64 / 1e3 / replies as f64,
            _ => f64::NAN,
        },
    })
}

fn med_cell(cells: &[Cell]) -> Cell {
    let m = |f: &dyn Fn(&Cell) -> f64| median(&mut cells.iter().map(f).collect::<Vec<_>>());
    Cell {
        req_rate: m(&|c| c.req_rate),
        conn_rate: m(&|c| c.conn_rate),
        p50: m(&|c| c.p50),
        p99: m(&|c| c.p99),
        p999: m(&|c| c.p999),
        errors: cells.iter().map(|c| c.errors).max().unwrap_or(0),
        replies: m(&|c| c.replies as f64) as u64,
        cpu_us_per_req: m(&|c| c.cpu_us_per_req),
    }
}

/// One httperf run: (replies per second, errors, replies), from its
/// "Total:" and "Errors: total" lines.
fn httperf_run(port: u16, rate: u64, conns: u64) -> Option<(f64, u64, f64)> {
    let out = Command::new("httperf")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--uri",
            "/",
            "--rate",
            &rate.to_string(),
            "--num-conns",
            &conns.to_string(),
            "--num-calls",
            "1",
            "--timeout",
            "1",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    let line = |p: &str| s.lines().find(|l| l.starts_with(p));
    // "Total: connections N requests N replies N test-duration X s"
    let total: Vec<&str> = line("Total:")?.split_whitespace().collect();
    let replies: f64 = total.get(6)?.parse().ok()?;
    let secs: f64 = total.get(8)?.parse().ok()?;
    let errs = line("Errors: total")?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    Some((replies / secs.max(1e-9), errs, replies))
}

/// A client's rate sweep: for each asked rate `r`, `run(r, n)` makes `n`
/// connections (half a second's worth, at least 3000) and says (completed
/// connections per second, errors, replies); a step holds with every
/// connection but 1% replied and at most 1% errors, and the sweep stops
/// at the first that fails (or cannot run). Returns the report line
/// (`rate: done/s` per step) and the best step held, `(rate, done/s)`.
fn rate_sweep(
    client: &str,
    rates: &[u64],
    mut run: impl FnMut(u64, u64) -> Option<(f64, u64, f64)>,
) -> (String, Option<(u64, f64)>) {
    let mut steps = Vec::new();
    let mut best: Option<(u64, f64)> = None;
    for &r in rates {
        drain_time_wait();
        eprint!("\rclient comparison: {client} --rate {r} ...            ");
        let n = (r / 2).max(3000);
        let Some((done, errors, replies)) = run(r, n) else {
            break;
        };
        let ok = replies >= 0.99 * n as f64 && errors as f64 <= 0.01 * n as f64;
        if ok {
            steps.push(format!("{r}: {done:.0}/s"));
        } else {
            steps.push(format!("{r}: {done:.0}/s FAIL ({errors} errors)"));
            break;
        }
        if best.is_none_or(|b| done > b.1) {
            best = Some((r, done));
        }
    }
    (steps.join(", "), best)
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("httpbench: {e}");
        std::process::exit(1);
    }
}

/// A goal of issue 5 checked on this run's table.
struct Goal {
    what: String,
    /// `>= x` (true) or `<= x` (false).
    at_least: bool,
    bound: f64,
    /// The ratio per evserver variant (None: not measured).
    values: Vec<Option<f64>>,
}

fn mark(v: Option<f64>, at_least: bool, bound: f64) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let ok = if at_least { v >= bound } else { v <= bound };
            format!("{v:.2} {}", if ok { "PASS" } else { "FAIL" })
        }
        _ => "-".into(),
    }
}

fn run(args: Args) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    if !args.no_build {
        build_siblings(&dir)?;
    }
    let evserver = sibling(&dir, "evserver")?;
    let httpload = sibling(&dir, "httpload")?;
    let www = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/www"));
    // Lift our fd limit (children inherit it).
    // SAFETY: `lim` is valid for reads and writes during both calls.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }

    let mut servers = Vec::new();
    for (name, mode, b) in [
        ("evserver-epoll", "readiness", "epoll"),
        ("evserver-uring", "readiness", "uring"),
        ("evserver-aio-epoll", "aio", "epoll"),
        ("evserver-aio-uring", "aio", "uring"),
    ] {
        let mut c = Command::new(&evserver);
        c.args([
            "--addr",
            "127.0.0.1:0",
            "--backend",
            b,
            "--mode",
            mode,
            "--quiet",
        ]);
        match start(name, c) {
            Ok(s) => servers.push(s),
            Err(e) => eprintln!("httpbench: {name}: skipped: {e}"),
        }
    }
    if servers.is_empty() {
        return Err(io::Error::other("no evserver could start"));
    }
    if args.peers {
        for (name, bin) in [("mio", "peer_mio"), ("tokio", "peer_tokio")] {
            let b = sibling(&dir, bin)?;
            let mut c = Command::new(b);
            c.args(["--addr", "127.0.0.1:0"]);
            match start(name, c) {
                Ok(s) => servers.push(s),
                Err(e) => eprintln!("httpbench: {name}: skipped: {e}"),
            }
        }
        match start_nginx(&www)? {
            Some(s) => servers.push(s),
            None => eprintln!(
                "httpbench: nginx not installed (apt-get install nginx); running without it"
            ),
        }
    }
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();

    // Phases: (name, httpload args).
    let mut phases: Vec<(String, Vec<String>)> = Vec::new();
    let want = |p: &str| args.only.is_empty() || args.only.iter().any(|o| o == p);
    let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if want("serial") {
        phases.push((
            "serial".into(),
            sv(&[
                "--num-conns",
                &args.serial_conns.to_string(),
                "--timeout",
                "5",
                "--linger0",
            ]),
        ));
    }
    if want("rate") {
        for &r in &args.rates {
            let n = ((r as f64 * args.rate_secs) as u64).max(1);
            phases.push((
                format!("rate {r}"),
                sv(&[
                    "--rate",
                    &r.to_string(),
                    "--num-conns",
                    &n.to_string(),
                    "--timeout",
                    "1",
                    "--linger0",
                ]),
            ));
        }
    }
    for (p, c) in [("ka100", 100), ("ka1000", 1000)] {
        if want(p) {
            phases.push((
                format!("ka c{c}"),
                sv(&[
                    "--concurrency",
                    &c.to_string(),
                    "--duration",
                    &args.ka_secs.to_string(),
                    "--timeout",
                    "5",
                ]),
            ));
        }
    }

    let repeat = usize::from(args.repeat);
    let total = phases.len() * servers.len() * repeat;
    let mut done = 0;
    let started = Instant::now();
    let mut results: Vec<Vec<Vec<Cell>>> = vec![vec![Vec::new(); servers.len()]; phases.len()];
    for _ in 0..repeat {
        for (pi, (pname, pargs)) in phases.iter().enumerate() {
            for (si, s) in servers.iter().enumerate() {
                drain_time_wait();
                done += 1;
                eprint!(
                    "\r[{done:>3}/{total}] {:>5.1}s  {pname:<11} {:<18}",
                    started.elapsed().as_secs_f64(),
                    s.name
                );
                let _ = io::stderr().flush();
                match measure(&httpload, s, pargs) {
                    Ok(c) => results[pi][si].push(c),
                    Err(e) => eprintln!("\nhttpbench: {pname} {}: {e}", s.name),
                }
            }
        }
    }
    eprintln!(
        "\r{:<60}",
        format!("done in {:.1} s", started.elapsed().as_secs_f64())
    );

    let table: Vec<Vec<Cell>> = results
        .iter()
        .map(|row| row.iter().map(|c| med_cell(c)).collect())
        .collect();
    // Ratios against the best evserver of each phase.
    let ev_idx: Vec<usize> = (0..servers.len())
        .filter(|&i| names[i].starts_with("evserver"))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<11} {:<18} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8}",
        "phase",
        "server",
        "req/s",
        "conn/s",
        "p50 ms",
        "p99 ms",
        "p99.9",
        "errors",
        "CPU µs/rq",
        "ev/x rps",
        "x/ev cpu"
    );
    for (pi, (pname, _)) in phases.iter().enumerate() {
        let best = ev_idx
            .iter()
            .copied()
            .max_by(|&a, &b| table[pi][a].req_rate.total_cmp(&table[pi][b].req_rate))
            .unwrap_or(0);
        let cheapest = ev_idx
            .iter()
            .copied()
            .filter(|&i| table[pi][i].cpu_us_per_req.is_finite())
            .min_by(|&a, &b| {
                table[pi][a]
                    .cpu_us_per_req
                    .total_cmp(&table[pi][b].cpu_us_per_req)
            })
            .unwrap_or(best);
        for (si, c) in table[pi].iter().enumerate() {
            let (rr, cr) = if ev_idx.contains(&si) {
                (String::from("-"), String::from("-"))
            } else {
                (
                    format!("{:.2}", table[pi][best].req_rate / c.req_rate.max(1e-9)),
                    format!(
                        "{:.2}",
                        c.cpu_us_per_req / table[pi][cheapest].cpu_us_per_req.max(1e-9)
                    ),
                )
            };
            let _ = writeln!(
                out,
                "{:<11} {:<18} {:>10.0} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>9.1} {:>8} {:>8}",
                pname,
                names[si],
                c.req_rate,
                c.conn_rate,
                c.p50,
                c.p99,
                c.p999,
                c.errors,
                c.cpu_us_per_req,
                rr,
                cr
            );
        }
    }
    let mut sources: Vec<&str> = servers.iter().map(|s| s.cpu.name()).collect();
    sources.dedup();
    let _ = writeln!(
        out,
        "\nev/x rps: best evserver's req/s over the peer's (>1: evserver faster); \
         x/ev cpu: the peer's server CPU per request over the cheapest evserver's (>1: evserver cheaper).\n\
         Medians of {repeat} run(s); client: httpload (one thread, kevent), on the same 2 cores, unpinned; \
         server CPU from: {}.",
        sources.join(" / ")
    );

    // httperf vs httpload against the same server.
    let mut client_cmp = None;
    if args.peers && want("httperf") {
        let has = Command::new("httperf")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if has {
            let s = &servers[0];
            // What each client sustains: its best completed connections
            // per second over the asked rates it handles (every connection
            // replied, errors <= 1%; the sweep stops at the first rate it
            // fails). httperf (select(), 1022 fds at most) counts
            // connections it could not open as fd-unavail and reports its
            // rate over the ones it made, so a rate alone would flatter it. httpload runs first with two
            // threads and SO_LINGER 0 (no TIME_WAIT left for httperf).
            let (hl_line, best_hl) = rate_sweep(
                "httpload",
                &[10000, 15000, 20000, 25000, 30000, 40000],
                |r, n| {
                    let v = run_load(
                        &httpload,
                        s.port,
                        &sv(&[
                            "--rate",
                            &r.to_string(),
                            "--num-conns",
                            &n.to_string(),
                            "--timeout",
                            "1",
                            "--threads",
                            "2",
                            "--linger0",
                        ]),
                    )
                    .ok()?;
                    let replies = v["replies"].as_f64().unwrap_or(0.0);
                    let errors = v["errors_total"].as_u64().unwrap_or(0);
                    let done = replies / v["duration_s"].as_f64().unwrap_or(1.0).max(1e-9);
                    Some((done, errors, replies))
                },
            );
            let (hp_line, best_hp) = rate_sweep(
                "httperf",
                &[4000, 7000, 10000, 13000, 16000, 20000],
                |r, n| httperf_run(s.port, r, n),
            );
            eprintln!("\r{:<60}", "");
            let _ = writeln!(
                out,
                "client vs {}, completed connections/s by asked rate (a step holds with every connection replied and <= 1% errors):\n  \
                 httpload --threads 2 --linger0: {hl_line}\n  httperf: {hp_line}",
                s.name
            );
            if let (Some((lr, l)), Some((hr, h))) = (best_hl, best_hp) {
                let _ = writeln!(
                    out,
                    "  sustained: httpload {l:.0}/s (at --rate {lr}), httperf {h:.0}/s (at --rate {hr}): {:.2}x",
                    l / h.max(1e-9)
                );
                client_cmp = Some((h, l));
            }
        } else {
            let _ = writeln!(
                out,
                "httperf not installed (apt-get install httperf): client comparison skipped"
            );
        }
    }

    // The goals of issue 5, each as a ratio per evserver variant.
    if args.peers {
        let idx = |n: &str| names.iter().position(|x| x == n);
        let phase = |p: &str| phases.iter().position(|(x, _)| x == p);
        let (mio, tokio, nginx) = (idx("mio"), idx("tokio"), idx("nginx"));
        let rps = |pi: usize, si: usize| table[pi][si].req_rate;
        let cpu = |pi: usize, si: usize| table[pi][si].cpu_us_per_req;
        let per_ev = |f: &dyn Fn(usize) -> Option<f64>| ev_idx.iter().map(|&e| f(e)).collect();
        let mut goals = Vec::new();
        if let Some(pi) = phase("ka c100") {
            let best_peer = [mio, tokio]
                .into_iter()
                .flatten()
                .map(|p| rps(pi, p))
                .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
            goals.push(Goal {
                what: "ka c100 req/s / best Rust peer".into(),
                at_least: true,
                bound: 1.0,
                values: per_ev(&|e| best_peer.map(|b| rps(pi, e) / b.max(1e-9))),
            });
            goals.push(Goal {
                what: "ka c100 req/s / nginx".into(),
                at_least: true,
                bound: 2.0,
                values: per_ev(&|e| nginx.map(|n| rps(pi, e) / rps(pi, n).max(1e-9))),
            });
        }
        if let Some(pi) = phase("serial") {
            goals.push(Goal {
                what: "serial req/s / nginx".into(),
                at_least: true,
                bound: 1.1,
                values: per_ev(&|e| nginx.map(|n| rps(pi, e) / rps(pi, n).max(1e-9))),
            });
        }
        for (pi, (pname, _)) in phases.iter().enumerate() {
            goals.push(Goal {
                what: format!("CPU/req / tokio, {pname}"),
                at_least: false,
                bound: 0.8,
                values: per_ev(&|e| tokio.map(|t| cpu(pi, e) / cpu(pi, t))),
            });
        }
        let low: Vec<usize> = phases
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| {
                p == "serial"
                    || p.strip_prefix("rate ")
                        .and_then(|r| r.parse::<u64>().ok())
                        .is_some_and(|r| r <= 10000)
            })
            .map(|(i, _)| i)
            .collect();
        if !low.is_empty() {
            goals.push(Goal {
                what: "errors, serial + rate <= 10000".into(),
                at_least: false,
                bound: 0.0,
                values: per_ev(&|e| Some(low.iter().map(|&pi| table[pi][e].errors as f64).sum())),
            });
        }
        let _ = write!(out, "\ngoals (issue 5), this run: {:<32} {:>8}", "", "");
        for &e in &ev_idx {
            let _ = write!(out, " {:>18}", names[e]);
        }
        let _ = writeln!(out);
        for g in &goals {
            let _ = write!(
                out,
                "  {:<48} {} {:<5}",
                g.what,
                if g.at_least { ">=" } else { "<=" },
                g.bound
            );
            for v in &g.values {
                let _ = write!(out, " {:>18}", mark(*v, g.at_least, g.bound));
            }
            let _ = writeln!(out);
        }
        if let Some((hok, lok)) = client_cmp {
            let _ = writeln!(
                out,
                "  {:<48} >= 1.5   {:>18}   (against {})",
                "httpload / httperf sustained conn/s",
                mark(Some(lok / hok.max(1e-9)), true, 1.5),
                names[0]
            );
        }
        let _ = writeln!(
            out,
            "  (CPU ratios: evserver's server CPU per request over tokio's; medians of {repeat} run(s): noisy on a shared machine)"
        );
    }
    print!("{out}");

    if args.json {
        let rows: Vec<serde_json::Value> = phases
            .iter()
            .enumerate()
            .flat_map(|(pi, (p, _))| {
                let table = &table;
                let names = &names;
                (0..names.len()).map(move |si| {
                    let c = &table[pi][si];
                    serde_json::json!({"phase": p, "server": names[si], "req_rate": c.req_rate,
                        "conn_rate": c.conn_rate, "p50_ms": c.p50, "p99_ms": c.p99, "p999_ms": c.p999,
                        "errors": c.errors, "cpu_us_per_req": c.cpu_us_per_req})
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"results": rows, "httperf_vs_httpload": client_cmp})
        );
    }
    if let Some(p) = &args.plot {
        plot(p, &phases, &names, &table)?;
        eprintln!("httpbench: wrote {}", p.display());
    }
    Ok(())
}

fn plot(
    path: &Path,
    phases: &[(String, Vec<String>)],
    names: &[String],
    t: &[Vec<Cell>],
) -> io::Result<()> {
    use plotters::prelude::*;
    let err = |e: String| io::Error::other(e);
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let (left, right) = root.split_horizontally(500);
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (area, title, f) in [
        (
            &left,
            "req/s per phase",
            (|c: &Cell| c.req_rate) as fn(&Cell) -> f64,
        ),
        (&right, "server CPU µs/request", |c: &Cell| {
            c.cpu_us_per_req
        }),
    ] {
        let maxv = t.iter().flat_map(|r| r.iter().map(f)).fold(1.0, f64::max) * 1.1;
        let mut ch = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0..phases.len(), 0.0..maxv)
            .map_err(|e| err(e.to_string()))?;
        ch.configure_mesh()
            .x_labels(phases.len())
            .x_label_formatter(&|i| phases.get(*i).map_or(String::new(), |p| p.0.clone()))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (si, name) in names.iter().enumerate() {
            let col = colors[si % colors.len()];
            ch.draw_series(LineSeries::new(
                (0..phases.len()).map(|pi| (pi, f(&t[pi][si]))),
                col,
            ))
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], col));
        }
        ch.configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
