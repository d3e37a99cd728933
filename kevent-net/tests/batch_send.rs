//! `BatchSender` on real sockets: what the kernel refuses is counted and
//! skipped, the rest of the batch still goes out, in order. (The
//! would-block and zero-return paths cannot be provoked on loopback UDP —
//! loopback frees a datagram's send-buffer charge as it is sent — so they
//! are covered by the unit tests in `source/send.rs` with scripted
//! syscall results.)
#![cfg(not(any(loom, miri)))] // real sockets

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use kevent_net::BatchSender;

fn recv_all(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < want {
        let n = sock.recv(&mut buf).unwrap();
        got.push(buf[..n].to_vec());
    }
    sock.set_nonblocking(true).unwrap();
    assert!(sock.recv(&mut buf).is_err(), "more datagrams than sent");
    got
}

#[test]
fn refused_destinations_are_counted_and_the_rest_is_sent() {
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let good = rx.local_addr().unwrap();
    // An IPv6 destination on an IPv4 socket: EAFNOSUPPORT for that
    // message only.
    let bad: SocketAddr = "[::1]:9".parse().unwrap();
    let msgs: Vec<(Vec<u8>, SocketAddr)> = (0..7u8)
        .map(|i| (vec![i; 3], if i % 3 == 1 { bad } else { good }))
        .collect();
    // Batches of 4: the second batch starts mid-list.
    let mut s = BatchSender::new(4);
    let st = s.send_with(tx.as_fd(), msgs.len(), |i| (&msgs[i].0[..], msgs[i].1));
    let bad_count = msgs.iter().filter(|m| m.1 == bad).count();
    assert_eq!(st.errors, bad_count, "{st:?}");
    assert_eq!(st.sent, msgs.len() - bad_count, "{st:?}");
    assert_eq!(st.would_block, 0);
    // Each refused message ends a sendmmsg call and costs one of its own.
    assert!(st.syscalls >= 2 + bad_count, "{st:?}");
    let got = recv_all(&rx, st.sent);
    let want: Vec<Vec<u8>> = msgs
        .iter()
        .filter(|m| m.1 == good)
        .map(|m| m.0.clone())
        .collect();
    assert_eq!(got, want, "sent in order, refused ones skipped");
}

#[test]
fn a_batch_larger_than_the_sender_is_split() {
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let msgs: Vec<[u8; 2]> = (0..10u16).map(u16::to_be_bytes).collect();
    let mut s = BatchSender::new(3);
    let st = s.send_with(tx.as_fd(), msgs.len(), |i| (&msgs[i][..], to));
    assert_eq!((st.sent, st.errors, st.would_block), (10, 0, 0));
    assert_eq!(st.syscalls, 4, "ceil(10 / 3) sendmmsg calls");
    let got = recv_all(&rx, 10);
    assert_eq!(got, msgs.iter().map(|m| m.to_vec()).collect::<Vec<_>>());
}

#[test]
fn a_closed_peer_is_an_error_not_a_panic() {
    // A connected socket whose peer is gone gets ECONNREFUSED on a later
    // send (from the ICMP port unreachable of an earlier one).
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = gone.local_addr().unwrap();
    drop(gone);
    tx.connect(to).unwrap();
    let mut s = BatchSender::new(8);
    let mut errors = 0;
    for _ in 0..20 {
        let st = s.send_with(tx.as_fd(), 4, |_| (&b"x"[..], to));
        assert_eq!(st.sent + st.errors + st.would_block, 4, "{st:?}");
        errors += st.errors;
        if errors > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(errors > 0, "ECONNREFUSED was never reported");
}
