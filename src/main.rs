//! The `sidekey` binary: CLI → config → tracing → runtime → `app::run`; errors → exit codes.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sidekey::api::Listeners;
use sidekey::app::{self, AppError, Setup};
use sidekey::config::{self, Config, LoadOptions};
use sidekey::control::{self, Control};
use sidekey::refs::RefKind;

/// A local secrets sidecar for AWS Secrets Manager and SSM Parameter Store.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum Command {
    /// Prefetch, keep fresh and serve (the default).
    Run,
    /// Validate the configuration, print it, exit 0 (valid) or 64 (invalid).
    CheckConfig,
    /// Print one value to stdout and exit.
    Get {
        /// Name, ARN, `sm://ID`, `ssm://NAME`, or `{{resolve:…}}`; `ID:json-key` selects a key.
        reference: String,
        /// How to read a bare name.
        #[arg(long, value_enum, default_value_t = Kind::Any)]
        kind: Kind,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Any,
    Secret,
    Parameter,
}

#[derive(Args)]
struct Common {
    /// Config file (TOML; sidekey keys and/or the AWS agent's flat keys).
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// TCP listen address (`""` disables TCP).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Unix socket path.
    #[arg(long, global = true, value_name = "PATH")]
    unix_socket: Option<PathBuf>,
    /// Serve values from a local TOML/JSON file instead of AWS.
    #[arg(long, global = true, value_name = "FILE")]
    source_file: Option<PathBuf>,
    /// Log level or filter directive.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// `text` or `json`.
    #[arg(long, global = true)]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = load_options(&cli.common);
    let config = match config::load(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidekey: {e}");
            return ExitCode::from(config::EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => check_config(&config),
        Command::Get { reference, kind } => block_on(get(config, reference, kind)),
        Command::Run => block_on(run(config, opts)),
    }
}

fn load_options(c: &Common) -> LoadOptions {
    let mut cli = Vec::new();
    let quote = |s: &str| format!("{s:?}");
    if let Some(v) = &c.listen {
        cli.push(("listen.tcp".into(), quote(v)));
    }
    if let Some(p) = &c.unix_socket {
        cli.push(("listen.unix".into(), quote(&p.to_string_lossy())));
    }
    if let Some(p) = &c.source_file {
        cli.push(("source.kind".into(), quote("file")));
        cli.push(("source.file".into(), quote(&p.to_string_lossy())));
    }
    if let Some(v) = &c.log_level {
        cli.push(("log.level".into(), quote(v)));
    }
    if let Some(v) = &c.log_format {
        cli.push(("log.format".into(), quote(v)));
    }
    LoadOptions {
        file: c.config.clone(),
        env: app::process_env(),
        cli,
    }
}

fn block_on(fut: impl Future<Output = Result<(), AppError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidekey: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Exiting.");
            eprintln!("sidekey: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn check_config(config: &Config) -> ExitCode {
    for w in &config.warnings {
        eprintln!("sidekey: warning: {w}");
    }
    match config::render_effective(config) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sidekey: cannot print config: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn get(config: Config, reference: String, kind: Kind) -> Result<(), AppError> {
    let kind = match kind {
        Kind::Any => RefKind::Any,
        Kind::Secret => RefKind::Secret,
        Kind::Parameter => RefKind::Parameter,
    };
    let bytes = app::get_once(&config, &reference, kind).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(AppError::Bind)
}

async fn run(config: Config, load: LoadOptions) -> Result<(), AppError> {
    sidekey::telemetry::init(&config.log).map_err(AppError::Bind)?;
    let listeners = Listeners::bind(&config.listen)
        .await
        .map_err(AppError::Bind)?;
    let source = app::build_source(&config).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let reloads = tx.clone();
    tokio::spawn(async move {
        if let Err(e) = control::forward_signals(tx.clone()).await {
            tracing::error!(error = %e, "Cannot install signal handlers.");
            let _ = tx.send(Control::Shutdown).await;
        }
    });
    app::run(
        Setup {
            config,
            load,
            source,
        },
        listeners,
        rx,
        Some(reloads),
    )
    .await
}
