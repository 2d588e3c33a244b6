//! Result sets of the admin console, written with pgwire's RowDescription / DataRow /
//! CommandComplete so that psql and drivers print them like any query result.

use bytes::{BufMut, BytesMut};
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription, FORMAT_CODE_TEXT};
use pgwire::messages::response::CommandComplete;
use pgwire::messages::Message;

/// Column types: `int8` for counts and times (clients right-align them), `text` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text,
    Int8,
}

impl Type {
    fn oid_and_size(self) -> (u32, i16) {
        match self {
            Type::Text => (25, -1),
            Type::Int8 => (20, 8),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Null,
}

impl Cell {
    fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Cell::Text(s) => Some(s.as_str().into()),
            Cell::Int(n) => Some(n.to_string().into()),
            Cell::Null => None,
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<i64> for Cell {
    fn from(n: i64) -> Cell {
        Cell::Int(n)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Cell {
    fn from(n: usize) -> Cell {
        Cell::from(n as u64)
    }
}

/// A result set: columns, rows, and the command tag that closes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub columns: Vec<(&'static str, Type)>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Type)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; a row of the wrong width is padded with NULLs or cut (a bug, not a crash).
    pub fn push(&mut self, mut row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len(), "admin table row width");
        row.resize(self.columns.len(), Cell::Null);
        self.rows.push(row);
    }

    /// The column's cell in `row`, by name (tests and callers that read results back).
    pub fn get(&self, row: usize, column: &str) -> Option<&Cell> {
        let i = self.columns.iter().position(|(c, _)| *c == column)?;
        self.rows.get(row)?.get(i)
    }

    /// RowDescription, the DataRows and CommandComplete `tag`.
    pub fn encode(&self, tag: &str, out: &mut BytesMut) {
        let fields = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let (oid, size) = ty.oid_and_size();
                FieldDescription::new(name.to_string(), 0, 0, oid, size, -1, FORMAT_CODE_TEXT)
            })
            .collect();
        encode(&RowDescription::new(fields), out);
        for row in &self.rows {
            let mut data = BytesMut::new();
            for cell in row {
                match cell.text() {
                    Some(t) => {
                        data.put_i32(i32::try_from(t.len()).unwrap_or(i32::MAX));
                        data.put_slice(t.as_bytes());
                    }
                    None => data.put_i32(-1),
                }
            }
            let count = i16::try_from(row.len()).unwrap_or(i16::MAX);
            encode(&DataRow::new(data, count), out);
        }
        encode(&CommandComplete::new(tag.to_string()), out);
    }
}

fn encode<M: Message>(m: &M, out: &mut BytesMut) {
    if let Err(e) = m.encode(out) {
        tracing::error!(error = %e, "failed to encode an admin console message");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::protocol::frame::next_frame;

    #[test]
    fn encodes_row_description_rows_and_tag() {
        let mut t = Table::new(&[("database", Type::Text), ("cl_active", Type::Int8)]);
        t.push(vec!["app".into(), 3i64.into()]);
        t.push(vec![Cell::Null, 0i64.into()]);
        let mut out = BytesMut::new();
        t.encode("SHOW", &mut out);
        let tags: Vec<u8> = std::iter::from_fn(|| next_frame(&mut out, 1 << 20).unwrap())
            .map(|f| f.tag)
            .collect();
        assert_eq!(tags, b"TDDC");
        assert_eq!(t.get(0, "cl_active"), Some(&Cell::Int(3)));
    }
}
