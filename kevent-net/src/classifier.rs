//! `Classifier`: the tiny packet classifier of net channels — an
//! exact-match flow table from (protocol, addresses, ports) to a channel
//! index, with a default channel for flows nobody installed.
//!
//! Lookups are one hash of a [`FlowKey`] (FxHash: a multiply and a rotate
//! per word, fine for keys an attacker does not choose freely — see
//! [`Classifier`]) in a `HashMap`; nothing is allocated per lookup.
//! Counters live in a dense table indexed by flow id, so a descriptor can
//! carry its flow id and a drop can be charged later without a second
//! lookup.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::net::{IpAddr, SocketAddr};

use rustc_hash::FxHasher;

use crate::{PacketDesc, Producer, PushError};

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// An exact-match flow key: IP protocol number, source and destination
/// address and port. IPv4 and IPv6 keys never compare equal (an
/// IPv4-mapped IPv6 address is a different key from the IPv4 one).
///
/// # Examples
///
/// ```
/// use kevent_net::FlowKey;
///
/// let k = FlowKey::udp("10.0.0.1:5004".parse()?, "10.0.0.2:4000".parse()?);
/// assert_eq!(k.proto, kevent_net::PROTO_UDP);
/// assert_eq!(k.src_port, 5004);
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number ([`PROTO_UDP`], [`PROTO_TCP`], ...).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowKey {
    /// A key from a protocol and two socket addresses.
    #[must_use]
    pub const fn new(proto: u8, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            proto,
            src: src.ip(),
            src_port: src.port(),
            dst: dst.ip(),
            dst_port: dst.port(),
        }
    }

    /// A UDP key.
    #[must_use]
    pub const fn udp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(PROTO_UDP, src, dst)
    }

    /// A TCP key.
    #[must_use]
    pub const fn tcp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(PROTO_TCP, src, dst)
    }
}

/// Packet and drop counts of one flow (or of the default route).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Packets classified to the flow.
    pub packets: u64,
    /// Packets of the flow dropped because its channel was full.
    pub drops: u64,
}

/// Where [`Classifier::classify`] sends a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Channel index.
    pub channel: usize,
    /// Flow id, to store in [`PacketDesc::flow`] and pass to
    /// [`Classifier::record_drop`]; [`Classifier::DEFAULT_FLOW`] for
    /// unknown flows.
    pub flow: u64,
}

/// A classifier operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClassifierError {
    /// The channel index is not below the classifier's channel count.
    NoSuchChannel(usize),
    /// `u32::MAX` flows are installed.
    TableFull,
    /// Room for the flow table could not be allocated.
    OutOfMemory,
}

impl fmt::Display for ClassifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchChannel(c) => write!(f, "no channel {c}"),
            Self::TableFull => f.write_str("flow table is full"),
            Self::OutOfMemory => f.write_str("cannot allocate room for the flow table"),
        }
    }
}

impl std::error::Error for ClassifierError {}

/// [`Classifier::dispatch`] could not deliver; the descriptor (with its
/// flow id set) is handed back. Both cases are counted as a drop of the
/// flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DispatchError {
    /// The flow's channel is full.
    Full {
        /// The channel index.
        channel: usize,
        /// The descriptor not pushed.
        desc: PacketDesc,
    },
    /// The flow's channel index has no producer in the slice given.
    NoProducer {
        /// The channel index.
        channel: usize,
        /// The descriptor not pushed.
        desc: PacketDesc,
    },
}

impl fmt::Display for DispatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { channel, .. } => write!(f, "channel {channel} is full"),
            Self::NoProducer { channel, .. } => write!(f, "no producer for channel {channel}"),
        }
    }
}

impl std::error::Error for DispatchError {}

#[derive(Debug)]
struct FlowEntry {
    key: Option<FlowKey>,
    channel: usize,
    generation: u32,
    stats: FlowStats,
}

type FxBuildHasher = BuildHasherDefault<FxHasher>;

