//! API-level tests: check_bind, cache, epochs, statement kinds, serialization.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use tenantgate_policy::{Policy, PolicyConfig, Rule, SessionCtx, StatementKind};

fn policy() -> Policy {
    Policy::new(PolicyConfig::default(), common::catalog())
}

const T: SessionCtx = SessionCtx {
    tenant: Some("t1"),
    schema: None,
};
const UUID: &str = "6f1c2a8e-1234-4abc-8def-0123456789ab";
const UUID_BYTES: [u8; 16] = [
    0x6f, 0x1c, 0x2a, 0x8e, 0x12, 0x34, 0x4a, 0xbc, 0x8d, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
];

fn decision() -> Arc<tenantgate_policy::Decision> {
    let d = policy().check("SELECT id FROM orders WHERE tenant_id = $2 AND id = $1", &T);
    assert_eq!(d.tenant_params, vec![2]);
    d
}

#[test]
fn bind_text_formats() {
    let d = decision();
    assert!(d
        .check_bind(&[Some(b"7"), Some(b"t1")], &[], &[], "t1")
        .is_ok());
    assert!(d
        .check_bind(&[Some(b"7"), Some(b"t1")], &[0], &[23, 25], "t1")
        .is_ok());
    assert!(d
        .check_bind(&[Some(b"7"), Some(b"t1")], &[0, 0], &[0, 1043], "t1")
        .is_ok());
    let e = d
        .check_bind(&[Some(b"7"), Some(b"t2")], &[], &[], "t1")
        .unwrap_err();
    assert_eq!(e.rule, Rule::TenantValueMismatch);
    assert!(d
        .check_bind(
            &[Some(b"7"), Some(UUID.to_uppercase().as_bytes())],
            &[],
            &[0, 2950],
            UUID
        )
        .is_ok());
    assert!(d
        .check_bind(&[Some(b"7"), Some(b"042")], &[], &[0, 23], "42")
        .is_ok());
    // An integer is stored in its canonical form in a text tenant column: `42` is not tenant
    // `042`.
    assert!(d
        .check_bind(&[Some(b"7"), Some(b"42")], &[], &[0, 23], "042")
        .is_err());
}

#[test]
fn bind_binary_formats() {
    let d = decision();
    assert!(d
        .check_bind(&[Some(b"x"), Some(&UUID_BYTES)], &[0, 1], &[0, 2950], UUID)
        .is_ok());
    assert!(d
        .check_bind(
            &[Some(b"x"), Some(&UUID_BYTES)],
            &[0, 1],
            &[0, 2950],
            &UUID.to_uppercase()
        )
        .is_ok());
    let mut other = UUID_BYTES;
    other[15] ^= 1;
    assert!(d
        .check_bind(&[Some(b"x"), Some(&other)], &[0, 1], &[0, 2950], UUID)
        .is_err());
    assert!(d
        .check_bind(
            &[Some(b"x"), Some(&UUID_BYTES[..15])],
            &[0, 1],
            &[0, 2950],
            UUID
        )
        .is_err());
    assert!(d
        .check_bind(
            &[Some(b"x"), Some(&42i32.to_be_bytes())],
            &[1],
            &[23, 23],
            "42"
        )
        .is_ok());
    assert!(d
        .check_bind(
            &[Some(b"x"), Some(&42i64.to_be_bytes())],
            &[0, 1],
            &[0, 20],
            "42"
        )
        .is_ok());
    assert!(d
        .check_bind(
            &[Some(b"x"), Some(&42i16.to_be_bytes())],
            &[0, 1],
            &[0, 21],
            "42"
        )
        .is_ok());
    assert!(d
        .check_bind(
            &[Some(b"x"), Some(&43i64.to_be_bytes())],
            &[0, 1],
            &[0, 20],
            "42"
        )
        .is_err());
    assert!(
        d.check_bind(
            &[Some(b"x"), Some(&42i32.to_be_bytes())],
            &[0, 1],
            &[0, 20],
            "42"
        )
        .is_err(),
        "wrong length"
    );
    assert!(d
        .check_bind(&[Some(b"x"), Some(b"t1")], &[0, 1], &[0, 25], "t1")
        .is_ok());
    assert!(d
        .check_bind(&[Some(b"x"), Some(b"t1")], &[0, 1], &[0, 1043], "t1")
        .is_ok());
    assert!(
        d.check_bind(&[Some(b"x"), Some(b"t1")], &[0, 1], &[0, 3802], "t1")
            .is_err(),
        "jsonb binary is not decoded"
    );
    assert!(
        d.check_bind(&[Some(b"x"), Some(b"t1")], &[0, 2], &[0, 25], "t1")
            .is_err(),
        "unknown format code"
    );
}

