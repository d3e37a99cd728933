//! The unit a channel carries: a 16-byte packet descriptor.

/// A packet descriptor: which buffer, how many bytes of it, which flow.
///
/// Descriptors are what a [`channel`](crate::channel()) moves; the packet bytes stay
/// in their [`BufferPool`](crate::BufferPool) buffer and are never copied.
/// The layout is fixed (`#[repr(C)]`, 16 bytes, 8-aligned), so four
/// descriptors fill a 64-byte cache line.
///
/// # Examples
///
/// ```
/// use kevent_net::PacketDesc;
///
/// let d = PacketDesc { buf: 7, len: 172, flow: 3 };
/// assert_eq!(std::mem::size_of::<PacketDesc>(), 16);
/// assert_eq!(d, PacketDesc::new(7, 172, 3));
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PacketDesc {
    /// Buffer id in the [`BufferPool`](crate::BufferPool) that holds the bytes.
    pub buf: u32,
    /// Number of valid bytes at the start of the buffer.
    pub len: u32,
    /// Flow id, as assigned by the [`Classifier`](crate::Classifier)
    /// (or any tag the producer chooses).
    pub flow: u64,
}

impl PacketDesc {
    /// Builds a descriptor.
    #[must_use]
    #[inline]
    pub const fn new(buf: u32, len: u32, flow: u64) -> Self {
        Self { buf, len, flow }
    }
}

const _: () = assert!(std::mem::size_of::<PacketDesc>() == 16);
const _: () = assert!(std::mem::align_of::<PacketDesc>() == 8);