/// Exact-match flow table: [`FlowKey`] → channel index, with a default
/// channel for unknown flows and per-flow packet and drop counts.
///
/// A flow id is a table slot plus a generation (`generation << 32 | slot`),
/// so the id of a removed flow is never charged to the flow that reuses
/// its slot.
///
/// The hash is FxHash, not a keyed hash: on a table fed with arbitrary
/// source addresses from the network an attacker could aim collisions at
/// it. Flows are installed by the application (sockets, participants), not
/// by packets, which bounds the table; unknown packets cost one failed
/// lookup.
///
/// # Examples
///
/// ```
/// use kevent_net::{Classifier, FlowKey};
///
/// let mut c = Classifier::new(3, 0)?;
/// let alice = FlowKey::udp("10.0.0.1:5004".parse()?, "10.0.0.9:4000".parse()?);
/// let flow = c.insert(alice, 2)?;
/// assert_eq!(c.classify(&alice).channel, 2);
/// assert_eq!(c.classify(&alice).flow, flow);
///
/// let stranger = FlowKey::udp("10.9.9.9:1".parse()?, "10.0.0.9:4000".parse()?);
/// let r = c.classify(&stranger);
/// assert_eq!((r.channel, r.flow), (0, Classifier::DEFAULT_FLOW));
/// assert_eq!(c.stats(&alice).unwrap().packets, 2);
/// assert_eq!(c.default_stats().packets, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Classifier {
    map: HashMap<FlowKey, u32, FxBuildHasher>,
    /// Slot 0 is the default route.
    flows: Vec<FlowEntry>,
    free_slots: Vec<u32>,
    channels: usize,
}

impl Classifier {
    /// Flow id of packets of unknown flows (the default route).
    pub const DEFAULT_FLOW: u64 = 0;

    /// A classifier over `channels` channels sending unknown flows to
    /// `default_channel`.
    ///
    /// # Errors
    ///
    /// [`ClassifierError::NoSuchChannel`] if `default_channel >= channels`.
    pub fn new(channels: usize, default_channel: usize) -> Result<Self, ClassifierError> {
        if default_channel >= channels {
            return Err(ClassifierError::NoSuchChannel(default_channel));
        }
        Ok(Self {
            map: HashMap::default(),
            flows: vec![FlowEntry {
                key: None,
                channel: default_channel,
                generation: 0,
                stats: FlowStats::default(),
            }],
            free_slots: Vec::new(),
            channels,
        })
    }

    /// Pre-allocates room for `n` more flows, so that inserting them does
    /// not allocate.
    ///
    /// # Errors
    ///
    /// [`ClassifierError::OutOfMemory`] if the room cannot be allocated
    /// (e.g. an absurd `n`); the classifier is unchanged apart from any
    /// room already reserved.
    pub fn reserve(&mut self, n: usize) -> Result<(), ClassifierError> {
        self.map
            .try_reserve(n)
            .map_err(|_| ClassifierError::OutOfMemory)?;
        self.flows
            .try_reserve(n)
            .map_err(|_| ClassifierError::OutOfMemory)
    }

    fn flow_id(slot: u32, generation: u32) -> u64 {
        (u64::from(generation) << 32) | u64::from(slot)
    }

