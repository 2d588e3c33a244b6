//! Bind-time check: the values of tenant parameters must equal the session tenant.

use crate::decision::{ArrayCast, Decision, Rejection, Rule, TenantArray};

const OID_UNSPECIFIED: u32 = 0;
const OID_INT8: u32 = 20;
const OID_INT2: u32 = 21;
const OID_INT4: u32 = 23;
const OID_TEXT: u32 = 25;
const OID_UNKNOWN: u32 = 705;
const OID_BPCHAR: u32 = 1042;
const OID_VARCHAR: u32 = 1043;
const OID_UUID: u32 = 2950;
const OID_INT2_ARRAY: u32 = 1005;
const OID_INT4_ARRAY: u32 = 1007;
const OID_TEXT_ARRAY: u32 = 1009;
const OID_VARCHAR_ARRAY: u32 = 1015;
const OID_INT8_ARRAY: u32 = 1016;
const OID_UUID_ARRAY: u32 = 2951;

fn mismatch(reason: String) -> Rejection {
    Rejection {
        rule: Rule::TenantValueMismatch,
        reason,
    }
}

impl Decision {
    /// Check the Bind parameters of a statement against the session tenant.
    ///
    /// `formats` follows the Bind message: none = all text, one = applies to all, else per
    /// parameter. `param_types` are the OIDs from Parse (missing/0 = unspecified, read as text).
    pub fn check_bind(
        &self,
        params: &[Option<&[u8]>],
        formats: &[i16],
        param_types: &[u32],
        tenant: &str,
    ) -> Result<(), Rejection> {
        for &pos in &self.tenant_params {
            let (bytes, format, oid) =
                bound(pos, "tenant parameter", params, formats, param_types)?;
            let value = decode(bytes, format, oid)
                .map_err(|e| mismatch(format!("tenant parameter ${pos}: {e}")))?;
            let equal = matches_as(oid, &value, tenant)
                .map_err(|e| mismatch(format!("tenant parameter ${pos} {e}")))?;
            if !equal {
                return Err(mismatch(format!(
                    "tenant parameter ${pos} does not equal the session tenant"
                )));
            }
        }
        for array in &self.tenant_array_params {
            check_array(array, params, formats, param_types, tenant)?;
        }
        Ok(())
    }
}

/// The value bound to `$pos` (NULL and absent are mismatches), its format code and its
/// declared type (0 when the Parse left it unspecified).
fn bound<'p>(
    pos: usize,
    what: &str,
    params: &[Option<&'p [u8]>],
    formats: &[i16],
    param_types: &[u32],
) -> Result<(&'p [u8], i16, u32), Rejection> {
    let idx = pos
        .checked_sub(1)
        .ok_or_else(|| mismatch("invalid parameter position $0".into()))?;
    let Some(slot) = params.get(idx) else {
        return Err(mismatch(format!("{what} ${pos} was not supplied")));
    };
    let Some(bytes) = slot else {
        return Err(mismatch(format!("{what} ${pos} is NULL")));
    };
    let format = match formats.len() {
        0 => 0,
        1 => formats[0],
        _ => *formats
            .get(idx)
            .ok_or_else(|| mismatch(format!("no format code for ${pos}")))?,
    };
    let oid = param_types.get(idx).copied().unwrap_or(OID_UNSPECIFIED);
    Ok((bytes, format, oid))
}

