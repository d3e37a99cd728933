//! kevent-net: socket storage, network AIO, packet channels.
//!
//! The packet path (Van Jacobson's net channels in user space):
//!
//! - [`BufferPool`]: fixed-size packet buffers in one page-aligned region,
//!   addressed by id.
//! - [`channel`]: single-producer/single-consumer rings of 16-byte
//!   [`PacketDesc`]s with need-wakeup.
//! - [`Classifier`]: exact-match flow table from [`FlowKey`] to channel.
//!
//! ```
//! use kevent_net::{channel, BufferPool, PacketDesc};
//!
//! let mut pool = BufferPool::new(64, 2048)?;
//! let (mut tx, mut rx) = channel(64)?;
//!
//! let mut buf = pool.alloc().expect("pool is not empty");
//! pool.bytes_mut(&mut buf)?[..5].copy_from_slice(b"hello");
//! tx.push(PacketDesc::new(buf.into_raw(), 5, 0))?;
//!
//! let d = rx.pop()?;
//! // SAFETY: the id came from `into_raw` of this pool, once.
//! let buf = unsafe { pool.from_raw(d.buf) }?;
//! assert_eq!(&pool.bytes(&buf)?[..d.len as usize], b"hello");
//! pool.free(buf);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[cfg(not(loom))]
mod bufring;
mod channel;
mod loom;
#[cfg(not(loom))]
mod sys;

pub use channel::{
    channel, ChannelError, ChunkError, Consumer, Notifier, PacketDesc, PopError, Producer,
    PushError, ReadChunk, WaitPrep, WriteChunk, MAX_CAPACITY,
};
#[cfg(not(loom))]
pub use channel::{wait_in, ChannelConsumer};

#[cfg(not(loom))]
pub mod aio;
mod classifier;
mod pool;
#[cfg(not(loom))]
mod socket;
#[cfg(not(loom))]
pub mod source;

pub use classifier::{
    Classifier, ClassifierError, DispatchError, FlowKey, FlowStats, Route, PROTO_TCP, PROTO_UDP,
};
pub use pool::{
    Buf, BufferPool, PoolError, DEFAULT_BUF_SIZE, MAX_BUF_SIZE, MIN_BUF_SIZE, REGION_ALIGN,
};
#[cfg(not(loom))]
pub use socket::{Interest, KnoteOpts, QueueRef, Registration, TcpListener, TcpStream, UdpSocket};
#[cfg(not(loom))]
pub use source::{BatchSender, PacketSource, RecvMode, SourceStats};
