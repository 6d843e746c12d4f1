//! The codec of the answers that are large and already encoded (Range and Watch): prost's,
//! with tonic's encode buffer grown once to the answer's size before it is encoded.
//!
//! tonic encodes each answer into one buffer that starts at 8 KiB and doubles as the
//! encoding outgrows it, copying what was encoded so far each time: a list answer of a few
//! MiB was copied about twice more than it needed (`realloc` was ~1.7 % of a server's CPU
//! under the Kubernetes profile). The size of these answers is cheap to know up front (a sum
//! over their encoded key-values), so the encoder reserves it first.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstCodec;

/// [`ProstCodec`] with a sized encoder ([`SizedEncoder`]); decoding is prost's.
pub struct SizedCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        SizedCodec { prost: ProstCodec::default() }
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.prost.decoder()
    }
}

/// Encodes a message after reserving its encoded length in the buffer.
pub struct SizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).expect("an encode buffer grows to any message");
        Ok(())
    }
}
