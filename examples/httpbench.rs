//! httpbench: the project's main demo. Starts evserver on each backend
//! (and, with `--peers`, the tokio and mio peers and nginx if installed),
//! drives each with httpload through the phases below, and prints one
//! table: req/s, latency percentiles, errors and **server CPU µs per
//! request** (CPU time of the server's threads from
//! `/proc/<pid>/task/*/schedstat`, in ns, the steadiest figure on a shared
//! machine; `/proc/<pid>/stat`'s 10 ms ticks if that is missing), with
//! ratios against evserver.
//!
//! ```text
//! cargo build --release --examples
//! ./target/release/examples/httpbench                 # evserver, epoll and io_uring
//! ./target/release/examples/httpbench --peers --plot http.svg
//! ```
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
//! With `--peers` and `httperf` installed, one more row compares
//! httpload's connection rate with real httperf's against evserver.
//! Servers run side by side during a phase, one at a time under load
//! (A B C A B C ...); `--repeat N` runs every phase N times and reports
//! medians. Servers and clients share the machine's cores unpinned.
//!
//! Siblings (`evserver`, `httpload`, `peer_*`) are found next to this
//! binary: build the examples first.

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
    #[arg(long, default_value_t = 3.0)]
    ka_secs: f64,
    /// Seconds per rate-sweep step.
    #[arg(long, default_value_t = 1.0)]
    rate_secs: f64,
    /// Connections in the serial phase.
    #[arg(long, default_value_t = 2000)]
    serial_conns: u64,
    /// Rates of the sweep (new connections per second).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,20000")]
    rates: Vec<u64>,
    /// Run every phase this many times and report medians.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Only these phases (serial, rate, ka100, ka1000, httperf).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

struct Server {
    name: String,
    child: Child,
    pid: u32,
    port: u16,
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

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime are fields 14 and 15 (1-based) = 11, 12 after ')'.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of every thread of `pid` in nanoseconds, from
/// `/proc/<pid>/task/*/schedstat` (time on the CPU, user and system, in
/// ns); else `/proc/<pid>/stat`'s utime+stime (10 ms ticks: too coarse for
/// a 1 s phase of a server that needs a few µs per request).
fn cpu_ns(pid: u32) -> Option<u64> {
    let from_tasks = || -> Option<u64> {
        let mut sum = 0u64;
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
            sum += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(sum)
    };
    from_tasks().or_else(|| Some((cpu_ticks(pid)? as f64 * 1e9 / clk_tck()) as u64))
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

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Start a server that prints `listening on ADDR` first.
fn start(name: &str, mut cmd: Command) -> io::Result<Server> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{name}: no listening line ({line:?})")))?;
    let pid = child.id();
    Ok(Server {
        name: name.to_string(),
        child,
        pid,
        port,
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
    let c0 = cpu_ns(s.pid).unwrap_or(0);
    let v = run_load(httpload, s.port, extra)?;
    let c1 = cpu_ns(s.pid).unwrap_or(c0);
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
        cpu_us_per_req: if replies > 0 {
            c1.saturating_sub(c0) as f64 / 1e3 / replies as f64
        } else {
            0.0
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

/// httperf's "Connection rate: X conn/s".
fn httperf_rate(port: u16, rate: u64, conns: u64) -> Option<(f64, u64)> {
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
    let rate = s
        .lines()
        .find(|l| l.starts_with("Connection rate:"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    let errs = s
        .lines()
        .find(|l| l.starts_with("Errors: total"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    Some((rate, errs))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("httpbench: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
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
    for (name, b) in [("evserver-epoll", "epoll"), ("evserver-uring", "uring")] {
        let mut c = Command::new(&evserver);
        c.args(["--addr", "127.0.0.1:0", "--backend", b, "--quiet"]);
        match start(name, c) {
            Ok(s) => servers.push(s),
            Err(e) => eprintln!("httpbench: {name} skipped: {e}"),
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
            servers.push(start(name, c)?);
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

    let total = phases.len() * servers.len() * args.repeat;
    let mut done = 0;
    let started = Instant::now();
    let mut results: Vec<Vec<Vec<Cell>>> = vec![vec![Vec::new(); servers.len()]; phases.len()];
    for _ in 0..args.repeat {
        for (pi, (pname, pargs)) in phases.iter().enumerate() {
            for (si, s) in servers.iter().enumerate() {
                drain_time_wait();
                done += 1;
                eprint!(
                    "\r[{done:>3}/{total}] {:>5.1}s  {pname:<11} {:<15}",
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
        "\n{:<11} {:<15} {:>10} {:>9} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8}",
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
        let b = &table[pi][best];
        for (si, c) in table[pi].iter().enumerate() {
            let (rr, cr) = if ev_idx.contains(&si) {
                (String::from("-"), String::from("-"))
            } else {
                (
                    format!("{:.2}", b.req_rate / c.req_rate.max(1e-9)),
                    format!("{:.2}", c.cpu_us_per_req / b.cpu_us_per_req.max(1e-9)),
                )
            };
            let _ = writeln!(
                out,
                "{:<11} {:<15} {:>10.0} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>9.1} {:>8} {:>8}",
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
    let _ = writeln!(
        out,
        "\nev/x rps: best evserver's req/s over the peer's (>1: evserver faster); \
         x/ev cpu: the peer's server CPU per request over evserver's (>1: evserver cheaper).\n\
         Medians of {} run(s); client: httpload (one thread, kevent), on the same 2 cores.",
        args.repeat
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
            // Ask both for more than either reaches (httperf tops out near
            // 13-14k conn/s here), so each reports its own ceiling.
            // httpload runs first, with two threads and SO_LINGER 0, so it
            // leaves no TIME_WAIT; httperf (which cannot do that) then runs
            // on a clean table and leaves its 10k behind after the run.
            let (r, n) = (40000u64, 10000u64);
            drain_time_wait();
            eprint!("\rclient comparison: httpload --rate {r} ...           ");
            let hl = run_load(
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
            .ok();
            drain_time_wait();
            eprint!("\rclient comparison: httperf --rate {r} ...            ");
            let hp = httperf_rate(s.port, r, n);
            eprintln!("\r{:<60}", "");
            if let (Some((hr, he)), Some(v)) = (hp, hl) {
                let lr = v["conn_rate"].as_f64().unwrap_or(0.0);
                let le = v["errors_total"].as_u64().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "client vs {} at --rate {r}: httperf {:.0} conn/s ({} errors), httpload --threads 2 --linger0 {:.0} conn/s ({} errors): {:.2}x",
                    s.name,
                    hr,
                    he,
                    lr,
                    le,
                    lr / hr.max(1e-9)
                );
                client_cmp = Some((hr, lr));
            }
        } else {
            let _ = writeln!(
                out,
                "httperf not installed (apt-get install httperf): client comparison skipped"
            );
        }
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