#[test]
fn bind_null_and_missing() {
    let d = decision();
    let e = d
        .check_bind(&[Some(b"7"), None], &[], &[], "t1")
        .unwrap_err();
    assert_eq!(e.rule, Rule::TenantValueMismatch);
    assert!(e.reason.contains("NULL"));
    assert!(d.check_bind(&[Some(b"7")], &[], &[], "t1").is_err());
    assert!(d
        .check_bind(&[Some(b"7"), Some(b"t1")], &[0, 0, 0], &[], "t1")
        .is_ok());
    assert!(d
        .check_bind(&[Some(b"7"), Some(b"t1")], &[0], &[], "t1")
        .is_ok());
}

#[test]
fn cache_hits_and_tenant_dependence() {
    let p = Policy::new(
        PolicyConfig {
            require_parameters: false,
            ..PolicyConfig::default()
        },
        common::catalog(),
    );
    let sql = "SELECT id FROM orders WHERE tenant_id = 't1'";
    assert!(p.check(sql, &T).is_allowed());
    assert_eq!(
        p.check(
            sql,
            &SessionCtx {
                tenant: Some("t2"),
                schema: None
            }
        )
        .rule,
        Rule::TenantValueMismatch
    );
    assert_eq!(
        p.check(
            sql,
            &SessionCtx {
                tenant: None,
                schema: None
            }
        )
        .rule,
        Rule::TenantNotSet
    );
    assert!(p.check(sql, &T).is_allowed());
    let (hits, misses) = p.cache_stats();
    assert_eq!((hits, misses), (3, 1));
}

#[test]
fn cache_is_bounded() {
    let p = Policy::new(
        PolicyConfig {
            cache_entries: 64,
            ..PolicyConfig::default()
        },
        common::catalog(),
    );
    for i in 0..1000 {
        assert!(p.check(&format!("SELECT {i}"), &T).is_allowed());
    }
    assert!(p.check("SELECT 999", &T).is_allowed());
    let (hits, misses) = p.cache_stats();
    assert_eq!(misses, 1000);
    assert_eq!(hits, 1);
    let p0 = Policy::new(
        PolicyConfig {
            cache_entries: 0,
            ..PolicyConfig::default()
        },
        common::catalog(),
    );
    p0.check("SELECT 1", &T);
    p0.check("SELECT 1", &T);
    assert_eq!(p0.cache_stats(), (0, 2));
}

#[test]
fn epochs_differ() {
    let a = policy();
    let b = policy();
    assert_ne!(a.epoch(), b.epoch());
}

#[test]
fn statement_kinds() {
    let p = policy();
    let kind = |sql: &str| p.check(sql, &T).statements.clone();
    assert_eq!(
        kind("SET tenantgate.tenant = 'x'"),
        vec![StatementKind::Set {
            name: "tenantgate.tenant".into(),
            local: false,
            to_default: false
        }]
    );
    assert_eq!(
        kind("SET LOCAL statement_timeout = 5"),
        vec![StatementKind::Set {
            name: "statement_timeout".into(),
            local: true,
            to_default: false
        }]
    );
    assert_eq!(
        kind("SET LOCAL DateStyle TO DEFAULT"),
        vec![StatementKind::Set {
            name: "datestyle".into(),
            local: true,
            to_default: true
        }]
    );
    assert_eq!(
        kind("SET TIME ZONE LOCAL"),
        vec![StatementKind::Set {
            name: "timezone".into(),
            local: false,
            to_default: true
        }]
    );
    assert_eq!(kind("RESET ALL"), vec![StatementKind::Reset { name: None }]);
    assert_eq!(
        kind("RESET timezone"),
        vec![StatementKind::Reset {
            name: Some("timezone".into())
        }]
    );
    assert_eq!(kind("DISCARD ALL"), vec![StatementKind::Discard]);
    assert_eq!(kind("DEALLOCATE ALL"), vec![StatementKind::Deallocate]);
    assert_eq!(kind("BEGIN"), vec![StatementKind::Transaction]);
    assert_eq!(kind("SHOW search_path"), vec![StatementKind::Show]);
    assert_eq!(
        kind("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
        vec![StatementKind::DeclareCursor { with_hold: true }]
    );
    assert_eq!(
        kind("DECLARE c CURSOR FOR SELECT 1"),
        vec![StatementKind::DeclareCursor { with_hold: false }]
    );
    assert_eq!(
        kind("UPDATE orders SET status = $2 WHERE tenant_id = $1"),
        vec![StatementKind::Update]
    );
    assert_eq!(kind(""), Vec::<StatementKind>::new());
    assert_eq!(kind("SELECT 1; SELECT 2").len(), 2);
}

#[test]
fn decision_serializes() {
    let d = policy().check("SELECT * FROM orders", &T);
    let v = serde_json::to_value(&*d).unwrap();
    assert_eq!(v["verdict"], "reject");
    assert_eq!(v["rule"], "tenant-filter-missing");
    assert_eq!(v["sqlstate"], "42501");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("relation \"orders\" (at position 15)"),
        "{}",
        v["reason"]
    );
    let ok = policy().check("SELECT 1", &T);
    let v = serde_json::to_value(&*ok).unwrap();
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["sqlstate"], "00000");
    for r in Rule::ALL {
        assert_eq!(Rule::from_id(r.as_str()), Some(r));
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
}

