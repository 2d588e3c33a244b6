//! `tenantgate explain`: the policy decision for one statement, without serving.

use std::io::Read;
use std::process::ExitCode;
use tenantgate::discovery;
use tenantgate_config::{Config, Isolation, Placement, TablesSpec};
use tenantgate_policy::{Decision, Policy, SessionCtx};

pub struct Args {
    pub config: Config,
    pub tenant: Option<String>,
    pub json: bool,
    pub database: Option<String>,
    pub connect: bool,
    pub sql: Option<String>,
}

fn error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("tenantgate explain: {msg}");
    ExitCode::from(2)
}

pub async fn run(args: Args) -> ExitCode {
    let sql = match args.sql.as_deref() {
        Some("-") | None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                return error(format!("cannot read standard input: {e}"));
            }
            s
        }
        Some(s) => s.to_string(),
    };
    let config = &args.config;
    let placement = match args.tenant.as_deref().map(|t| config.placement(t)) {
        None => Placement::Row,
        Some(Ok(p)) => p,
        Some(Err(e)) => return error(e),
    };
    let isolation = placement.isolation();
    let found = if args.connect {
        let db = match &args.database {
            Some(name) => config.database(name),
            None => config.databases.first(),
        };
        let Some(db) = db else {
            return error("no such database in the configuration");
        };
        let target = match tenantgate::server::ServerTarget::from_config(
            db,
            config.proxy.max_message_size,
            config.proxy.max_prepared_statements,
        ) {
            Ok(t) => t,
            Err(e) => return error(e),
        };
        match discovery::discover_target(&target, &config.tenancy.column).await {
            Ok(found) => Some(found),
            Err(e) => return error(format!("catalog discovery failed: {e}")),
        }
    } else {
        None
    };
    let mut policy = discovery::build_policy(config, isolation, found.as_ref());
    if found.is_none()
        && isolation == Isolation::Row
        && matches!(config.tenancy.tables, TablesSpec::Auto(_))
    {
        // Without a server, assume the strictest reading of "auto": every relation that is
        // not declared shared is a tenant table with the default column.
        let mut c = discovery::build_catalog(config, None);
        c.assume_unknown_are_tenant_tables(true);
        let mut pc = discovery::policy_config(config);
        pc.shared_schemas = config.tenancy.shared_schemas.clone();
        policy = Policy::new(pc, c);
    }
    let decision = policy.check(
        &sql,
        &SessionCtx {
            tenant: args.tenant.as_deref(),
            schema: placement.schema(),
        },
    );
    let placed_in = match &placement {
        Placement::Row => None,
        Placement::Schema(s) => Some(s.clone()),
        Placement::Database(d) => Some(d.clone()),
    };
    if args.json {
        let mut value = match serde_json::to_value(&*decision) {
            Ok(v) => v,
            Err(e) => return error(e),
        };
        if let Some(obj) = value.as_object_mut() {
            obj.insert("isolation".into(), isolation.as_str().into());
            obj.insert("placement".into(), placed_in.clone().into());
        }
        match serde_json::to_string_pretty(&value) {
            Ok(s) => println!("{s}"),
            Err(e) => return error(e),
        }
    } else {
        let strategy = match &placed_in {
            Some(p) => format!("{} ({p})", isolation.as_str()),
            None => isolation.as_str().to_string(),
        };
        println!("isolation:   {strategy}");
        print_text(&decision);
    }
    if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_text(d: &Decision) {
    println!(
        "verdict:     {}",
        if d.is_allowed() { "allow" } else { "reject" }
    );
    println!("rule:        {}", d.rule.as_str());
    println!("reason:      {}", d.reason);
    if let Some(h) = &d.hint {
        println!("hint:        {h}");
    }
    println!("sqlstate:    {}", d.sqlstate);
    println!("fingerprint: {}", d.fingerprint);
    println!("normalized:  {}", d.normalized);
    if !d.tenant_params.is_empty() {
        let params: Vec<String> = d.tenant_params.iter().map(|p| format!("${p}")).collect();
        println!("tenant parameters (checked at Bind): {}", params.join(", "));
    }
    if !d.tenant_array_params.is_empty() {
        let params: Vec<String> = d
            .tenant_array_params
            .iter()
            .map(|a| format!("${}", a.param))
            .collect();
        println!(
            "tenant arrays (every element checked at Bind): {}",
            params.join(", ")
        );
    }
}
