//! evserver: a static HTTP/1.1 file server on one kevent queue per thread.
//!
//! Sockets, the idle-connection timer and SIGINT/SIGTERM all arrive
//! through the same queue — the point of kevent (the 2006 seed's
//! `evserver_kqueue.c`, done properly).
//!
//! ```text
//! cargo run --release --example evserver -- --addr 127.0.0.1:8080
//! cargo run --release --example evserver -- --threads 2 --backend uring
//! cargo run --release --example evserver -- --mode aio
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! Two I/O modes with one behaviour: `--mode readiness` (the default,
//! `readiness.rs`: non-blocking reads and writes on READ/WRITE knotes) and
//! `--mode aio` (`aio.rs`: network AIO completions — multishot accept,
//! pooled multishot receive, send, sendfile). Both hand the bytes they
//! buffered to one request handler (`request.rs`: parse, route, build the
//! response) over one file cache (`cache.rs`) and run in one worker
//! skeleton (`worker.rs`: listeners, event loop, idle sweep, drain, fd
//! reserve, exit line); each keeps only its own I/O.
//!
//! - GET and HEAD, keep-alive and pipelining; `Date`, `Content-Type`,
//!   `Content-Length`, `Last-Modified`, `ETag`; `304` on `If-None-Match` /
//!   `If-Modified-Since`; 400/404/405/408/413/414/431 where due.
//! - Paths are percent-decoded, then dot-segments resolved; a target that
//!   climbs above the root, or whose canonical path (symlinks followed)
//!   leaves the canonical root, is answered 404.
//! - Each file's heads are rendered once (one per `Connection` variant) and
//!   its body (up to 1 MiB, `--cache-max`) read once, right after the
//!   keep-alive head: the common response is one send of a slice of it
//!   (readiness) or one copy into the send buffer (AIO); `--sendfile on`
//!   sends the body with `sendfile(2)` (AIO also does for bodies over
//!   64 KiB). A cached file is re-checked (inode, size, mtime) at most once
//!   a second and reloaded when it changed; a response in flight holds its
//!   entry, so a reload never changes its bytes, and a file that shrank
//!   under its sendfile finishes from the cached body (or the connection
//!   closes). After warm-up the request path allocates nothing: buffers
//!   and connection slots are reused.
//! - The listener has `TCP_DEFER_ACCEPT` (`--defer-accept`, 1 s): a
//!   connection is accepted once its request is there, so accept, read and
//!   reply take one wake-up (voluntary context switches per connection at
//!   2000 conn/s: 2.0 without, 1.5 with).
//! - HTTP/1.1 keep-alive by default; HTTP/1.0 only with
//!   `Connection: keep-alive` (answered with the same header).
//! - Idle connections (and slow requests: slowloris) are closed after
//!   `--idle-timeout`, by a `Filter::Timer` knote when the queue has a
//!   timer storage, else by a sweep bounded by the wait's timeout.
//! - Out of descriptors (`EMFILE`), it closes a reserve fd, accepts and
//!   resets the waiting connection, and reopens the reserve, counting the
//!   refusal; if no reserve can be had, accepting pauses for 100 ms. A
//!   file not cached yet is answered 503 meanwhile. It never spins and
//!   never exits on it.
//! - SIGINT/SIGTERM (`Filter::Signal`, blocked first in every thread) stop
//!   accepting, finish responses in flight (then close those connections)
//!   and exit within 2 s.
//! - `SO_REUSEPORT` only with `--threads` > 1, so a second server on a
//!   busy port fails ("address in use") instead of splitting its traffic.
//!
//! The first line on stdout is `listening on ADDR` (with the real port
//! when `--addr` ends in `:0`). Unless `--quiet`, the last line on stderr
//! is `evserver: done: ...` with the counts (connections, requests,
//! refusals for lack of fds, connections per thread).

mod aio;
mod cache;
mod http;
mod readiness;
mod request;
mod worker;

use clap::{Parser, ValueEnum};
use kevent::{Backend, Kqueue};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use worker::Config;

#[derive(Parser, Debug, Clone)]
#[command(about = "Static HTTP/1.1 server on kevent (one queue per thread)")]
struct Args {
    /// Address to listen on (`:0` picks a free port; see stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Directory to serve (default: the bundled examples/www).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Kernel interface under the queue.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Worker threads, one queue and one SO_REUSEPORT listener each.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Readiness (read/write on events) or network AIO completions.
    #[arg(long, value_enum, default_value_t = Mode::Readiness)]
    mode: Mode,
    /// Send bodies with sendfile(2) instead of one write from the cache.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    sendfile: OnOff,
    /// Close connections idle (or with an unfinished request) this long, in seconds.
    #[arg(long, allow_negative_numbers = true, default_value = "30", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// Lower RLIMIT_NOFILE to this (tests of fd exhaustion).
    #[arg(long, hide = true)]
    max_fds: Option<u64>,
    /// TCP_DEFER_ACCEPT seconds on the listener (0: off): connections are
    /// accepted once their request has arrived.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=3600))]
    defer_accept: u32,
    /// Keep bodies up to this many bytes in memory (default 1 MiB; tests).
    #[arg(long, hide = true, default_value_t = cache::BODY_CACHE_MAX,
          value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    cache_max: u64,
    /// Print nothing but the listening line and errors.
    #[arg(long)]
    quiet: bool,
}

/// A duration in seconds (fractions allowed): finite, > 0, at most a year.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    let d = Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{s:?}: seconds must be finite and not negative"))?;
    if d.is_zero() || d > Duration::from_secs(365 * 86_400) {
        return Err(format!("{s:?}: seconds must be > 0 and at most a year"));
    }
    Ok(d)
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum BackendArg {
    Auto,
    Epoll,
    Uring,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Aio,
    Readiness,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("evserver: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> io::Result<()> {
    if let Some(n) = args.max_fds {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let root = args
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/www")));
    let root = std::fs::canonicalize(&root)
        .map_err(|e| io::Error::new(e.kind(), format!("--root {}: {e}", root.display())))?;
    let backend = match args.backend {
        BackendArg::Auto => Backend::Auto,
        BackendArg::Epoll => Backend::Epoll,
        BackendArg::Uring => Backend::IoUring,
    };
    // Block the signals before any thread exists so every thread inherits
    // the mask and only the queue sees them.
    kevent::block_signals(&[libc::SIGINT, libc::SIGTERM])?;
    let threads = usize::from(args.threads.max(1));
    // One queue per thread (AIO mode: each with its AIO storage).
    let mut queues = Vec::with_capacity(threads);
    let mut aios = Vec::new();
    for _ in 0..threads {
        match args.mode {
            Mode::Readiness => queues.push(Arc::new(Kqueue::with_backend(backend)?)),
            Mode::Aio => {
                let (kq, aio) = aio::queue(backend)?;
                queues.push(kq);
                aios.push(aio);
            }
        }
    }
    let listeners = worker::listen(args.addr, threads, args.defer_accept)?;
    println!("listening on {}", listeners[0].local_addr()?);
    let _ = io::stdout().flush();
    if !args.quiet {
        eprintln!(
            "evserver: {} thread(s), mode {:?}, backend {:?}, root {}, sendfile {:?}, idle timeout {:?}",
            threads,
            args.mode,
            queues[0].backend(),
            root.display(),
            args.sendfile,
            args.idle_timeout
        );
    }
    let cfg = Config {
        root,
        sendfile: args.sendfile == OnOff::On,
        cache_max: args.cache_max,
        idle: args.idle_timeout,
    };
    // Worker 0 takes the signals and tells the others' queues to stop.
    let others = |i: usize| {
        if i == 0 {
            queues[1..].to_vec()
        } else {
            Vec::new()
        }
    };
    match args.mode {
        Mode::Readiness => {
            let mut workers = Vec::with_capacity(threads);
            for (i, l) in listeners.into_iter().enumerate() {
                let kq = queues[i].clone();
                workers.push(readiness::Worker::new(kq, l, &cfg, others(i), i == 0)?);
            }
            worker::serve(workers, args.quiet)
        }
        Mode::Aio => {
            let mut workers = Vec::with_capacity(threads);
            for (i, (l, aio)) in listeners.into_iter().zip(aios).enumerate() {
                let kq = queues[i].clone();
                workers.push(aio::Worker::new(kq, aio, l, &cfg, others(i), i == 0)?);
            }
            worker::serve(workers, args.quiet)
        }
    }
}
