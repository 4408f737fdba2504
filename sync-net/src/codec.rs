//! Framing: each message travels as a frame with a fixed header, over any
//! byte stream (a QUIC stream in production, `tokio::io::duplex` in tests).
//!
//! ```text
//! version: u16 BE | kind: u8 | flags: u8 | length: u32 BE | payload
//! ```
//!
//! The payload is the engine's encoded envelope, zstd-compressed when the
//! `COMPRESSED` flag is set (payloads above [`COMPRESS_ABOVE`] bytes). The
//! length is checked against [`MAX_FRAME_BYTES`] before anything is
//! allocated, and decompression stops at the same limit.

use sync_core::{MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest payload accepted, compressed or not.
pub const MAX_FRAME_BYTES: usize = sync_core::MAX_MESSAGE_BYTES;
/// Payloads larger than this are compressed.
pub const COMPRESS_ABOVE: usize = 16 * 1024;
/// The first allocation for a frame's payload; it grows as bytes arrive.
const READ_CHUNK: usize = 64 * 1024;
/// Header length in bytes.
pub const HEADER_BYTES: usize = 8;
/// The payload is zstd-compressed.
pub const COMPRESSED: u8 = 0b0000_0001;

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed or ended mid-frame.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended cleanly between frames.
    #[error("the stream ended")]
    Closed,
    /// The declared length exceeds the limit.
    #[error("frame of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Declared size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Another protocol version.
    #[error("protocol version {got} is not supported (this device speaks {min} to {max})")]
    UnsupportedVersion {
        /// The version in the frame.
        got: u16,
        /// The oldest supported.
        min: u16,
        /// The newest supported.
        max: u16,
    },
    /// Unknown flag bits.
    #[error("unknown frame flags {0:#04x}")]
    Flags(u8),
    /// The payload does not decompress within the limit.
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    /// The payload is not a message, or not the kind its header says.
    #[error("{0}")]
    Decode(String),
    /// A frame started and did not finish in time.
    #[error("a frame started and did not finish within {0:?}")]
    Stalled(std::time::Duration),
    /// A message too large to send in one frame.
    #[error("message of {0} bytes is too large for one frame; page it")]
    Oversized(usize),
}

impl FrameError {
    /// Whether the stream can still be used after this error (the frame was
    /// read whole, only its content is refused).
    pub fn frame_consumed(&self) -> bool {
        matches!(self, FrameError::Decompress(_) | FrameError::Decode(_))
    }
}

/// Writes one message as a frame; returns the bytes written.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
) -> Result<usize, FrameError> {
    let encoded = sync_core::encode(message).map_err(|e| FrameError::Decode(e.to_string()))?;
    let (payload, flags) = if encoded.len() > COMPRESS_ABOVE {
        let compressed = zstd::bulk::compress(&encoded, 3)?;
        (compressed, COMPRESSED)
    } else {
        (encoded, 0)
    };
    if payload.len() > MAX_FRAME_BYTES {
        return Err(FrameError::Oversized(payload.len()));
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::Oversized(payload.len()))?;
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload.len());
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    frame.push(message.kind());
    frame.push(flags);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    metrics::counter!("syncable_bytes_sent_total").increment(frame.len() as u64);
    Ok(frame.len())
}

/// Reads one frame and decodes its message.
pub async fn read_message<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Message, FrameError> {
    read_message_within(reader, None).await
}

/// Reads one frame and decodes its message; once the frame's first byte
/// has arrived, the rest must arrive within `body` (a peer that starts a
/// frame and stalls holds the stream no longer than that). Waiting for a
/// frame to start is not bounded: a quiet stream is not an attack.
pub async fn read_message_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    body: Option<std::time::Duration>,
) -> Result<Message, FrameError> {
    let mut first = [0u8; 1];
    match reader.read_exact(&mut first).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    match body {
        Some(limit) => tokio::time::timeout(limit, read_rest(reader, first[0]))
            .await
            .map_err(|_| FrameError::Stalled(limit))?,
        None => read_rest(reader, first[0]).await,
    }
}