    /// Installs (or moves) a flow; returns its flow id. Moving an installed
    /// flow to another channel keeps its id and counts.
    ///
    /// # Errors
    ///
    /// [`ClassifierError::NoSuchChannel`] if `channel` is out of range;
    /// [`ClassifierError::TableFull`] past `u32::MAX - 1` flows.
    pub fn insert(&mut self, key: FlowKey, channel: usize) -> Result<u64, ClassifierError> {
        if channel >= self.channels {
            return Err(ClassifierError::NoSuchChannel(channel));
        }
        if let Some(&slot) = self.map.get(&key) {
            let e = &mut self.flows[slot as usize];
            e.channel = channel;
            return Ok(Self::flow_id(slot, e.generation));
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                let e = &mut self.flows[slot as usize];
                e.key = Some(key);
                e.channel = channel;
                e.stats = FlowStats::default();
                slot
            }
            None => {
                let slot =
                    u32::try_from(self.flows.len()).map_err(|_| ClassifierError::TableFull)?;
                if slot == u32::MAX {
                    return Err(ClassifierError::TableFull);
                }
                self.flows.push(FlowEntry {
                    key: Some(key),
                    channel,
                    generation: 0,
                    stats: FlowStats::default(),
                });
                slot
            }
        };
        self.map.insert(key, slot);
        Ok(Self::flow_id(slot, self.flows[slot as usize].generation))
    }

    /// Removes a flow; its packets go to the default channel from now on.
    /// Returns its final counts, or `None` if it was not installed.
    pub fn remove(&mut self, key: &FlowKey) -> Option<FlowStats> {
        let slot = self.map.remove(key)?;
        let e = &mut self.flows[slot as usize];
        e.key = None;
        e.generation = e.generation.wrapping_add(1);
        self.free_slots.push(slot);
        Some(e.stats)
    }

    /// The route for `key` without counting anything.
    #[must_use]
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Route {
        let slot = self.map.get(key).copied().unwrap_or(0);
        let e = &self.flows[slot as usize];
        Route {
            channel: e.channel,
            flow: Self::flow_id(slot, e.generation),
        }
    }

    /// The route for `key`, counting one packet for its flow (or for the
    /// default route).
    #[inline]
    pub fn classify(&mut self, key: &FlowKey) -> Route {
        let slot = self.map.get(key).copied().unwrap_or(0);
        let e = &mut self.flows[slot as usize];
        e.stats.packets += 1;
        Route {
            channel: e.channel,
            flow: Self::flow_id(slot, e.generation),
        }
    }

    /// Charges one drop to the flow `flow` (a [`Route::flow`]). An id of a
    /// removed flow is ignored; returns whether the drop was counted.
    #[inline]
    pub fn record_drop(&mut self, flow: u64) -> bool {
        let slot = (flow & u64::from(u32::MAX)) as usize;
        let generation = (flow >> 32) as u32;
        match self.flows.get_mut(slot) {
            Some(e) if e.generation == generation && (slot == 0 || e.key.is_some()) => {
                e.stats.drops += 1;
                true
            }
            _ => false,
        }
    }

    /// Classifies `key`, stores the flow id in `desc.flow` and pushes the
    /// descriptor to `producers[channel]`; returns the channel index.
    ///
    /// # Errors
    ///
    /// [`DispatchError::Full`] if the channel is full,
    /// [`DispatchError::NoProducer`] if `producers` is shorter than the
    /// channel index; either is counted as a drop of the flow and hands
    /// the descriptor back.
    pub fn dispatch(
        &mut self,
        key: &FlowKey,
        mut desc: PacketDesc,
        producers: &mut [Producer],
    ) -> Result<usize, DispatchError> {
        let route = self.classify(key);
        desc.flow = route.flow;
        let Some(tx) = producers.get_mut(route.channel) else {
            self.record_drop(route.flow);
            return Err(DispatchError::NoProducer {
                channel: route.channel,
                desc,
            });
        };
        match tx.push(desc) {
            Ok(()) => Ok(route.channel),
            Err(PushError::Full(desc)) => {
                self.record_drop(route.flow);
                Err(DispatchError::Full {
                    channel: route.channel,
                    desc,
                })
            }
        }
    }

    /// Counts of an installed flow.
    #[must_use]
    pub fn stats(&self, key: &FlowKey) -> Option<FlowStats> {
        self.map
            .get(key)
            .map(|&slot| self.flows[slot as usize].stats)
    }

    /// Counts of the default route (unknown flows).
    #[must_use]
    pub fn default_stats(&self) -> FlowStats {
        self.flows[0].stats
    }

    /// The default channel index.
    #[must_use]
    pub fn default_channel(&self) -> usize {
        self.flows[0].channel
    }

    /// Number of channels the classifier routes to.
    #[must_use]
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Number of installed flows (the default route not included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// `true` if no flow is installed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Installed flows with their channel and counts, in no order.
    pub fn flows(&self) -> impl Iterator<Item = (&FlowKey, usize, FlowStats)> + '_ {
        self.flows
            .iter()
            .filter_map(|e| e.key.as_ref().map(|k| (k, e.channel, e.stats)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey::udp(
            SocketAddr::from(([10, 0, 0, 1], port)),
            SocketAddr::from(([10, 0, 0, 2], 4000)),
        )
    }

    #[test]
    fn flow_ids_change_generation_on_reuse() {
        let mut c = Classifier::new(2, 0).unwrap();
        let a = c.insert(key(1), 1).unwrap();
        assert_eq!(a & 0xffff_ffff, 1);
        c.remove(&key(1)).unwrap();
        let b = c.insert(key(2), 1).unwrap();
        assert_eq!(b & 0xffff_ffff, 1, "slot reused");
        assert_ne!(a, b, "generation differs");
        assert!(!c.record_drop(a), "stale id not charged");
        assert!(c.record_drop(b));
        assert_eq!(c.stats(&key(2)).unwrap().drops, 1);
    }
}
