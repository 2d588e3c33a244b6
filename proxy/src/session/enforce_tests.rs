#![allow(clippy::unwrap_used)]
use super::*;
use tenantgate_policy::SessionCtx;

#[test]
fn set_values_are_read() {
    assert_eq!(
        set_value("SET tenantgate.tenant = 'acme'").as_deref(),
        Some("acme")
    );
    assert_eq!(
        set_value("set tenantgate.tenant to globex").as_deref(),
        Some("globex")
    );
    assert_eq!(
        set_value("SET tenantgate.tenant = 42").as_deref(),
        Some("42")
    );
    assert_eq!(set_value("SET tenantgate.tenant = 'a', 'b'"), None);
}

#[test]
fn session_only_features_are_refused_in_transaction_mode() {
    let policy = tenantgate_policy::Policy::new(
        tenantgate_policy::PolicyConfig::default(),
        tenantgate_policy::Catalog::new("tenant_id"),
    );
    let refused = |sql: &str| {
        mentions_session_only_feature(sql)
            && transaction_mode_refusal(&policy.check(sql, &SessionCtx::default()), sql).is_some()
    };
    assert!(refused("LISTEN jobs"));
    assert!(refused("PREPARE p AS SELECT 1"));
    assert!(refused("EXECUTE p"));
    assert!(refused("DECLARE c CURSOR WITH HOLD FOR SELECT 1"));
    assert!(refused("SELECT pg_advisory_lock(1)"));
    assert!(refused("SELECT pg_try_advisory_lock(1)"));
    assert!(refused("SELECT lastval()"));
    assert!(refused("SELECT pg_catalog.lastval ()"));
    assert!(refused("SELECT lastval/**/()"));
    assert!(refused("SELECT \"lastval\" /* x */ -- y\n ()"));
    assert!(refused("SELECT pg_advisory_lock/**/(1)"));
    assert!(refused("SELECT lastval/* /* */ */()"));
    assert!(!refused("SELECT lastvalue FROM stats"));
    assert!(!refused("SELECT my_lastval(1)"));
    assert!(!refused("SELECT pg_advisory_xact_lock(1)"));
    assert!(!refused("DECLARE c CURSOR FOR SELECT 1"));
    assert!(!refused("SELECT executed_at FROM jobs"));
}

#[test]
fn set_value_lists_are_read() {
    assert_eq!(
        set_values("SET search_path = tenant_a, \"public\"").unwrap(),
        ["tenant_a", "public"]
    );
    assert_eq!(
        set_values("SET search_path TO 'tenant_a', public").unwrap(),
        ["tenant_a", "public"]
    );
    assert_eq!(set_values("SET search_path TO DEFAULT"), Some(vec![]));
}

#[test]
fn deallocate_targets() {
    assert_eq!(deallocate_target("DEALLOCATE ALL"), Some(None));
    assert_eq!(deallocate_target("deallocate prepare all"), Some(None));
    assert_eq!(deallocate_target("DEALLOCATE s1"), Some(Some("s1".into())));
    assert_eq!(
        deallocate_target("DEALLOCATE \"S 1\""),
        Some(Some("S 1".into()))
    );
    assert_eq!(deallocate_target("SELECT 1"), None);
}

#[test]
fn allowed_tenants_match_exactly_or_by_prefix() {
    let allowed = vec!["acme".to_string(), "eu-*".to_string()];
    assert!(tenant_allowed(&allowed, "acme"));
    assert!(tenant_allowed(&allowed, "eu-42"));
    assert!(!tenant_allowed(&allowed, "acme2"));
    assert!(!tenant_allowed(&allowed, "us-1"));
}

/// The screening's first pass finds every word the session-effect scan acts on, in the bits
/// it takes for them: a statement it passes over as effect-free is one the scan would find
/// effect-free too.
#[test]
fn the_screening_looks_for_every_session_effect_word() {
    for word in EFFECT_WORDS {
        let hits = SCREEN_WORDS.hits(word);
        assert_ne!(
            hits & SESSION_EFFECT_WORDS,
            0,
            "{}",
            String::from_utf8_lossy(word)
        );
    }
    let all = SCREEN_WORDS.hits(EFFECT_WORDS.join(&b' ').as_slice());
    assert_eq!(all & !SESSION_ONLY_WORDS, SESSION_EFFECT_WORDS);
}
