//! Length-prefixed JSON frames (see [`crate::protocol`]): a 4-byte big-endian
//! length, then that many bytes of JSON. Shared by the agent and the client.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::MAX_FRAME_BYTES;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame i/o failed")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("frame is not valid protocol JSON")]
    Json(#[from] serde_json::Error),
}

/// Reads one frame and decodes it. `Ok(None)` on a clean end of stream
/// before the first length byte.
pub async fn read_frame<R, T>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len_buf = [0u8; 4];
    let first = reader.read(&mut len_buf).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut len_buf[first..]).await?;
    let len = u32::from_be_bytes(len_buf) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len });
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Encodes `message` and writes it as one frame, then flushes.
pub async fn write_frame<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len: body.len() });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Request;

    #[tokio::test]
    async fn read_frame_roundtrips_write_frame() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Ping).await.unwrap();
        let got: Option<Request> = read_frame(&mut buf.as_slice()).await.unwrap();
        assert_eq!(got, Some(Request::Ping));
    }

    #[tokio::test]
    async fn read_frame_empty_stream_is_none() {
        let got: Option<Request> = read_frame(&mut &[][..]).await.unwrap();
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn read_frame_oversized_is_rejected() {
        let bytes = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
        let err = read_frame::<_, Request>(&mut &bytes[..]).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
    }
}