/// An array parameter every element of which must equal the tenant, as declared and as cast,
/// and which is at least as long as the other UNNEST arrays (see
/// [`Decision::tenant_array_params`]).
fn check_array(
    array: &TenantArray,
    params: &[Option<&[u8]>],
    formats: &[i16],
    param_types: &[u32],
    tenant: &str,
) -> Result<(), Rejection> {
    let TenantArray {
        param: pos,
        max,
        cast,
        ref others,
        min_len,
    } = *array;
    let what = format!("tenant array parameter ${pos}");
    let (bytes, format, oid) = bound(pos, "tenant array parameter", params, formats, param_types)?;
    let element = match oid {
        OID_TEXT_ARRAY => OID_TEXT,
        OID_VARCHAR_ARRAY => OID_VARCHAR,
        OID_UUID_ARRAY => OID_UUID,
        OID_INT2_ARRAY => OID_INT2,
        OID_INT4_ARRAY => OID_INT4,
        OID_INT8_ARRAY => OID_INT8,
        OID_UNSPECIFIED | OID_UNKNOWN => OID_UNSPECIFIED,
        other => {
            return Err(mismatch(format!(
                "{what} has type oid {other}: declare it as text[], varchar[], uuid[] or an integer array"
            )))
        }
    };
    if let Some(max) = max.filter(|m| tenant.chars().count() > *m) {
        return Err(mismatch(format!(
            "{what} is cast to varchar({max})[], which would cut the session tenant short"
        )));
    }
    let values = match format {
        0 => std::str::from_utf8(bytes)
            .map_err(|_| "text value is not UTF-8".to_owned())
            .and_then(parse_text_array),
        1 => decode_binary_array(bytes, element),
        f => Err(format!("unknown format code {f}")),
    }
    .map_err(|e| mismatch(format!("{what}: {e}")))?;
    for (i, value) in values.iter().enumerate() {
        let Some(value) = value else {
            return Err(mismatch(format!("{what} has a NULL element")));
        };
        let equal =
            matches_as(element, value, tenant).map_err(|e| mismatch(format!("{what} {e}")))?;
        // The server converts the element to the cast's type: an integer cast stores `42`
        // for the text `042`, another tenant's.
        let as_cast = match cast {
            ArrayCast::Text => true,
            ArrayCast::Integer => matches_as(OID_INT8, value, tenant).unwrap_or(false),
            ArrayCast::Uuid => matches_as(OID_UUID, value, tenant).unwrap_or(false),
        };
        if !equal || !as_cast {
            return Err(mismatch(format!(
                "element {} of {what} does not equal the session tenant",
                i + 1
            )));
        }
    }
    // UNNEST pads the shorter arrays with NULL: a longer other array adds rows whose tenant
    // column is NULL.
    if values.len() < min_len {
        return Err(mismatch(format!(
            "{what} has {} elements, another UNNEST array {min_len}",
            values.len()
        )));
    }
    for &other in others {
        let idx = other.checked_sub(1).unwrap_or(usize::MAX);
        let len = match params.get(idx) {
            None => return Err(mismatch(format!("UNNEST array ${other} was not supplied"))),
            Some(None) => 0,
            Some(Some(_)) => {
                let (bytes, format, _) =
                    bound(other, "UNNEST array", params, formats, param_types)?;
                array_len(bytes, format)
                    .map_err(|e| mismatch(format!("UNNEST array ${other}: {e}")))?
            }
        };
        if len > values.len() {
            return Err(mismatch(format!(
                "{what} has {} elements, UNNEST array ${other} {len}: UNNEST would insert rows with a NULL tenant",
                values.len()
            )));
        }
    }
    Ok(())
}

/// The number of elements (all dimensions) of an array of any type, or more: in the text
/// format both `,` and `;` (box's delimiter) count as delimiters outside quotes; dimension
/// decorations are refused.
fn array_len(bytes: &[u8], format: i16) -> Result<usize, String> {
    match format {
        0 => {
            let s = std::str::from_utf8(bytes).map_err(|_| "text value is not UTF-8")?;
            let s = s.trim_matches(|c: char| c.is_ascii_whitespace());
            let inner = s
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or("not an array {…} without dimension decorations")?;
            if inner
                .trim_matches(|c: char| c.is_ascii_whitespace())
                .is_empty()
            {
                return Ok(0);
            }
            let (mut n, mut quoted, mut chars) = (1usize, false, inner.chars());
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => quoted = !quoted,
                    ',' | ';' if !quoted => n = n.saturating_add(1),
                    _ => {}
                }
            }
            Ok(n)
        }
        1 => {
            let mut r = bytes;
            let ndim = read_i32(&mut r, "dimensions")?;
            if !(0..=6).contains(&ndim) {
                return Err(format!("binary array of {ndim} dimensions"));
            }
            let _flags = read_i32(&mut r, "null flag")?;
            let _elem = read_i32(&mut r, "element type")?;
            if ndim == 0 {
                return Ok(0);
            }
            let mut n = 1usize;
            for _ in 0..ndim {
                let len = usize::try_from(read_i32(&mut r, "length")?)
                    .map_err(|_| "negative dimension")?;
                let _lower = read_i32(&mut r, "lower bound")?;
                n = n.checked_mul(len).ok_or("binary array too large")?;
            }
            Ok(n)
        }
        f => Err(format!("unknown format code {f}")),
    }
}

/// A one-dimensional array in the text format, strictly: `{a,"b c",NULL}` — elements separated
/// by commas, either double-quoted (with `\` escapes) or bare without whitespace, braces,
/// quotes or backslashes; a bare `NULL` is NULL. Anything else (whitespace, dimensions
/// `[1:2]={…}`, nested arrays) is refused rather than read differently from Postgres.
fn parse_text_array(s: &str) -> Result<Vec<Option<String>>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("not a one-dimensional array {…} without spaces")?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Ok(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('\\') => v.push(chars.next().ok_or("unterminated escape")?),
                    Some('"') => break,
                    Some(c) => v.push(c),
                    None => return Err("unterminated quoted element".into()),
                }
            }
            out.push(Some(v));
        } else {
            let mut v = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if matches!(c, '{' | '}' | '"' | '\\') || c.is_whitespace() {
                    return Err(format!(
                        "unsupported character {c:?} in an unquoted element"
                    ));
                }
                v.push(c);
                chars.next();
            }
            if v.is_empty() {
                return Err("empty element".into());
            }
            out.push((!v.eq_ignore_ascii_case("NULL")).then_some(v));
        }
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {c:?} after an element")),
        }
    }
}

/// The next big-endian i32 of a binary array, named `what` in the error if it is missing.
fn read_i32(r: &mut &[u8], what: &str) -> Result<i32, String> {
    let (head, rest) = r
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("binary array ends before its {what}"))?;
    *r = rest;
    Ok(i32::from_be_bytes(*head))
}

