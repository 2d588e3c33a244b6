//! The Unix-domain socket clients on this host may use (`[proxy] unix_socket_dir`).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

/// How long a connect to an existing socket file may take before it counts as live.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `{unix_socket_dir}/.s.PGSQL.{port}`, the file libpq looks for with `host=<dir> port=<port>`.
/// The file is removed on drop, if it is still the one this process bound.
pub struct LocalSocket {
    listener: UnixListener,
    pub path: PathBuf,
    /// Device and inode of the socket file, to leave alone a file someone else put there.
    file: (u64, u64),
}

impl LocalSocket {
    pub async fn bind(dir: &Path, port: u16, mode: u32) -> anyhow::Result<LocalSocket> {
        let path = tenantgate_config::unix_socket_path(dir, port);
        let context = |what: &str| format!("proxy.unix_socket_dir: {what} {}", path.display());
        remove_if_stale(&path)
            .await
            .map_err(|why| anyhow::anyhow!("{} ({why})", context("cannot use")))?;
        let listener = listen(&path, mode)
            .map_err(|e| anyhow::anyhow!("{}: {e}", context("cannot listen on")))?;
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", context("cannot read")))?;
        Ok(LocalSocket {
            listener,
            path,
            file: (meta.dev(), meta.ino()),
        })
    }

    /// The next client, or never when there is no socket.
    pub async fn accept(socket: Option<&LocalSocket>) -> io::Result<UnixStream> {
        match socket {
            Some(s) => s.listener.accept().await.map(|(stream, _)| stream),
            None => std::future::pending().await,
        }
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A socket file left by a process that died (connecting is refused) is removed. Anything
/// else is an error: another file, a live socket, or one whose state cannot be told.
async fn remove_if_stale(path: &Path) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_socket() {
        return Err("exists and is not a socket".into());
    }
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket: {e}"))
        }
        Ok(Ok(_)) => Err("another process is listening on it".into()),
        Ok(Err(e)) => Err(format!(
            "cannot tell whether another process uses it: {e}; remove it if it is stale"
        )),
        Err(_) => Err("another process is listening on it (connecting did not finish)".into()),
    }
}

/// Binds, sets the file's mode, and only then listens: no client can connect while the file
/// still has the mode the umask gave it.
fn listen(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let listening = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .and_then(|()| socket.listen(1024))
        .and_then(|()| socket.set_nonblocking(true));
    if let Err(e) = listening {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    UnixListener::from_std(std::os::unix::net::UnixListener::from(socket)).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}
