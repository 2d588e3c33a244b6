//! Built-in function allowlist, dangerous-function denylist, and catalog views that expose
//! other sessions or other tenants' data.

/// Safe built-ins: no dynamic SQL, no file/network access, no reads of arbitrary relations.
const ALLOWED: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "any_value",
    "range_agg",
    "xmlagg",
    "grouping",
    // window
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "ntile",
    // date/time
    "now",
    "current_timestamp",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "date_trunc",
    "date_bin",
    "extract",
    "date_part",
    "age",
    "to_char",
    "to_date",
    "to_timestamp",
    "to_number",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    "timezone",
    "overlaps",
    "date_add",
    "date_subtract",
    // conditional / comparison
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "num_nulls",
    "num_nonnulls",
    // strings
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substr",
    "substring",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "concat",
    "concat_ws",
    "left",
    "right",
    "position",
    "strpos",
    "split_part",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_like",
    "regexp_count",
    "regexp_instr",
    "regexp_substr",
    "format",
    "lpad",
    "rpad",
    "repeat",
    "reverse",
    "translate",
    "starts_with",
    "ascii",
    "chr",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "overlay",
    "unaccent",
    "normalize",
    "is_normalized",
    "like_escape",
    "similar_to_escape",
    "similar_escape",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "decode",
    "to_hex",
    "convert_from",
    "convert_to",
    "string_to_array",
    "array_to_string",
    "text",
    "casefold",
    // uuid / random
    "gen_random_uuid",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "random",
    "random_normal",
    // math
    "abs",
    "ceil",
    "ceiling",
    "floor",
    "round",
    "trunc",
    "mod",
    "power",
    "pow",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "sign",
    "div",
    "pi",
    "degrees",
    "radians",
    "width_bucket",
    "scale",
    "gcd",
    "lcm",
    "factorial",
    // json / jsonb
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "json_object",
    "jsonb_object",
    "jsonb_set",
    "jsonb_set_lax",
    "jsonb_insert",
    "jsonb_strip_nulls",
    "json_strip_nulls",
    "jsonb_pretty",
    "jsonb_typeof",
    "json_typeof",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "json_extract_path",
    "json_extract_path_text",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "json_array_elements",
    "json_array_elements_text",
    "jsonb_each",
    "jsonb_each_text",
    "json_each",
    "json_each_text",
    "jsonb_object_keys",
    "json_object_keys",
    "jsonb_array_length",
    "json_array_length",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_path_exists",
    "jsonb_path_match",
    "jsonb_to_record",
    "jsonb_to_recordset",
    "json_to_record",
    "json_to_recordset",
    "jsonb_populate_record",
    "json_populate_record",
    "jsonb_contains",
    "jsonb_exists",
    "jsonb_exists_any",
    "jsonb_exists_all",
    // arrays / sets
    "unnest",
    "array_length",
    "array_position",
    "array_positions",
    "cardinality",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_remove",
    "array_replace",
    "array_dims",
    "array_lower",
    "array_upper",
    "array_ndims",
    "array_fill",
    "generate_series",
    "generate_subscripts",
    "trim_array",
    "array_reverse",
    "array_sort",
    // sequences used by ORMs (setval is not allowed)
    "nextval",
    "currval",
    "lastval",
    // session / system information that does not expose other sessions
    "version",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_user",
    "session_user",
    "current_role",
    "user",
    "system_user",
    "current_catalog",
    "current_setting",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_backend_pid",
    "pg_postmaster_start_time",
    "inet_client_addr",
    "inet_client_port",
    "pg_typeof",
    "pg_collation_for",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_jit_available",
    "pg_is_in_recovery",
    "has_table_privilege",
    "has_schema_privilege",
    "has_column_privilege",
    "format_type",
    "obj_description",
    "col_description",
    "pg_get_serial_sequence",
    "to_regclass",
    "pg_table_is_visible",
    "pg_type_is_visible",
    "pg_get_expr",
    "pg_encoding_to_char",
    // full-text search (ts_stat and ts_rewrite run SQL and are denied)
    "to_tsvector",
    "to_tsquery",
    "plainto_tsquery",
    "phraseto_tsquery",
    "websearch_to_tsquery",
    "ts_rank",
    "ts_rank_cd",
    "ts_headline",
    "setweight",
    "strip",
    "tsvector_to_array",
    "array_to_tsvector",
    "numnode",
    "querytree",
    // misc scalar
    "bool",
    "int4",
    "int8",
    "numeric",
    "float8",
    "date",
    "isempty",
    "lower_inc",
    "upper_inc",
    "range_merge",
    "int4range",
    "int8range",
    "numrange",
    "tsrange",
    "tstzrange",
    "daterange",
    "host",
    "network",
    "masklen",
    "xmlconcat",
    "xmlcomment",
    "xmlelement",
    "xmlforest",
    "merge_action",
];

