//! The audit file on disk: appending, the tail left by an earlier run, and numbered rotation
//! (`<path>.000001`, `<path>.000002`, … oldest first).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The current audit file, open for appending.
pub(super) struct FileSink {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    /// (device, inode) of the open file, to notice when `path` names another file.
    id: (u64, u64),
}

impl FileSink {
    pub fn open(path: &Path) -> io::Result<FileSink> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let meta = file.metadata()?;
        Ok(FileSink {
            path: path.to_path_buf(),
            size: meta.len(),
            id: (meta.dev(), meta.ino()),
            out: BufWriter::with_capacity(64 * 1024, file),
        })
    }

    pub fn write(&mut self, line: &str) -> io::Result<()> {
        self.out.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and fsyncs.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// How the file ends (read from the open file, whatever `path` names now).
    pub fn tail(&mut self) -> io::Result<Tail> {
        self.out.flush()?;
        read_tail(self.out.get_ref())
    }

    /// True when `path` was renamed away or removed since it was opened.
    pub fn replaced(&self) -> bool {
        match std::fs::metadata(&self.path) {
            Ok(meta) => (meta.dev(), meta.ino()) != self.id,
            Err(_) => true,
        }
    }
}

/// How an earlier run left the current file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tail {
    /// Missing or empty.
    Empty,
    /// Ends with a newline; the last line (without it).
    Clean(String),
    /// Ends with a partial line (killed mid-write); the last complete line, if any.
    Truncated(Option<String>),
}

/// Reads backwards from the end of `file` until the last complete line is found.
fn read_tail(file: &File) -> io::Result<Tail> {
    let size = file.metadata()?.len();
    if size == 0 {
        return Ok(Tail::Empty);
    }
    let mut want = size.min(64 * 1024);
    loop {
        let mut buf = vec![0; usize::try_from(want).map_err(io::Error::other)?];
        file.read_exact_at(&mut buf, size - want)?;
        let whole = want == size;
        let clean = buf.last() == Some(&b'\n');
        // End of the last complete line (exclusive), if this window shows one.
        let end = if clean {
            Some(buf.len() - 1)
        } else {
            buf.iter().rposition(|&b| b == b'\n')
        };
        let start = end.map(|end| buf[..end].iter().rposition(|&b| b == b'\n'));
        let line = match (end, start) {
            (None, _) if whole => return Ok(Tail::Truncated(None)),
            (Some(end), Some(Some(nl))) => &buf[nl + 1..end],
            (Some(end), Some(None)) if whole => &buf[..end],
            _ => {
                want = size.min(want.saturating_mul(4));
                continue;
            }
        };
        let line = String::from_utf8_lossy(line).into_owned();
        return Ok(if clean {
            Tail::Clean(line)
        } else {
            Tail::Truncated(Some(line))
        });
    }
}

/// `<path>.NNNNNN`
pub(super) fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index:06}"));
    PathBuf::from(name)
}

/// The rotated files of `path`, oldest (lowest number) first.
pub fn rotated_files(path: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix(base))
            .and_then(|n| n.strip_prefix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((index, rotated_name(path, index)));
    }
    found.sort();
    Ok(found)
}

/// Renames `path` to the next numbered name and deletes all but the `keep` newest rotated
/// files. Returns the new name of the file.
pub(super) fn rotate(path: &Path, keep: usize) -> io::Result<PathBuf> {
    let existing = rotated_files(path)?;
    let next = existing.last().map_or(1, |(i, _)| i + 1);
    let target = rotated_name(path, next);
    std::fs::rename(path, &target)?;
    let excess = (existing.len() + 1).saturating_sub(keep);
    for (_, old) in existing.iter().take(excess) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "cannot remove old audit file");
        }
    }
    Ok(target)
}

/// The file name of `path`, for `prev_file`.
pub(super) fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
