//! The case generator of the frame fuzzer: valid client streams (startup packets, the
//! authentication exchange, simple and extended protocol, COPY, FunctionCall, Terminate) and the
//! mutations applied to them, all driven by one seeded xorshift generator so that a case number
//! always means the same bytes.

use tenantgate_tests::proxy::*;
use tenantgate_tests::wire;

/// A login user that needs no password (policy enforcing, tenant acme).
pub const TRUST_TENANT: &str = TRUST_CLIENT;
/// A login user that needs no password and bypasses the policy.
pub const TRUST_BYPASS: &str = "fuzz_bypass";

/// xorshift64: tiny, deterministic, good enough to pick mutations.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // Zero is the one state xorshift never leaves.
        XorShift(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// One protocol message before serialization: `tag` None is an untagged startup-phase packet.
#[derive(Clone, Debug)]
pub struct Msg {
    pub tag: Option<u8>,
    pub body: Vec<u8>,
}

impl Msg {
    fn tagged(tag: u8, body: Vec<u8>) -> Msg {
        Msg {
            tag: Some(tag),
            body,
        }
    }

    fn untagged(code: i32, rest: &[u8]) -> Msg {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(rest);
        Msg { tag: None, body }
    }
}

pub fn serialize(msgs: &[Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        if let Some(t) = m.tag {
            out.push(t);
        }
        out.extend_from_slice(&(m.body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(&m.body);
    }
    out
}

/// How a case reaches the bytes it sends.
#[derive(Clone, Debug)]
pub enum Start {
    /// Nothing: the case's bytes begin with the startup packets.
    Blind,
    /// Startup and a correct authentication exchange first.
    Login(&'static str),
    /// Startup, then an authentication exchange whose client messages are mutated.
    BadAuth(&'static str),
}

/// What the test does after sending a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// The framing is intact: send a probe and expect its answer (or a close).
    Probe,
    /// Half-close: the proxy must notice the EOF and close.
    Fin,
    /// Drop the socket at once.
    Drop,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub start: Start,
    pub bytes: Vec<u8>,
    pub then: Then,
    /// True when the logged-in user is bound to tenant acme: no other tenant's row may show.
    pub tenant_bound: bool,
    pub what: String,
}

/// Statements a client may send; many are refused by the policy, some open transactions or
/// COPY, some are not SQL at all.
const SQL: &[&str] = &[
    "SELECT 1",
    "SELECT note FROM orders WHERE tenant_id = $1",
    "SELECT note FROM orders",
    "SELECT note FROM orders WHERE tenant_id = 'globex'",
    "SELECT id, note FROM orders WHERE tenant_id = $1 AND id = $2",
    "INSERT INTO scratch (tenant_id, v) VALUES ($1, $2)",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "SET statement_timeout = 2000",
    "SET tenantgate.tenant = 'globex'",
    "SET app.current_tenant = 'globex'",
    "RESET ALL",
    "DISCARD ALL",
    "COPY scratch FROM STDIN",
    "COPY scratch (tenant_id, v) FROM STDIN",
    "COPY (SELECT id FROM orders) TO STDOUT",
    "COPY orders TO STDOUT",
    "SELECT pg_sleep(0.02)",
    "",
    ";",
    "SELECT 1; SELECT 2",
    "BEGIN; SELECT 1",
    "SELEC garbage",
    "SELECT 'unterminated",
    "LISTEN fuzz",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DEALLOCATE ALL",
    "SELECT $1::int4",
    "SELECT current_setting('app.current_tenant')",
    "/* unterminated comment SELECT 1",
    "SELECT \"unterminated",
    "SELECT E'\\x00'",
];

const NAMES: &[&str] = &["", "s1", "p1", "nosuch"];
const PARAMS: &[&[Option<&[u8]>]] = &[
    &[],
    &[Some(b"acme")],
    &[Some(b"globex")],
    &[None],
    &[Some(b"acme"), Some(b"1")],
    &[Some(b"acme"), None, Some(b"x")],
    &[Some(b"\0\0\0\x01")],
];
const FORMATS: &[&[i16]] = &[&[], &[0], &[1], &[0, 1], &[0, 0, 0], &[7], &[-1]];
const FUNCTION_OIDS: &[u32] = &[0, 1242, 2288, 1397, 4_000_000_000];

fn cstr(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(s);
    b.push(0);
}

fn params(b: &mut Vec<u8>, values: &[Option<&[u8]>]) {
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        match v {
            Some(v) => {
                b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                b.extend_from_slice(v);
            }
            None => b.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
}

fn formats(b: &mut Vec<u8>, f: &[i16]) {
    b.extend_from_slice(&(f.len() as i16).to_be_bytes());
    for x in f {
        b.extend_from_slice(&x.to_be_bytes());
    }
}

/// One valid (well-framed) message of the regular phase, chosen at random.
fn message(rng: &mut XorShift) -> Msg {
    let mut b = Vec::new();
    match rng.below(20) {
        0..=3 => {
            cstr(&mut b, rng.pick(SQL).as_bytes());
            Msg::tagged(b'Q', b)
        }
        4..=5 => {
            cstr(&mut b, rng.pick(NAMES).as_bytes());
            cstr(&mut b, rng.pick(SQL).as_bytes());
            let types: &[u32] = rng.pick(&[&[][..], &[0], &[25], &[25, 23], &[705]]);
            b.extend_from_slice(&(types.len() as i16).to_be_bytes());
            for t in types {
                b.extend_from_slice(&t.to_be_bytes());
            }
            Msg::tagged(b'P', b)
        }
        6..=7 => {
            cstr(&mut b, rng.pick(NAMES).as_bytes());
            cstr(&mut b, rng.pick(NAMES).as_bytes());
            formats(&mut b, rng.pick(FORMATS));
            params(&mut b, rng.pick(PARAMS));
            formats(&mut b, rng.pick(FORMATS));
            Msg::tagged(b'B', b)
        }
        8 => {
            b.push(rng.pick(b"SPX\0"));
            cstr(&mut b, rng.pick(NAMES).as_bytes());
            Msg::tagged(b'D', b)
        }
        9 => {
            cstr(&mut b, rng.pick(NAMES).as_bytes());
            b.extend_from_slice(&rng.pick(&[0i32, 1, -1, 1000]).to_be_bytes());
            Msg::tagged(b'E', b)
        }
        10 => {
            b.push(rng.pick(b"SPX"));
            cstr(&mut b, rng.pick(NAMES).as_bytes());
            Msg::tagged(b'C', b)
        }
        11..=12 => Msg::tagged(b'S', b),
        13 => Msg::tagged(rng.pick(b"HHc"), b),
        14 => {
            b.extend_from_slice(&rng.pick(FUNCTION_OIDS).to_be_bytes());
            formats(&mut b, rng.pick(FORMATS));
            params(&mut b, rng.pick(PARAMS));
            b.extend_from_slice(&rng.pick(&[0i16, 1, 2]).to_be_bytes());
            Msg::tagged(b'F', b)
        }
        15..=16 => {
            let row: &[u8] =
                rng.pick(&[&b"acme\tx\n"[..], b"globex\ty\n", b"garbage", b"\\.\n", b""]);
            Msg::tagged(b'd', row.to_vec())
        }
        17 => {
            cstr(&mut b, b"fuzz says no");
            Msg::tagged(b'f', b)
        }
        18 => {
            cstr(&mut b, rng.pick(&["secret", "", "n,,n=,r=abc"]).as_bytes());
            Msg::tagged(b'p', b)
        }
        _ => {
            if rng.chance(50) {
                Msg::tagged(b'X', b)
            } else {
                // A tag no frontend message has.
                let tag = rng.pick(b"\x00\x01AaGgKkmqRTUVWYZz\xff");
                Msg::tagged(tag, vec![0; rng.below(6)])
            }
        }
    }
}

fn startup(user: &str, extra: &[(&str, &str)]) -> Msg {
    let mut pairs = vec![("user", user), ("database", "app")];
    pairs.extend_from_slice(extra);
    Msg::untagged(wire::PROTOCOL_3_0, &wire::startup_params(&pairs))
}

/// The startup phase of a blind stream: encryption requests, then a StartupMessage (or a
/// CancelRequest, which ends the connection), then what the client sends without waiting.
fn startup_phase(rng: &mut XorShift) -> (Vec<Msg>, bool) {
    let mut out = Vec::new();
    for _ in 0..rng.below(3) {
        let code = rng.pick(&[wire::SSL_REQUEST_CODE, wire::GSSENC_REQUEST_CODE]);
        out.push(Msg::untagged(code, &[]));
    }
    if rng.chance(10) {
        let mut key = rng.next().to_be_bytes().to_vec();
        key.truncate(rng.pick(&[8usize, 8, 4, 0]));
        out.push(Msg::untagged(wire::CANCEL_REQUEST_CODE, &key));
        return (out, true);
    }
    let (user, bound) = match rng.below(4) {
        0 => (TRUST_BYPASS, false),
        1 => (ACME_USER, true),
        _ => (TRUST_TENANT, true),
    };
    let extra: &[(&str, &str)] = rng.pick(&[
        &[][..],
        &[("options", "-c statement_timeout=5000")],
        &[("application_name", "fuzz\u{1}")],
        &[("tenantgate.tenant", "globex")],
        &[("replication", "true")],
        &[("_pq_.x", "1")],
    ]);
    let mut s = startup(user, extra);
    if rng.chance(10) {
        // Protocol 3.2 (or another minor): answered with NegotiateProtocolVersion.
        s.body[2..4].copy_from_slice(&rng.pick(&[2u16, 1, 0xffff]).to_be_bytes());
    }
    out.push(s);
    if user == ACME_USER {
        // Password and query before the SCRAM exchange is done: wrong phase.
        let mut p = Vec::new();
        cstr(&mut p, ACME_PASSWORD.as_bytes());
        out.push(Msg::tagged(b'p', p));
    }
    (out, bound)
}

/// A mutation that keeps every message well framed (lengths recomputed).
fn mutate_messages(rng: &mut XorShift, msgs: &mut Vec<Msg>, what: &mut Vec<String>) {
    if msgs.is_empty() {
        return;
    }
    let i = rng.below(msgs.len());
    match rng.below(11) {
        0 => {
            msgs.remove(i);
            what.push(format!("drop#{i}"));
        }
        1 => {
            let m = msgs[i].clone();
            msgs.insert(i, m);
            what.push(format!("dup#{i}"));
        }
        2 => {
            let j = rng.below(msgs.len());
            msgs.swap(i, j);
            what.push(format!("swap#{i},{j}"));
        }
        3 => {
            let m = message(rng);
            msgs.insert(i, m);
            what.push(format!("insert#{i}"));
        }
        4 => {
            let tag = (rng.next() & 0xff) as u8;
            if msgs[i].tag.is_some() {
                msgs[i].tag = Some(tag);
            }
            what.push(format!("tag#{i}={tag:#x}"));
        }
        5 => {
            let body = &mut msgs[i].body;
            if !body.is_empty() {
                let at = rng.below(body.len());
                body[at] ^= 1 << rng.below(8);
            }
            what.push(format!("flipbit#{i}"));
        }
        6 => {
            let body = &mut msgs[i].body;
            let keep = rng.below(body.len() + 1);
            body.truncate(keep);
            what.push(format!("cutbody#{i}@{keep}"));
        }
        7 => {
            // A NUL inside a string or anywhere in the body.
            let body = &mut msgs[i].body;
            let at = rng.below(body.len() + 1);
            body.insert(at, 0);
            what.push(format!("nul#{i}@{at}"));
        }
        8 => {
            // A string without its terminator: drop the last NUL.
            let body = &mut msgs[i].body;
            if let Some(at) = body.iter().rposition(|&b| b == 0) {
                body.remove(at);
            }
            what.push(format!("unterminated#{i}"));
        }
        9 => {
            // Counts (i16 fields) set to odd values: overwrite a 2-byte window.
            let body = &mut msgs[i].body;
            if body.len() >= 2 {
                let at = rng.below(body.len() - 1);
                let v = rng.pick(&[0i16, 1, -1, 2, i16::MAX, i16::MIN, 100]);
                body[at..at + 2].copy_from_slice(&v.to_be_bytes());
                what.push(format!("i16#{i}@{at}={v}"));
            }
        }
        _ => {
            let extra = rng.below(3000) + 1;
            let byte = (rng.next() & 0xff) as u8;
            msgs[i].body.extend(std::iter::repeat_n(byte, extra));
            what.push(format!("grow#{i}+{extra}"));
        }
    }
}

/// A mutation of the serialized stream: framing may break.
fn mutate_bytes(rng: &mut XorShift, bytes: &mut Vec<u8>, what: &mut Vec<String>) {
    if bytes.is_empty() {
        return;
    }
    let at = rng.below(bytes.len());
    match rng.below(6) {
        0 => {
            bytes[at] = (rng.next() & 0xff) as u8;
            what.push(format!("byte@{at}"));
        }
        1 => {
            bytes.truncate(at);
            what.push(format!("truncate@{at}"));
        }
        2 => {
            // A length field: any 4-byte window, set to a boundary value.
            let v = rng.pick(&[0i32, 3, 4, 5, -1, i32::MIN, i32::MAX, 0x0100_0000, 65_536]);
            let at = at.min(bytes.len().saturating_sub(4));
            let end = (at + 4).min(bytes.len());
            bytes[at..end].copy_from_slice(&v.to_be_bytes()[..end - at]);
            what.push(format!("len@{at}={v}"));
        }
        3 => {
            let len = rng.below(64).min(bytes.len() - at);
            let chunk = bytes[at..at + len].to_vec();
            let to = rng.below(bytes.len());
            bytes.splice(to..to, chunk);
            what.push(format!("splice@{at}+{len}->{to}"));
        }
        4 => {
            let len = rng.below(16).min(bytes.len() - at);
            bytes.drain(at..at + len);
            what.push(format!("delete@{at}+{len}"));
        }
        _ => {
            let junk: Vec<u8> = (0..rng.below(32) + 1)
                .map(|_| (rng.next() & 0xff) as u8)
                .collect();
            bytes.splice(at..at, junk);
            what.push(format!("junk@{at}"));
        }
    }
}

/// Case number `n` of the run seeded with `seed`: always the same bytes.
pub fn case(seed: u64, n: u64) -> Case {
    let mut rng = XorShift::new(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for _ in 0..4 {
        rng.next();
    }
    let mut what = Vec::new();
    let (start, mut msgs, tenant_bound) = match rng.below(10) {
        0..=2 => {
            let (m, bound) = startup_phase(&mut rng);
            what.push("blind".to_string());
            (Start::Blind, m, bound)
        }
        3 => {
            let user = rng.pick(&[ACME_USER, MD5_CLIENT]);
            what.push(format!("badauth {user}"));
            (Start::BadAuth(user), Vec::new(), true)
        }
        _ => {
            let user = rng.pick(&[TRUST_TENANT, TRUST_TENANT, TRUST_BYPASS, ACME_USER]);
            what.push(format!("login {user}"));
            (Start::Login(user), Vec::new(), user != TRUST_BYPASS)
        }
    };
    let cancelled = msgs.iter().any(|m| {
        m.tag.is_none() && m.body.get(..4) == Some(&wire::CANCEL_REQUEST_CODE.to_be_bytes())
    });
    if !cancelled {
        for _ in 0..rng.below(8) + 1 {
            msgs.push(message(&mut rng));
        }
        if rng.chance(50) {
            msgs.push(Msg::tagged(b'S', Vec::new()));
        }
    }
    let mut framed = true;
    for _ in 0..rng.below(3) + 1 {
        mutate_messages(&mut rng, &mut msgs, &mut what);
    }
    let mut bytes = serialize(&msgs);
    if rng.chance(40) {
        framed = false;
        for _ in 0..rng.below(3) + 1 {
            mutate_bytes(&mut rng, &mut bytes, &mut what);
        }
    }
    // After a mutated authentication message the proxy may rightly wait for the rest of it:
    // only a stream known to be well framed gets a probe.
    let framed = framed && !matches!(start, Start::BadAuth(_));
    let then = match rng.below(10) {
        0 => Then::Drop,
        1..=3 => Then::Fin,
        _ if framed => Then::Probe,
        _ => Then::Fin,
    };
    Case {
        start,
        bytes,
        then,
        tenant_bound,
        what: what.join(" "),
    }
}

/// The mutation of one authentication message a client sends (`BadAuth` cases).
pub fn mutate_auth_message(rng: &mut XorShift, msg: &mut Vec<u8>) -> String {
    let mut what = Vec::new();
    if rng.chance(50) && msg.len() > 5 {
        let tag = msg[0];
        let mut m = vec![Msg::tagged(tag, msg[5..].to_vec())];
        mutate_messages(rng, &mut m, &mut what);
        *msg = serialize(&m);
    } else {
        mutate_bytes(rng, msg, &mut what);
    }
    what.join(" ")
}
