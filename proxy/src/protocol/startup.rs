//! The untyped startup packets a client sends before the regular message flow.

use super::frame::{BodyReader, Malformed};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAX_STARTUP_PACKET: usize = 10 * 1024;
pub const SSL_REQUEST: i32 = 80877103;
pub const GSSENC_REQUEST: i32 = 80877104;
pub const CANCEL_REQUEST: i32 = 80877102;
pub const PROTOCOL_3_0: i32 = 196608;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// Protocol 3.x; `minor` above 0 is answered with NegotiateProtocolVersion.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed during startup")]
    Closed,
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout")]
    Malformed,
    #[error("i/o error during startup: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Malformed> for StartupError {
    fn from(_: Malformed) -> Self {
        StartupError::Malformed
    }
}

/// Reads one startup packet. The length is checked before the body is allocated.
pub async fn read_startup<R: AsyncRead + Unpin>(io: &mut R) -> Result<StartupPacket, StartupError> {
    let mut len_buf = [0u8; 4];
    match io.read_exact(&mut len_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(StartupError::Closed)
        }
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len_buf);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    io.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StartupError::Closed
        } else {
            StartupError::Io(e)
        }
    })?;
    parse_startup(&body)
}

/// Parses a startup packet body (everything after the length).
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let mut r = BodyReader::new(body);
    let code = r.i32()?;
    match code {
        SSL_REQUEST if r.remaining() == 0 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if r.remaining() == 0 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            let secret = r.i32()?;
            // Protocol 3.2 allows longer keys; our keys are always 4 bytes, so anything else
            // cannot match and is ignored by the caller like any unknown key.
            Ok(StartupPacket::Cancel { pid, secret })
        }
        SSL_REQUEST | GSSENC_REQUEST => Err(StartupError::Malformed),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup {
                minor,
                params: parse_params(&mut r)?,
            })
        }
    }
}

fn parse_params(r: &mut BodyReader<'_>) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = r.cstr()?;
        if name.is_empty() {
            break;
        }
        let value = r.cstr()?;
        if params.len() >= 64 {
            return Err(StartupError::Malformed);
        }
        params.push((name.to_string(), value.to_string()));
    }
    if r.remaining() != 0 {
        return Err(StartupError::Malformed);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = ((rest.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    #[tokio::test]
    async fn parses_startup_params() {
        let p = packet(PROTOCOL_3_0, b"user\0u\0database\0d\0\0");
        let s = read_startup(&mut &p[..]).await.unwrap();
        assert_eq!(
            s,
            StartupPacket::Startup {
                minor: 0,
                params: vec![("user".into(), "u".into()), ("database".into(), "d".into())]
            }
        );
    }

    #[tokio::test]
    async fn rejects_bad_lengths_and_versions() {
        let huge = (1_000_000i32).to_be_bytes();
        assert!(matches!(
            read_startup(&mut &huge[..]).await,
            Err(StartupError::BadLength(_))
        ));
        let neg = (-5i32).to_be_bytes();
        assert!(matches!(
            read_startup(&mut &neg[..]).await,
            Err(StartupError::BadLength(_))
        ));
        let v2 = packet(0x0002_0000, b"\0");
        assert!(matches!(
            read_startup(&mut &v2[..]).await,
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        let unterminated = packet(PROTOCOL_3_0, b"user\0u");
        assert!(matches!(
            read_startup(&mut &unterminated[..]).await,
            Err(StartupError::Malformed)
        ));
        let truncated = &packet(PROTOCOL_3_0, b"user\0u\0\0")[..10];
        assert!(matches!(
            read_startup(&mut &truncated[..]).await,
            Err(StartupError::Closed)
        ));
    }

    #[tokio::test]
    async fn parses_requests() {
        let p = packet(SSL_REQUEST, b"");
        assert_eq!(
            read_startup(&mut &p[..]).await.unwrap(),
            StartupPacket::SslRequest
        );
        let p = packet(CANCEL_REQUEST, &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(
            read_startup(&mut &p[..]).await.unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
    }
}
