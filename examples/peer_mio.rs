//! peer_mio: the hand-written mio peer of evserver for httpbench — one
//! thread, one `mio::Poll`, edge-triggered, the same pre-rendered response
//! (`examples/www/index.html` with the same headers) for every GET/HEAD,
//! keep-alive and pipelining. Not a general server: a yardstick.
//!
//! ```text
//! cargo run --release --example peer_mio -- --addr 127.0.0.1:8081
//! ```

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[path = "peer_common/mod.rs"]
mod peer_common;
use peer_common::Response;

#[derive(Parser, Debug)]
#[command(about = "mio peer server for httpbench")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// The file served.
    #[arg(long)]
    file: Option<PathBuf>,
}

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    len: usize,
    out_off: usize,
    out: Vec<u8>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let mut resp = Response::load(args.file.as_deref())?;
    let mut poll = Poll::new()?;
    let mut l = TcpListener::bind(args.addr)?;
    println!("listening on {}", l.local_addr()?);
    let _ = io::stdout().flush();
    poll.registry()
        .register(&mut l, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(256);
    loop {
        match poll.poll(&mut events, Some(Duration::from_secs(1))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        resp.tick(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            if poll
                                .registry()
                                .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)
                                .is_err()
                            {
                                free.push(i);
                                continue;
                            }
                            conns[i] = Some(Conn {
                                s,
                                buf: vec![0; 8192],
                                len: 0,
                                out_off: 0,
                                out: Vec::with_capacity(8192),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let i = ev.token().0;
            let Some(Some(c)) = conns.get_mut(i) else {
                continue;
            };
            if !serve(c, &resp) {
                conns[i] = None;
                free.push(i);
            }
        }
    }
}

/// Read, answer, write until it would block. False: close.
fn serve(c: &mut Conn, resp: &Response) -> bool {
    loop {
        // Flush.
        while c.out_off < c.out.len() {
            match c.s.write(&c.out[c.out_off..]) {
                Ok(n) => c.out_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        c.out.clear();
        c.out_off = 0;
        if c.len == c.buf.len() {
            return false;
        }
        match c.s.read(&mut c.buf[c.len..]) {
            Ok(0) => return false,
            Ok(n) => {
                c.len += n;
                while let Some(used) = resp.answer(&c.buf[..c.len], &mut c.out) {
                    c.buf.copy_within(used..c.len, 0);
                    c.len -= used;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}