async fn read_rest<R: AsyncRead + Unpin>(reader: &mut R, first: u8) -> Result<Message, FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    header[0] = first;
    reader.read_exact(&mut header[1..]).await?;
    let version = u16::from_be_bytes([header[0], header[1]]);
    let kind = header[2];
    let flags = header[3];
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion {
            got: version,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        });
    }
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            size: len,
            max: MAX_FRAME_BYTES,
        });
    }
    if flags & !COMPRESSED != 0 {
        return Err(FrameError::Flags(flags));
    }
    // The buffer grows with the bytes that arrive, never ahead of them: a
    // peer that sends headers promising large frames and then stalls holds
    // only what it actually sent.
    let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
    let read = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut payload)
        .await?;
    if read < len {
        return Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the stream ended {read} bytes into a {len} byte frame"),
        )));
    }
    metrics::counter!("syncable_bytes_received_total").increment((HEADER_BYTES + len) as u64);
    let payload = if flags & COMPRESSED != 0 {
        zstd::bulk::decompress(&payload, MAX_FRAME_BYTES)
            .map_err(|e| FrameError::Decompress(e.to_string()))?
    } else {
        payload
    };
    let message = sync_core::decode(&payload).map_err(|e| FrameError::Decode(e.to_string()))?;
    if message.kind() != kind {
        return Err(FrameError::Decode(format!(
            "frame says kind {kind}, message is a {}",
            message.kind_name()
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::{Heartbeat, PullResponse, VersionVector};

    fn heartbeat() -> Message {
        Message::Heartbeat(Heartbeat {
            vector: VersionVector::new(),
            members: [0; 32],
            links: Vec::new(),
            held: Vec::new(),
            since: None,
        })
    }

    #[tokio::test]
    async fn messages_round_trip_over_a_byte_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_message(&mut a, &heartbeat()).await.unwrap();
        assert_eq!(read_message(&mut b).await.unwrap(), heartbeat());
    }

    #[tokio::test]
    async fn large_payloads_are_compressed_and_restored() {
        let big = Message::PullResponse(PullResponse {
            batches: (0..2_000u128)
                .map(|i| sync_core::Batch {
                    origin: uuid::Uuid::from_u128(i + 1),
                    device: uuid::Uuid::from_u128(7),
                    after: 0,
                    upto: 7,
                    changes: Vec::new(),
                    seals: Vec::new(),
                })
                .collect(),
            has_more: false,
        });
        let (mut a, mut b) = tokio::io::duplex(1 << 22);
        let written = write_message(&mut a, &big).await.unwrap();
        assert!(
            written < sync_core::encode(&big).unwrap().len(),
            "compressed"
        );
        assert_eq!(read_message(&mut b).await.unwrap(), big);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_it_is_read() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut header = Vec::new();
        header.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        header.push(8);
        header.push(0);
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        a.write_all(&header).await.unwrap();
        assert!(matches!(
            read_message(&mut b).await,
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn another_version_is_named_with_the_supported_range() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let next = PROTOCOL_VERSION + 1;
        let mut frame = next.to_be_bytes().to_vec();
        frame.extend_from_slice(&[8, 0, 0, 0, 0, 0]);
        a.write_all(&frame).await.unwrap();
        assert!(matches!(
            read_message(&mut b).await,
            Err(FrameError::UnsupportedVersion { got, .. }) if got == next
        ));
    }

    #[tokio::test]
    async fn garbage_payloads_and_decompression_bombs_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let garbage = [1u8, 2, 3, 4, 5];
        let mut frame = Vec::new();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        frame.extend_from_slice(&[8, 0]);
        frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
        frame.extend_from_slice(&garbage);
        a.write_all(&frame).await.unwrap();
        let err = read_message(&mut b).await.unwrap_err();
        assert!(err.frame_consumed(), "{err}");

        // 64 MiB of zeros compress to a few KiB: refused at the limit.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        let mut frame = Vec::new();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        frame.extend_from_slice(&[8, COMPRESSED]);
        frame.extend_from_slice(&(bomb.len() as u32).to_be_bytes());
        frame.extend_from_slice(&bomb);
        a.write_all(&frame).await.unwrap();
        assert!(matches!(
            read_message(&mut b).await,
            Err(FrameError::Decompress(_))
        ));
        // The stream is still usable.
        write_message(&mut a, &heartbeat()).await.unwrap();
        assert_eq!(read_message(&mut b).await.unwrap(), heartbeat());
    }
}
