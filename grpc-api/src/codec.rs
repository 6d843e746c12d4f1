//! The server's gRPC codec: prost's, with two changes to how a message is written into
//! tonic's encode buffer.
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

use std::marker::PhantomData;

use bytes::BufMut;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// tonic's prost codec with the encoder of this module ([`WireEncoder`]); decoding is
/// prost's.
pub struct WireCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        WireCodec(PhantomData)
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: WireMessage + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WireEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
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
/// reserving its encoded length.
pub struct WireEncoder<T>(PhantomData<T>);

impl<T: WireMessage> Encoder for WireEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let len = item.encoded_len();
        buf.reserve(len);
        item.write(len, buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(T::BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
    }
}