/// Functions that run SQL given as text, touch files/large objects, signal other backends,
/// or change settings behind the proxy's back. Never allowed, whatever the config says.
const DENIED: &[&str] = &[
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "table_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "database_to_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "schema_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_logfile_rotate",
    "set_config",
    "setval",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_file_write",
    "pg_promote",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_log_backend_memory_contexts",
    "pg_stat_get_activity",
    "pg_prepared_statement",
    "pg_stat_reset",
    "pg_stat_statements",
    "pg_stat_statements_reset",
    "pg_notify",
    "xpath",
    "xpath_exists",
];

/// Prefixes of denied function families.
const DENIED_PREFIXES: &[&str] = &[
    "dblink",
    "lo_",
    "pg_ls_",
    "pg_read_",
    "pg_stat_get_",
    "pg_replication_",
    "pg_drop_replication",
    "pg_create_",
];

/// Catalog relations that expose other sessions, other roles or sampled table contents.
const DENIED_VIEWS: &[&str] = &[
    "pg_stat_activity",
    // In transaction mode a server's prepared statements are other clients' (their query text).
    "pg_prepared_statements",
    "pg_locks",
    "pg_prepared_xacts",
    "pg_stat_statements",
    "pg_stat_statements_info",
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_stat_replication",
    "pg_stat_ssl",
    "pg_stat_gssapi",
    "pg_stat_wal_receiver",
    "pg_stat_subscription",
    "pg_backend_memory_contexts",
    "pg_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_subscription",
    "pg_policy",
    "pg_policies",
    "pg_replication_slots",
    "pg_stat_replication_slots",
    "pg_shmem_allocations",
    "pg_aios",
];

/// Verdict on a built-in (pg_catalog or unqualified) function name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Allowed,
    Denied,
    Unknown,
}

pub(crate) fn builtin(name: &str) -> Builtin {
    if DENIED.contains(&name) || DENIED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Builtin::Denied
    } else if ALLOWED.contains(&name) {
        Builtin::Allowed
    } else {
        Builtin::Unknown
    }
}

/// Besides [`DENIED_VIEWS`]: the cumulative statistics views (`pg_stat_*`, `pg_statio_*`) count
/// every tenant's rows, scans, inserts and deletes per table, and `pg_sequences` shows where
/// shared sequences stand: other tenants' activity, which no ORM reads at run time.
pub(crate) fn is_denied_view(name: &str) -> bool {
    DENIED_VIEWS.contains(&name)
        || name.starts_with("pg_stat_")
        || name.starts_with("pg_statio_")
        || name == "pg_sequences"
}

/// String literal arguments that are part of the function's syntax (field names, format
/// patterns, sequence and setting names, `LIKE … ESCAPE '\'` — parsed as `like_escape` —, text
/// search configurations) and therefore not data: (function, argument index, argument count).
pub(crate) fn literal_arg_allowed(func: &str, idx: usize, nargs: usize) -> bool {
    // `to_tsvector('english', doc)`: the configuration comes first only in the two-argument forms.
    let ts_config = matches!(
        func,
        "to_tsvector"
            | "to_tsquery"
            | "plainto_tsquery"
            | "phraseto_tsquery"
            | "websearch_to_tsquery"
    ) && idx == 0
        && nargs == 2;
    ts_config
        || matches!(
            (func, idx),
            (
                "date_trunc"
                    | "date_part"
                    | "extract"
                    | "current_setting"
                    | "nextval"
                    | "currval"
                    | "date_bin",
                0
            ) | ("to_char" | "to_date" | "to_timestamp" | "to_number", 1)
                | ("current_setting", 1)
                | ("set_config", 0)
                | ("timezone", 0)
                | ("like_escape" | "similar_to_escape", 1)
        )
}

