//! The Unix-domain socket clients on this host may use (`[proxy] unix_socket_dir`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    /// `{path}.lock`, locked for as long as the socket is ours (as Postgres keeps
    /// `.s.PGSQL.{port}.lock`): a second process starting on the same path waits for no probe
    /// to tell it the socket is taken, and cannot replace it between its probe and its bind.
    _lock: Lock,
}

struct Lock {
    path: PathBuf,
    file: File,
}

impl LocalSocket {
    pub async fn bind(dir: &Path, port: u16, mode: u32) -> anyhow::Result<LocalSocket> {
        let path = tenantgate_config::unix_socket_path(dir, port);
        let context = |what: &str| format!("proxy.unix_socket_dir: {what} {}", path.display());
        let lock = Lock::take(&path)
            .map_err(|why| anyhow::anyhow!("{} ({why})", context("cannot use")))?;
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
            _lock: lock,
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
        // The lock is dropped after this, so the socket file goes first.
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the file handle, after this. A process
        // that opened the old file meanwhile finds, once it holds the lock, that the path no
        // longer names it, and starts again.
        if same_file(&self.path, &self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Lock {
    fn take(socket: &Path) -> Result<Lock, String> {
        let mut path = socket.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let shown = path.display();
        // A previous holder may remove the file between our open and our lock: try again.
        for _ in 0..3 {
            // O_NOFOLLOW, and a plain file with one link: the directory may be shared (PgBouncer
            // defaults to /tmp), and nobody may point the lock at another file to have it
            // truncated.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| format!("cannot open the lock file {shown}: {e}"))?;
            let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
            if !meta.is_file() || meta.nlink() != 1 {
                return Err(format!("{shown} is not a plain file of its own"));
            }
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(format!("another process holds the lock file {shown}"))
                }
                Err(TryLockError::Error(e)) => return Err(format!("cannot lock {shown}: {e}")),
            }
            if same_file(&path, &file) {
                // Who holds it, for whoever looks (as in Postgres' lock files).
                let mut file = file;
                let _ = file.set_len(0);
                let _ = writeln!(file, "{}", std::process::id());
                return Ok(Lock { path, file });
            }
        }
        Err(format!("the lock file {shown} keeps being replaced"))
    }
}

/// Whether `path` still names the file `file` has open.
fn same_file(path: &Path, file: &File) -> bool {
    match (std::fs::symlink_metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
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
