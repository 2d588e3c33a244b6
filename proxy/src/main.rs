//! The `tenantgate` command: parse the command line, load the configuration, hand over.

mod explain;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tenantgate_config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "tenantgate",
    version,
    about = "PostgreSQL proxy and pooler that enforces tenant isolation"
)]
struct Cli {
    /// Configuration file (for `serve` when no subcommand is given).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Validate the configuration; exit 1 listing every error.
    Check {
        /// Also log in to every configured database server.
        #[arg(long)]
        connect: bool,
    },
    /// Show the policy decision for a statement, without a server (exit 0 allow, 1 reject).
    Explain {
        /// Session tenant to check with (default: none, as before a switch user sets one).
        #[arg(long)]
        tenant: Option<String>,
        /// Output format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        format: String,
        /// Database whose catalog to use (default: the first configured).
        #[arg(long)]
        database: Option<String>,
        /// Read the catalog from the database server instead of assuming every undeclared
        /// relation is a tenant table.
        #[arg(long)]
        connect: bool,
        /// The SQL, or `-` (or nothing) to read it from standard input.
        sql: Option<String>,
    },
    /// Audit log tools (need no configuration).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of audit files given oldest first (`audit.jsonl.* audit.jsonl`):
    /// exit 0 when intact, 1 naming the first broken or missing record.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Audit {
        command: AuditCommand::Verify { files },
    }) = &cli.command
    {
        return audit_verify(files);
    }
    let Some(path) = cli.config.clone() else {
        eprintln!("tenantgate: -c FILE is required");
        return ExitCode::from(2);
    };
    // explain needs no secrets unless it connects.
    let needs_secrets = !matches!(&cli.command, Some(Command::Explain { connect: false, .. }));
    let config = match load(&path, needs_secrets) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: invalid configuration:", path.display());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(1);
        }
    };
    // One thread runs everything (no cross-thread wakeups, as in PgBouncer), or a
    // work-stealing pool of that many threads.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = tenantgate::runtime_threads(config.proxy.workers, cores);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tenantgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config, path)),
        Command::Check { connect } => runtime.block_on(check(&path, config, connect)),
        Command::Explain {
            tenant,
            format,
            database,
            connect,
            sql,
        } => runtime.block_on(explain::run(explain::Args {
            config,
            tenant,
            json: format == "json",
            database,
            connect,
            sql,
        })),
        Command::Audit { .. } => ExitCode::from(2),
    }
}

fn audit_verify(files: &[PathBuf]) -> ExitCode {
    match tenantgate::audit::verify(files) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path, secrets: bool) -> Result<Config, tenantgate_config::ConfigErrors> {
    if secrets {
        return tenantgate_config::load(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        tenantgate_config::ConfigErrors(vec![tenantgate_config::ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    let config = Config::from_toml(&text)?;
    config.validate()?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.proxy.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter);
    match config.proxy.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The log's writer: stderr, where a line that cannot be written is dropped. With a broken
/// stderr (the process reading the log went away) tracing-subscriber would report the failed
/// write with `eprintln!`, which panics, and the panic would end whichever task logged: a
/// client's session, or the one that handles SIGTERM.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

async fn serve(config: Config, path: PathBuf) -> ExitCode {
    init_logging(&config);
    let listener = match tokio::net::TcpListener::bind(&config.proxy.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.proxy.listen, error = %e, "cannot listen");
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    match tenantgate::serve(Arc::new(config), listener, shutdown, Some(path)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tenantgate failed");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM or SIGINT: graceful shutdown. A second SIGINT: exit at once.
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down (again to exit now)"),
    }
    shutdown.cancel();
    int.recv().await;
    tracing::warn!("second SIGINT: exiting now");
    std::process::exit(130);
}

async fn check(path: &std::path::Path, config: Config, connect: bool) -> ExitCode {
    let mut failed = false;
    // Check credentials and TLS files without opening the audit log.
    let mut dry = config.clone();
    dry.audit.path = None;
    if let Err(e) = tenantgate::app::App::new(Arc::new(dry)) {
        eprintln!("{}: {e}", path.display());
        failed = true;
    }
    if connect {
        for db in &config.databases {
            let target = match tenantgate::server::ServerTarget::from_config(
                db,
                config.proxy.max_message_size,
                config.proxy.max_prepared_statements,
            ) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("databases {:?}: {e}", db.name);
                    failed = true;
                    continue;
                }
            };
            match tenantgate::server::connect(&target, &[]).await {
                Ok(_) => println!(
                    "databases {:?}: connected to {} as {}",
                    db.name,
                    target.addr(),
                    db.user
                ),
                Err(e) => {
                    eprintln!("databases {:?}: {e}", db.name);
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        println!("{}: configuration is valid", path.display());
        ExitCode::SUCCESS
    }
}