/// Ordinary settings that Postgres reports to the client when they change (`GUC_REPORT`), so
/// that a change by `set_config` reaches the proxy as a ParameterStatus and is kept with the
/// client's session like a `SET`. `client_encoding` is not among them: the proxy owns it.
pub(crate) fn is_reported_setting(name: &str) -> bool {
    ["TimeZone", "DateStyle", "IntervalStyle", "application_name"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(name))
}

/// Functions whose argument names a relation (as text or regclass): the index of that argument
/// for a call with `nargs` arguments. Schema isolation requires it to be a string literal.
pub(crate) fn relation_arg(func: &str, nargs: usize) -> Option<usize> {
    match func {
        "nextval"
        | "currval"
        | "to_regclass"
        | "pg_get_serial_sequence"
        | "pg_relation_size"
        | "pg_total_relation_size"
        | "pg_table_size"
        | "pg_indexes_size" => Some(0),
        // (relation, privilege) or (role, relation, privilege)
        "has_table_privilege" | "has_any_column_privilege" => Some(usize::from(nargs >= 3)),
        // (relation, column, privilege) or (role, relation, column, privilege)
        "has_column_privilege" => Some(usize::from(nargs >= 4)),
        _ => None,
    }
}

/// Relation size functions: allowed in schema isolation (relation argument checked) and
/// database isolation, never in row isolation (they reveal the size of other tenants' rows).
pub(crate) fn is_relation_size_function(func: &str) -> bool {
    matches!(
        func,
        "pg_relation_size" | "pg_total_relation_size" | "pg_table_size" | "pg_indexes_size"
    )
}

/// Longest identifier Postgres keeps (NAMEDATALEN - 1 bytes).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Split a relation name given as text the way Postgres' `stringToQualifiedNameList` does
/// (`SplitIdentifierString` with `.`): whitespace around parts is skipped, unquoted parts are
/// folded to lower case (ASCII), `"…"` parts are taken exactly (`""` is a quote), and each part
/// is truncated to 63 bytes. `None` for anything else, including a leading digit (the text of a
/// numeric OID, which `regclass` input accepts) and empty parts.
pub(crate) fn split_qualified_name(text: &str) -> Option<Vec<String>> {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b');
    let trimmed = text.trim_start_matches(is_space);
    if trimmed.starts_with(|c: char| c.is_ascii_digit()) || trimmed == "-" {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = trimmed.chars().peekable();
    loop {
        while chars.next_if(|c| is_space(*c)).is_some() {}
        let mut part = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' if chars.next_if_eq(&'"').is_some() => part.push('"'),
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != '.' && *c != '"' && !is_space(*c)) {
                part.push(c.to_ascii_lowercase());
            }
        }
        if part.is_empty() {
            return None;
        }
        out.push(truncate_identifier(part));
        while chars.next_if(|c| is_space(*c)).is_some() {}
        match chars.next() {
            None => return Some(out),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

fn truncate_identifier(mut s: String) -> String {
    if s.len() > MAX_IDENTIFIER_BYTES {
        let mut end = MAX_IDENTIFIER_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::split_qualified_name as split;

    fn v(parts: &[&str]) -> Option<Vec<String>> {
        Some(parts.iter().map(|p| (*p).to_owned()).collect())
    }

    #[test]
    fn qualified_names() {
        assert_eq!(split("orders"), v(&["orders"]));
        assert_eq!(
            split(" Tenant_Globex . Orders "),
            v(&["tenant_globex", "orders"])
        );
        assert_eq!(split("\"Tenant X\".\"a\"\"b\""), v(&["Tenant X", "a\"b"]));
        assert_eq!(split("a.b.c"), v(&["a", "b", "c"]));
        assert_eq!(split("16384"), None);
        assert_eq!(split(" 16384"), None);
        assert_eq!(split("-"), None);
        assert_eq!(split(""), None);
        assert_eq!(split("a..b"), None);
        assert_eq!(split("a."), None);
        assert_eq!(split("\"a"), None);
        assert_eq!(split("\"\".a"), None);
        assert_eq!(split("a b"), None);
        assert_eq!(split("a\"b\""), None);
        let long = "x".repeat(100);
        assert_eq!(split(&long), v(&[&"x".repeat(63)]));
    }
}