#[test]
fn hints_name_the_foreign_key() {
    let d = policy().check("SELECT i.id FROM invoices i JOIN customers c ON c.id = i.customer_id WHERE i.tenant_id = $1", &T);
    let hint = d.hint.clone().unwrap();
    assert!(
        hint.contains("invoices(tenant_id, customer_id) REFERENCES customers(tenant_id, id)"),
        "{hint}"
    );
}

#[test]
fn explain_mode_assumes_tenant_tables() {
    let mut cat = tenantgate_policy::Catalog::new("tenant_id");
    cat.assume_unknown_are_tenant_tables(true);
    let p = Policy::new(PolicyConfig::default(), cat);
    assert!(p
        .check("SELECT * FROM anything WHERE tenant_id = $1", &T)
        .is_allowed());
    assert_eq!(
        p.check("SELECT * FROM anything", &T).rule,
        Rule::TenantFilterMissing
    );
}

#[test]
fn policy_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
}

/// Django's multi-row insert: `INSERT … SELECT * FROM UNNEST(($1)::varchar(50)[], …)`. The tenant
/// column's array is checked element by element, in the text and the binary format.
#[test]
fn bind_tenant_arrays() {
    let d = policy().check(
        r#"INSERT INTO "orders" ("tenant_id", "id", "status") SELECT * FROM UNNEST(($1)::varchar(50)[], ($2)::integer[], ($3)::varchar(20)[]) RETURNING "orders"."id""#,
        &T,
    );
    assert!(d.is_allowed(), "{}", d.reason);
    assert!(d.tenant_params.is_empty());
    let arrays: Vec<_> = d
        .tenant_array_params
        .iter()
        .map(|a| (a.param, a.max, a.others.clone()))
        .collect();
    assert_eq!(arrays, vec![(1, Some(50), vec![2, 3])]);
    let ok = |v: &[u8], format: i16, oid: u32| {
        d.check_bind(
            &[Some(v), Some(b"{}"), Some(b"{}")],
            &[format, 0, 0],
            &[oid, 0, 0],
            "t1",
        )
    };
    // Text format.
    for good in [&b"{t1,t1}"[..], b"{\"t1\",t1}", b"{}", b"{\"t\\1\"}"] {
        assert!(
            ok(good, 0, 1015).is_ok(),
            "{}",
            String::from_utf8_lossy(good)
        );
        assert!(ok(good, 0, 0).is_ok(), "{}", String::from_utf8_lossy(good));
    }
    for bad in [
        &b"{t1,t2}"[..],
        b"{t1,NULL}",
        b"{t1,null}",
        b"{t1, t1}",
        b"{{t1},{t1}}",
        b"[1:2]={t1,t1}",
        b"{t1,\"t2\"}",
        b"{\"t1\"\"t2\"}",
        b"{t1,}",
        b"{\"t1}",
        b"t1",
        b"{t\\1}",
        b"{\"t1 \"}",
    ] {
        let e = ok(bad, 0, 1015).unwrap_err();
        assert_eq!(
            e.rule,
            Rule::TenantValueMismatch,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // `"NULL"` quoted is the string NULL, not the tenant.
    assert!(ok(b"{\"NULL\"}", 0, 1015).is_err());
    // Binary format: ndim, flags, element oid, (length, lower bound), then the elements.
    let binary = |elem: u32, values: &[Option<&[u8]>]| {
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&elem.to_be_bytes());
        b.extend_from_slice(&i32::try_from(values.len()).unwrap().to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    };
    assert!(ok(&binary(1043, &[Some(b"t1"), Some(b"t1")]), 1, 1015).is_ok());
    assert!(ok(&binary(25, &[Some(b"t1")]), 1, 1009).is_ok());
    assert!(ok(&binary(25, &[Some(b"t1")]), 1, 0).is_ok());
    for bad in [
        binary(1043, &[Some(b"t1"), Some(b"t2")]),
        binary(1043, &[Some(b"t1"), None]),
        binary(25, &[Some(b"t1")]), // element type is not the declared one
        {
            let mut b = binary(1043, &[Some(b"t1")]);
            b[15] = 200; // claims 200 elements
            b
        },
        {
            let mut b = binary(1043, &[Some(b"t1")]);
            b.push(0); // trailing byte
            b
        },
        {
            let mut b = binary(1043, &[Some(b"t1")]);
            b[3] = 2; // two dimensions
            b
        },
        binary(1043, &[Some(b"t1")])[..10].to_vec(),
    ] {
        let e = ok(&bad, 1, 1015).unwrap_err();
        assert_eq!(e.rule, Rule::TenantValueMismatch, "{bad:?}");
    }
    // A declared type whose element type does not keep the value, and a NULL array.
    assert!(ok(b"{t1}", 0, 1014).is_err());
    assert!(d
        .check_bind(&[None, Some(b"{1}"), Some(b"{a}")], &[], &[], "t1")
        .is_err());
    // A tenant longer than the varchar(50) the array is cast to would be cut short.
    let long = "t".repeat(51);
    let value = format!("{{{long}}}");
    assert!(d
        .check_bind(
            &[Some(value.as_bytes()), Some(b"{1}"), Some(b"{a}")],
            &[],
            &[],
            &long
        )
        .is_err());
}

/// Review findings on the UNNEST path: the cast converts the value (an integer cast stores
/// `42` for the text `042`), and UNNEST pads shorter arrays with NULL (a tenant array shorter
/// than another array inserts rows whose tenant column is NULL).
#[test]
fn bind_tenant_arrays_review() {
    // The tenant array cast to integer[]: only the canonical integer of the tenant.
    let d = policy().check(
        "INSERT INTO orders (tenant_id, id) SELECT * FROM UNNEST($1::integer[], $2::integer[])",
        &T,
    );
    assert!(d.is_allowed(), "{}", d.reason);
    for oid in [0, 1009, 1015] {
        let bind =
            |v: &[u8], tenant: &str| d.check_bind(&[Some(v), Some(b"{1}")], &[], &[oid, 0], tenant);
        assert!(
            bind(b"{042}", "042").is_err(),
            "042 is stored as 42 ({oid})"
        );
        assert!(bind(b"{42}", "42").is_ok());
    }
    // Arrays of different lengths: the tenant array must be at least as long as the others.
    let d = policy().check(
        r#"INSERT INTO "orders" ("tenant_id", "id") SELECT * FROM UNNEST(($1)::varchar(50)[], ($2)::integer[])"#,
        &T,
    );
    assert!(d.is_allowed(), "{}", d.reason);
    let bind = |t: &[u8], ids: &[u8]| d.check_bind(&[Some(t), Some(ids)], &[], &[], "t1");
    assert!(bind(b"{t1,t1}", b"{1,2}").is_ok());
    assert!(bind(b"{t1,t1}", b"{1}").is_ok());
    assert!(bind(b"{}", b"{}").is_ok());
    assert!(bind(b"{t1}", b"{}").is_ok());
    assert!(bind(b"{t1}", b"{2,3,4}").is_err());
    assert!(bind(b"{}", b"{1}").is_err());
    assert!(bind(b"{t1}", b"{{5,6},{7,8}}").is_err());
    assert!(bind(b"{t1}", b"[1:2]={5,6}").is_err());
    assert!(bind(b"{t1}", b" { 5 ; 6 } ").is_err());
    assert!(bind(b"{t1}", b"{\"a,b\"}").is_ok());
    assert!(bind(b"{t1}", b"{a\\,b}").is_ok());
    assert!(d.check_bind(&[Some(b"{t1}"), None], &[], &[], "t1").is_ok());
    // Binary: the count of every dimension.
    let mut two = Vec::new();
    for v in [1i32, 0, 23, 3, 1] {
        two.extend_from_slice(&v.to_be_bytes());
    }
    for v in [1i32, 2, 3] {
        two.extend_from_slice(&4i32.to_be_bytes());
        two.extend_from_slice(&v.to_be_bytes());
    }
    assert!(d
        .check_bind(&[Some(b"{t1}"), Some(&two)], &[0, 1], &[], "t1")
        .is_err());
    assert!(d
        .check_bind(&[Some(b"{t1,t1,t1}"), Some(&two)], &[0, 1], &[], "t1")
        .is_ok());
}
