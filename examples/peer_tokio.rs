//! peer_tokio: the tokio peer of evserver for httpbench — a current-thread
//! runtime, one task per connection, the same pre-rendered response
//! (`examples/www/index.html`, same headers) for every GET/HEAD,
//! keep-alive and pipelining. A yardstick, not a general server.
//!
//! ```text
//! cargo run --release --example peer_tokio -- --addr 127.0.0.1:8082
//! ```

use clap::Parser;
use std::cell::RefCell;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "peer_common/mod.rs"]
mod peer_common;
use peer_common::Response;

#[derive(Parser, Debug)]
#[command(about = "tokio current-thread peer server for httpbench")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    addr: SocketAddr,
    /// The file served.
    #[arg(long)]
    file: Option<PathBuf>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let resp = Rc::new(RefCell::new(Response::load(args.file.as_deref())?));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let l = tokio::net::TcpListener::bind(args.addr).await?;
        println!("listening on {}", l.local_addr()?);
        let _ = io::stdout().flush();
        // The Date, once a second.
        let r2 = resp.clone();
        tokio::task::spawn_local(async move {
            let mut iv = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                iv.tick().await;
                let s = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                r2.borrow_mut().tick(s);
            }
        });
        loop {
            let (mut s, _) = match l.accept().await {
                Ok(x) => x,
                Err(_) => continue,
            };
            let _ = s.set_nodelay(true);
            let resp = resp.clone();
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                let mut out = Vec::with_capacity(8192);
                loop {
                    if len == buf.len() {
                        return;
                    }
                    let n = match s.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    len += n;
                    {
                        let r = resp.borrow();
                        while let Some(used) = r.answer(&buf[..len], &mut out) {
                            buf.copy_within(used..len, 0);
                            len -= used;
                        }
                    }
                    if !out.is_empty() {
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    })
}
