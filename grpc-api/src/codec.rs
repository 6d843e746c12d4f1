//! The server's gRPC codec: prost's, with two changes to how a message is written into
//! tonic's encode buffer, and the count of client message bytes.
//!
//! - **Large messages** (list answers, merged watch responses) are written after the buffer
//!   is grown once to their size. tonic's buffer starts at 8 KiB and doubles as an encoding
//!   outgrows it, copying what was encoded so far each time: a list answer of a few MiB was
//!   copied about twice more than it needed (`realloc` was ~1.7 % of a server's CPU under
//!   the Kubernetes profile).
//! - **Small messages** (every unary answer, most watch responses) are encoded into a
//!   per-thread scratch vector and copied into the buffer in one piece. prost writes a varint
//!   a byte at a time, and each byte written into tonic's buffer is an out-of-line
//!   `BytesMut::put_slice` call: a response header alone (cluster and member ids are
//!   10-byte varints) took ~40 of them. Writing into a `Vec` inlines to a store per byte;
//!   the extra copy of a message of at most [`SCRATCH_MAX`] bytes costs less than the calls
//!   it saves (watch fan-out at saturation: ~10 % of the server's CPU was these calls).
//! - **Already encoded parts** (the events of a watch response, shared by every watcher
//!   that receives them) go straight into tonic's buffer: only the fields around them take
//!   the scratch vector, so their bytes are copied once, not twice.
//! - **A watch stream's buffer** starts at [`WireMessage::BUFFER_BYTES`] (64 KiB) instead of
//!   tonic's 8 KiB. tonic gathers a stream's responses in the buffer until 32 KiB before it
//!   hands them to HTTP/2; starting at 8 KiB, the buffer grew three times on the way, and
//!   each growth copied what it held.
//! - **Client bytes**: every message written or read through [`WireCodec`] adds its length
//!   (without gRPC's 5-byte prefix) to [`CLIENT_SENT_BYTES`] or [`CLIENT_RECEIVED_BYTES`],
//!   etcd's `etcd_network_client_grpc_{sent,received}_bytes_total`, counted as etcd's codec
//!   counts them: one atomic add per message. Member-to-member traffic goes through
//!   [`PeerCodec`], the same codec without the count (it has metrics of its own, `peer.rs`).
//!   gRPC's health service has its own codec and is not counted, where etcd counts it.

use std::marker::PhantomData;
use std::sync::LazyLock;

use bytes::{Buf, BufMut};
use prometheus::IntCounter;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// Bytes of the messages the server's codec wrote to gRPC clients: process-wide, as etcd's
/// package-level counter is (every server of a process adds to it).
pub static CLIENT_SENT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new("etcd_network_client_grpc_sent_bytes_total", "The total number of bytes sent to grpc clients.")
        .expect("valid metric")
});

/// Bytes of the messages the server's codec read from gRPC clients (process-wide).
pub static CLIENT_RECEIVED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients.",
    )
    .expect("valid metric")
});

/// Where a codec's message bytes are counted.
pub trait Traffic: Send + 'static {
    fn sent(bytes: usize);
    fn received(bytes: usize);
}

/// Client traffic: counted in [`CLIENT_SENT_BYTES`] and [`CLIENT_RECEIVED_BYTES`].
pub struct ClientTraffic;

impl Traffic for ClientTraffic {
    fn sent(bytes: usize) {
        CLIENT_SENT_BYTES.inc_by(bytes as u64);
    }

    fn received(bytes: usize) {
        CLIENT_RECEIVED_BYTES.inc_by(bytes as u64);
    }
}

/// Member-to-member traffic: not client bytes (the peer transport counts its own).
pub struct PeerTraffic;

impl Traffic for PeerTraffic {
    fn sent(_bytes: usize) {}

    fn received(_bytes: usize) {}
}

/// tonic's prost codec with the encoder of this module ([`WireEncoder`]); decoding is
/// prost's. Each message's bytes are counted as `K` says.
pub struct TrafficCodec<T, U, K>(PhantomData<(T, U, K)>);

/// The codec of every client-facing service (etcd's, the admin APIs): counts client bytes.
pub type WireCodec<T, U> = TrafficCodec<T, U, ClientTraffic>;

/// The codec of the peer protocol (`proto/peer.proto`): the same, without the count.
pub type PeerCodec<T, U> = TrafficCodec<T, U, PeerTraffic>;

impl<T, U, K> Default for TrafficCodec<T, U, K> {
    fn default() -> Self {
        TrafficCodec(PhantomData)
    }
}

impl<T, U, K> Codec for TrafficCodec<T, U, K>
where
    T: WireMessage + Send + 'static,
    U: Message + Default + Send + 'static,
    K: Traffic,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WireEncoder<T, K>;
    type Decoder = CountingDecoder<U, K>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        CountingDecoder(ProstDecoder::default(), PhantomData)
    }
}

/// prost's decoder, counting each message's bytes first.
pub struct CountingDecoder<U, K>(ProstDecoder<U>, PhantomData<K>);

impl<U: Message + Default, K: Traffic> Decoder for CountingDecoder<U, K> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands over exactly one message (its length prefix already taken off).
        K::received(src.remaining());
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Messages up to this size are encoded through the per-thread scratch vector, which keeps
/// at most this capacity.
pub const SCRATCH_MAX: usize = 16 << 10;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A message the server writes: every prost message, and the answers whose parts are
/// already encoded (`watch::WireResponse`).
pub trait WireMessage {
    /// Initial capacity of the encode buffer of a response (a stream's, or a unary
    /// answer's): tonic's default unless the message says otherwise.
    const BUFFER_BYTES: usize = DEFAULT_BUFFER_BYTES;

    fn encoded_len(&self) -> usize;
    /// Writes the message; `buf` has room for [`WireMessage::encoded_len`] bytes.
    fn encode(&self, buf: &mut impl BufMut);

    /// Writes the message into tonic's buffer, which has room for `len`
    /// ([`WireMessage::encoded_len`]) bytes: by default through the scratch vector when
    /// small ([`write_small`]), else directly.
    fn write(&self, len: usize, buf: &mut EncodeBuf<'_>) {
        if len <= SCRATCH_MAX {
            write_small(self, buf);
        } else {
            self.encode(buf);
        }
    }
}

/// tonic's default initial encode buffer.
const DEFAULT_BUFFER_BYTES: usize = 8 << 10;

/// tonic's default: a stream's encoded responses are handed to HTTP/2 once they reach this
/// many bytes (or when the stream has no response ready).
const YIELD_THRESHOLD_BYTES: usize = 32 << 10;

/// Writes `message` (at most [`SCRATCH_MAX`] bytes) through the per-thread scratch vector,
/// then into `buf` in one piece.
pub fn write_small(message: &(impl WireMessage + ?Sized), buf: &mut EncodeBuf<'_>) {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        scratch.reserve(SCRATCH_MAX);
        message.encode(scratch);
        buf.put_slice(scratch);
    });
}

impl<T: Message> WireMessage for T {
    fn encoded_len(&self) -> usize {
        Message::encoded_len(self)
    }

    fn encode(&self, buf: &mut impl BufMut) {
        Message::encode(self, buf).expect("the codec reserved the message's length");
    }
}

/// Encodes a message into the buffer: through the scratch vector when small, else after
/// reserving its encoded length; its bytes are counted as `K` says.
pub struct WireEncoder<T, K>(PhantomData<(T, K)>);

impl<T: WireMessage, K: Traffic> Encoder for WireEncoder<T, K> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let len = item.encoded_len();
        K::sent(len);
        buf.reserve(len);
        item.write(len, buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(T::BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}