/// A one-dimensional array in the binary format (`array_send`): dimensions, null flag, element
/// type, then each element's length (-1: NULL) and bytes. `element`: the element type the
/// parameter's declared type implies (unspecified: the array's own, if one of ours).
fn decode_binary_array(bytes: &[u8], element: u32) -> Result<Vec<Option<String>>, String> {
    let mut r = bytes;
    let ndim = read_i32(&mut r, "dimensions")?;
    let _flags = read_i32(&mut r, "null flag")?;
    let elem = u32::from_be_bytes(read_i32(&mut r, "element type")?.to_be_bytes());
    if element != OID_UNSPECIFIED && elem != element {
        return Err(format!(
            "binary array of element type oid {elem}, expected {element}"
        ));
    }
    let count = match ndim {
        0 => 0,
        1 => {
            let len = read_i32(&mut r, "length")?;
            let _lower = read_i32(&mut r, "lower bound")?;
            usize::try_from(len).map_err(|_| format!("binary array length {len}"))?
        }
        n => return Err(format!("binary array of {n} dimensions; one is supported")),
    };
    // Every element takes at least its 4-byte length: bound the count before allocating.
    if count > r.len() / 4 {
        return Err(format!(
            "binary array claims {count} elements in {} bytes",
            r.len()
        ));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_i32(&mut r, "element length")?;
        if len == -1 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| format!("binary element length {len}"))?;
        if len > r.len() {
            return Err("binary array element runs past the end".into());
        }
        let (value, rest) = r.split_at(len);
        r = rest;
        out.push(Some(decode_binary(value, elem)?));
    }
    if !r.is_empty() {
        return Err("binary array has trailing bytes".into());
    }
    Ok(out)
}

/// Decode one parameter to its text form.
fn decode(bytes: &[u8], format: i16, oid: u32) -> Result<String, String> {
    match format {
        0 => std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "text value is not UTF-8".to_owned()),
        1 => decode_binary(bytes, oid),
        f => Err(format!("unknown format code {f}")),
    }
}

fn decode_binary(bytes: &[u8], oid: u32) -> Result<String, String> {
    match oid {
        OID_TEXT | OID_VARCHAR | OID_BPCHAR | OID_UNKNOWN | OID_UNSPECIFIED => {
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|_| "binary text value is not UTF-8".to_owned())
        }
        OID_UUID => {
            let b: [u8; 16] = bytes
                .try_into()
                .map_err(|_| format!("binary uuid has {} bytes, expected 16", bytes.len()))?;
            Ok(format_uuid(&b))
        }
        OID_INT2 => int_be::<2>(bytes).map(|b| i16::from_be_bytes(b).to_string()),
        OID_INT4 => int_be::<4>(bytes).map(|b| i32::from_be_bytes(b).to_string()),
        OID_INT8 => int_be::<8>(bytes).map(|b| i64::from_be_bytes(b).to_string()),
        other => Err(format!(
            "binary format for type oid {other} is not supported for tenant parameters"
        )),
    }
}

fn int_be<const N: usize>(bytes: &[u8]) -> Result<[u8; N], String> {
    bytes
        .try_into()
        .map_err(|_| format!("binary integer has {} bytes, expected {N}", bytes.len()))
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Parse the textual forms Postgres accepts for uuid input (hyphens optional, braces allowed).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(s);
    let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Does a parameter of type `oid` with text form `value` equal the tenant, as Postgres will
/// compare it? Integers by value, uuids by value, declared strings exactly; a parameter of no
/// declared type takes the column's type on the server (unknown here): exactly, or by uuid
/// value. Types whose input changes the value (`name` truncates at 63 bytes, `"char"` keeps
/// one byte) are refused.
fn matches_as(oid: u32, value: &str, tenant: &str) -> Result<bool, String> {
    Ok(match oid {
        // By value, and only for a tenant written as that integer is: an integer bound for a
        // text tenant column is stored in its canonical form (`42` for tenant `042` would be
        // another tenant's row).
        OID_INT2 | OID_INT4 | OID_INT8 => value
            .trim()
            .parse::<i64>()
            .is_ok_and(|v| v.to_string() == tenant),
        OID_UUID => matches!((parse_uuid(value), parse_uuid(tenant)), (Some(a), Some(b)) if a == b),
        OID_TEXT | OID_VARCHAR | OID_BPCHAR => value == tenant,
        OID_UNKNOWN | OID_UNSPECIFIED => tenant_matches(value, tenant),
        other => {
            return Err(format!(
                "has type oid {other}: declare it as text, varchar, uuid or an integer type"
            ))
        }
    })
}

/// Tenant equality of a value whose type the server decides: exact, or by uuid value if both
/// parse as uuids (a uuid column compares values; numbers are not compared by value: `'007'`
/// is another tenant than `'7'` in a text column).
pub(crate) fn tenant_matches(value: &str, tenant: &str) -> bool {
    if let (Some(a), Some(b)) = (parse_uuid(value), parse_uuid(tenant)) {
        return a == b;
    }
    value == tenant
}
