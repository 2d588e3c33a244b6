//! `tenantgate audit verify`: checks the hash chain over files given in chronological order.

use super::record::{chain_hash, is_hash, split_line, ZERO_HASH};
use serde::Deserialize;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    /// The chain starts at the first record of a log (prev_hash zero); false when it starts at
    /// a header whose earlier files were not given (rotated away).
    pub from_genesis: bool,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok: {} records, chain intact (seq {}..{}, last hash {})",
            self.records, self.first_seq, self.last_seq, self.last_hash
        )?;
        if !self.from_genesis {
            write!(
                f,
                "; the chain starts at a file header: the files before it were not given"
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("no audit records")]
    Empty,
    /// The first record that is altered, out of place, or preceded by missing records.
    #[error("{file}:{line}: {problem}")]
    Broken {
        file: String,
        line: u64,
        problem: String,
    },
    /// The chain is intact but a file ends with a partial line (the writer was killed while
    /// writing it).
    #[error("{file}: truncated final line {line} (crash during write?); the {records} complete records are intact")]
    Truncated {
        file: String,
        line: u64,
        records: u64,
    },
}

/// The fields of a line the chain is checked with.
#[derive(Debug, Deserialize)]
pub(super) struct LinkFields {
    pub seq: u64,
    pub event: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Parses one line (without its newline) and checks its own hash.
pub(super) fn parse_link(line: &str) -> Result<LinkFields, String> {
    let (canonical, hash) =
        split_line(line).ok_or("not an audit record (no final \"hash\" member)")?;
    let link: LinkFields =
        serde_json::from_str(line).map_err(|e| format!("not an audit record: {e}"))?;
    if link.hash != hash || !is_hash(&link.prev_hash) {
        return Err("not an audit record (bad hash fields)".into());
    }
    if chain_hash(&link.prev_hash, canonical.as_bytes()) != hash {
        return Err(format!(
            "record seq {} altered: its hash does not match its content",
            link.seq
        ));
    }
    Ok(link)
}

/// Where the last good record was.
struct Last {
    seq: u64,
    hash: String,
    file: String,
    line: u64,
}

#[derive(Default)]
struct Chain {
    last: Option<Last>,
    records: u64,
    first_seq: u64,
    from_genesis: bool,
    truncated: Option<(String, u64)>,
}

impl Chain {
    /// Links one parsed record to the one before.
    fn link(&mut self, rec: LinkFields, file: &str, line: u64) -> Result<(), String> {
        match &self.last {
            None if rec.prev_hash == ZERO_HASH && rec.seq == 1 => self.from_genesis = true,
            None if rec.event == "header" => self.from_genesis = false,
            None => {
                return Err(format!(
                    "the first record (seq {}) neither starts a log (seq 1, prev_hash 0…0) nor is a file header: earlier records are missing",
                    rec.seq
                ))
            }
            Some(last) if rec.seq > last.seq + 1 => {
                return Err(format!(
                    "{} missing: seq {} follows seq {} ({}:{})",
                    missing(last.seq + 1, rec.seq - 1),
                    rec.seq,
                    last.seq,
                    last.file,
                    last.line
                ))
            }
            Some(last) if rec.seq != last.seq + 1 => {
                return Err(format!(
                    "seq {} after seq {} ({}:{}): record duplicated, reordered or inserted",
                    rec.seq, last.seq, last.file, last.line
                ))
            }
            Some(last) if rec.prev_hash != last.hash => {
                return Err(format!(
                    "seq {}: prev_hash is not the hash of the record before ({}:{}): a record was replaced or inserted",
                    rec.seq, last.file, last.line
                ))
            }
            Some(_) => {}
        }
        if self.last.is_none() {
            self.first_seq = rec.seq;
        }
        self.records += 1;
        self.last = Some(Last {
            seq: rec.seq,
            hash: rec.hash,
            file: file.to_string(),
            line,
        });
        Ok(())
    }

    fn check_file(&mut self, path: &Path) -> Result<(), VerifyError> {
        let file = path.display().to_string();
        let io = |source| VerifyError::Io {
            file: file.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let mut buf = Vec::new();
        let mut line = 0;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io)? == 0 {
                return Ok(());
            }
            line += 1;
            if buf.pop() != Some(b'\n') {
                // A partial final line is what a crash mid-write leaves; the chain continues
                // (in the next file) from the last complete record.
                self.truncated.get_or_insert((file.clone(), line));
                return Ok(());
            }
            let broken = |problem: String| VerifyError::Broken {
                file: file.clone(),
                line,
                problem,
            };
            let text = std::str::from_utf8(&buf).map_err(|_| broken("not UTF-8".into()))?;
            let rec = parse_link(text).map_err(broken)?;
            self.link(rec, &file, line).map_err(broken)?;
        }
    }
}

fn missing(from: u64, to: u64) -> String {
    if from == to {
        format!("record seq {from}")
    } else {
        format!("records seq {from}..{to}")
    }
}

/// Checks the chain over `files`, given oldest first (`<path>.000001 … <path>`). The first
/// problem found wins; a truncated final line is reported only if the chain is otherwise intact.
pub fn verify(files: &[PathBuf]) -> Result<Verified, VerifyError> {
    let mut chain = Chain::default();
    for path in files {
        chain.check_file(path)?;
    }
    if let Some((file, line)) = chain.truncated {
        return Err(VerifyError::Truncated {
            file,
            line,
            records: chain.records,
        });
    }
    let Some(last) = chain.last else {
        return Err(VerifyError::Empty);
    };
    Ok(Verified {
        records: chain.records,
        first_seq: chain.first_seq,
        last_seq: last.seq,
        last_hash: last.hash,
        from_genesis: chain.from_genesis,
    })
}
