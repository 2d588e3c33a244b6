//! A framed connection for the request/response phases (startup, authentication, resets),
//! where one side waits for the other. The relay loop takes the stream and buffer over.

use crate::io::Stream;
use crate::protocol::frame::{frontend_limit, next_frame, Frame, FrameError};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Framed {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub max_message: usize,
}

impl Framed {
    pub fn new(stream: Stream, max_message: usize) -> Self {
        Framed {
            stream,
            // Small: most clients are idle most of the time; reads grow it as needed.
            rbuf: BytesMut::with_capacity(1024),
            max_message,
        }
    }

    /// Reads one complete frame. Cancel-safe: bytes read stay in `rbuf`.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnError> {
        let max = self.max_message;
        self.read_checked(|_| Some(max)).await
    }

    /// Reads one client message after login: a type byte no frontend message has is refused
    /// as soon as it arrives, and each type has its size limit ([`frontend_limit`]), so a bad
    /// header is not waited for up to its declared length.
    pub async fn read_client_frame(&mut self) -> Result<Frame, ConnError> {
        let max = self.max_message;
        self.read_checked(|tag| frontend_limit(tag, max)).await
    }

    /// Reads one authentication message (password, SASL): another type is refused at once.
    pub async fn read_password_message(&mut self) -> Result<Frame, ConnError> {
        let max = self.max_message;
        self.read_checked(|tag| (tag == b'p').then_some(max)).await
    }

    /// Like [`Framed::read_frame`], with the limit for each type byte (None: refused).
    async fn read_checked(
        &mut self,
        limit: impl Fn(u8) -> Option<usize>,
    ) -> Result<Frame, ConnError> {
        loop {
            if let Some(&tag) = self.rbuf.first() {
                let max = limit(tag).ok_or(FrameError::UnexpectedType(tag))?;
                if let Some(frame) = next_frame(&mut self.rbuf, max)? {
                    return Ok(frame);
                }
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }
}
