//! Classifier: exact-match routing, default-channel fallback, counts and
//! drops.
#![cfg(not(loom))] // loom models are in loom_channel.rs

use std::net::SocketAddr;

use kevent_net::{channel, Classifier, DispatchError, FlowKey, PacketDesc, PROTO_TCP};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn unknown_flows_fall_back_to_the_default_channel() {
    let mut c = Classifier::new(4, 3).unwrap();
    let a = FlowKey::udp(addr("10.0.0.1:5004"), addr("10.0.0.9:4000"));
    let a6 = FlowKey::udp(addr("[fe80::1]:5004"), addr("[fe80::9]:4000"));
    c.insert(a, 1).unwrap();
    c.insert(a6, 2).unwrap();
    assert_eq!(c.len(), 2);

    assert_eq!(c.classify(&a).channel, 1);
    assert_eq!(c.classify(&a6).channel, 2);
    // Every field is part of the key.
    let near_misses = [
        FlowKey {
            src_port: 5005,
            ..a
        },
        FlowKey {
            dst_port: 4001,
            ..a
        },
        FlowKey {
            proto: PROTO_TCP,
            ..a
        },
        FlowKey::udp(addr("10.0.0.2:5004"), addr("10.0.0.9:4000")),
        FlowKey::udp(addr("10.0.0.1:5004"), addr("10.0.0.8:4000")),
        FlowKey::udp(
            addr("[::ffff:10.0.0.1]:5004"),
            addr("[::ffff:10.0.0.9]:4000"),
        ),
    ];
    for k in &near_misses {
        let r = c.classify(k);
        assert_eq!((r.channel, r.flow), (3, Classifier::DEFAULT_FLOW), "{k:?}");
    }
    assert_eq!(c.default_stats().packets, near_misses.len() as u64);
    assert_eq!(c.stats(&a).unwrap().packets, 1);
    assert_eq!(c.stats(&a6).unwrap().packets, 1);

    // Removal sends the flow to the default channel; counts are returned.
    assert_eq!(c.remove(&a).unwrap().packets, 1);
    assert_eq!(c.classify(&a).channel, 3);
    assert!(c.stats(&a).is_none());
}

#[test]
fn bad_channels_are_refused() {
    assert!(Classifier::new(2, 2).is_err());
    let mut c = Classifier::new(2, 0).unwrap();
    let k = FlowKey::tcp(addr("1.1.1.1:1"), addr("2.2.2.2:2"));
    assert!(c.insert(k, 2).is_err());
    assert!(c.is_empty());
}

#[test]
fn dispatch_counts_packets_and_drops_per_flow() {
    let (tx0, mut rx0) = channel(4).unwrap();
    let (tx1, mut rx1) = channel(2).unwrap();
    let mut producers = [tx0, tx1];
    let mut c = Classifier::new(2, 0).unwrap();
    let voice = FlowKey::udp(addr("10.0.0.1:5004"), addr("10.0.0.9:4000"));
    let flow = c.insert(voice, 1).unwrap();
    let other = FlowKey::udp(addr("10.0.0.7:9"), addr("10.0.0.9:4000"));

    for i in 0..5 {
        let r = c.dispatch(&voice, PacketDesc::new(i, 100, 0), &mut producers);
        if i < 2 {
            assert_eq!(r, Ok(1));
        } else {
            assert!(matches!(
                r,
                Err(DispatchError::Full { channel: 1, desc }) if desc.buf == i && desc.flow == flow
            ));
        }
    }
    assert_eq!(
        c.dispatch(&other, PacketDesc::new(9, 1, 0), &mut producers),
        Ok(0)
    );

    let s = c.stats(&voice).unwrap();
    assert_eq!((s.packets, s.drops), (5, 3));
    assert_eq!(c.default_stats().packets, 1);
    assert_eq!(c.default_stats().drops, 0);

    // The descriptors carry their flow id.
    assert_eq!(rx1.pop().unwrap().flow, flow);
    assert_eq!(rx0.pop().unwrap().flow, Classifier::DEFAULT_FLOW);

    // A producer slice too short is a drop too, not a panic.
    assert!(matches!(
        c.dispatch(&voice, PacketDesc::default(), &mut producers[..1]),
        Err(DispatchError::NoProducer { channel: 1, .. })
    ));
    assert_eq!(c.stats(&voice).unwrap().drops, 4);
}

#[test]
fn moving_a_flow_keeps_its_id_and_counts() {
    let mut c = Classifier::new(3, 0).unwrap();
    let k = FlowKey::udp(addr("10.0.0.1:1"), addr("10.0.0.2:2"));
    let id = c.insert(k, 1).unwrap();
    c.classify(&k);
    assert_eq!(c.insert(k, 2).unwrap(), id);
    assert_eq!(c.lookup(&k).channel, 2);
    assert_eq!(c.stats(&k).unwrap().packets, 1);
    assert_eq!(c.flows().count(), 1);
}
