//! Message framing: one type byte, an i32 length that counts itself, then the body.
//!
//! Frames are checked before anything is allocated for them: a length below 4 or above the
//! configured maximum is an error, and a frame is only handed out once it is complete in the
//! buffer. Handing out is a split of the read buffer, so relaying never re-encodes a message.

use bytes::{Buf, Bytes, BytesMut};

/// A complete message: `raw` holds the type byte, length and body exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub raw: Bytes,
}

impl Frame {
    /// The message body (after the 5-byte header).
    pub fn body(&self) -> &[u8] {
        self.raw.get(5..).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i32 },
    #[error("message type {tag:?} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("invalid frontend message type {0}")]
    UnexpectedType(u8),
}

/// Where the next frame in a buffer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// A whole frame of `len` bytes (header included) starts the buffer.
    Complete { tag: u8, len: usize },
    /// More bytes are needed; `len` is the frame's full size once known.
    Partial { needed: Option<usize> },
}

/// Looks at the frame at the start of `buf` without consuming it.
pub fn peek(buf: &[u8], max: usize) -> Result<Peek, FrameError> {
    let Some(header) = buf.get(..5) else {
        return Ok(Peek::Partial { needed: None });
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(FrameError::BadLength {
            tag: tag as char,
            len,
        });
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge {
            tag: tag as char,
            len: total,
            max,
        });
    }
    if buf.len() >= total {
        Ok(Peek::Complete { tag, len: total })
    } else {
        Ok(Peek::Partial {
            needed: Some(total),
        })
    }
}

/// Takes the next complete frame off the front of `buf`, if there is one.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, FrameError> {
    match peek(buf, max)? {
        Peek::Complete { tag, len } => Ok(Some(Frame {
            tag,
            raw: buf.split_to(len).freeze(),
        })),
        Peek::Partial { needed } => {
            if let Some(n) = needed {
                // Reserve once for the whole frame rather than growing it read by read.
                buf.reserve(n.saturating_sub(buf.len()));
            }
            Ok(None)
        }
    }
}

/// The most a frontend message may have after login: like Postgres, the messages that carry
/// statements or data (Query, Parse, Bind, FunctionCall, CopyData) up to `max`, the others
/// [`SMALL_FRONTEND_MESSAGE`].
pub const SMALL_FRONTEND_MESSAGE: usize = 10_000;

/// The size limit (header included) of a frontend message of type `tag` after login, or None
/// for a type byte no frontend message has: known from the header, before the body arrives,
/// so a client that declares a long body behind a bad type byte is refused at once rather than
/// waited for (Postgres too checks the type before it reads the body).
pub fn frontend_limit(tag: u8, max: usize) -> Option<usize> {
    match tag {
        b'Q' | b'P' | b'B' | b'F' | b'd' => Some(max),
        b'C' | b'D' | b'E' | b'H' | b'S' | b'X' | b'c' | b'f' => {
            Some(SMALL_FRONTEND_MESSAGE.min(max))
        }
        _ => None,
    }
}

/// A cursor over a message body that never panics: every read is bounds-checked.
pub struct BodyReader<'a> {
    buf: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed message body")]
pub struct Malformed;

impl<'a> BodyReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BodyReader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// A NUL-terminated string; must be UTF-8.
    pub fn cstr(&mut self) -> Result<&'a str, Malformed> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| Malformed)
    }

    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let nul = memchr::memchr(0, self.buf).ok_or(Malformed)?;
        let s = &self.buf[..nul];
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        self.i32().map(|v| v as u32)
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.bytes(1)?[0])
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Appends a frame header for a message whose body will be `body_len` bytes.
pub fn put_header(out: &mut BytesMut, tag: u8, body_len: usize) {
    out.extend_from_slice(&[tag]);
    out.extend_from_slice(&((body_len + 4) as i32).to_be_bytes());
}

/// Appends a complete message.
pub fn put_message(out: &mut BytesMut, tag: u8, body: &[u8]) {
    put_header(out, tag, body.len());
    out.extend_from_slice(body);
}

pub fn advance_frame(buf: &mut BytesMut, len: usize) {
    buf.advance(len);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn complete_frame_is_split_off() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09abcd\0Z"[..]);
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(f.body(), b"abcd\0");
        assert_eq!(&buf[..], b"Z");
        assert_eq!(next_frame(&mut buf, 1024).unwrap(), None);
    }

    #[test]
    fn negative_and_short_lengths_are_errors() {
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut buf, 1024),
            Err(FrameError::BadLength { .. })
        ));
        let mut buf = BytesMut::from(&b"Q\0\0\0\x03"[..]);
        assert!(matches!(
            next_frame(&mut buf, 1024),
            Err(FrameError::BadLength { .. })
        ));
    }

    #[test]
    fn oversize_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&b"d\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            next_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn partial_frame_waits() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x09ab"[..]);
        assert_eq!(next_frame(&mut buf, 1024).unwrap(), None);
        assert_eq!(buf.len(), 7);
    }

    #[test]
    fn body_reader_never_panics() {
        let mut r = BodyReader::new(b"ab");
        assert!(r.cstr().is_err());
        assert!(r.i32().is_err());
        assert_eq!(r.i16().unwrap(), 0x6162);
        assert!(r.u8().is_err());
    }
}
