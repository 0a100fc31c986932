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

/// The static musl build (Docker image, Lambda layer) uses mimalloc: musl's own allocator
/// serialises threads and costs about a fifth of the requests per second. Other targets keep
/// the system allocator.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Exit 0 when the running sidekey is ready (for container health checks).
    Health,
    /// Start a command with secrets in its environment and supervise it (PID 1 friendly).
    Exec(ExecArgs),
    /// Render every template and exit (init containers); non-zero on any failure.
    Render {
        /// Render once and exit (the only mode; `run` keeps templates current).
        #[arg(long, required = true)]
        once: bool,
    },
    /// Print one value to stdout and exit.
    Get {
        /// Name, ARN, `sm://ID`, `ssm://NAME`, or `{{resolve:…}}`; `ID:json-key` selects a key.
        reference: String,
        /// How to read a bare name.
        #[arg(long, value_enum, default_value_t = Kind::Any)]
        kind: Kind,
    },
}

#[derive(Args)]
struct ExecArgs {
    /// `NAME=REF`: put the value of REF in NAME (repeatable). Bare names starting with `/` are
    /// parameters, others secrets; `REF:json-key` selects a key.
    #[arg(long = "env", value_name = "NAME=REF")]
    env: Vec<String>,
    /// A file of `NAME=REF` lines.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// `PREFIX=REF`: one variable per key of a JSON secret (`PREFIX` + KEY upper-cased).
    #[arg(long = "expand", value_name = "PREFIX=REF")]
    expand: Vec<String>,
    /// Also resolve inherited variables whose values are references (ARNs, `{{resolve:…}}`).
    #[arg(long)]
    resolve_env: bool,
    /// When a value changes: `restart`, `none`, or `signal:NAME` (e.g. `signal:HUP`).
    #[arg(long, default_value = "restart")]
    on_change: String,
    /// Time between SIGTERM and SIGKILL when restarting.
    #[arg(long, default_value = "10s")]
    grace: String,
    /// Quiet period after a change before acting (bursts act once).
    #[arg(long, default_value = "2s")]
    wait: String,
    /// Act at most this long after the first change of a burst.
    #[arg(long, default_value = "10s")]
    wait_max: String,
    /// Also serve the HTTP API on the configured listeners (needs a token, as `run`).
    #[arg(long)]
    serve: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
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
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        env = "SIDEKEY_CONFIG"
    )]
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
    let command = cli.command.unwrap_or(Command::Run);
    let mut opts = load_options(&cli.common);
    // As a Lambda extension (started with no arguments), look for a config in the function
    // (/var/task) or a layer (/opt) unless one was named.
    let lambda = match command {
        Command::Run => opts.env.get("AWS_LAMBDA_RUNTIME_API").cloned(),
        _ => None,
    };
    if lambda.is_some() && opts.file.is_none() {
        opts.file = LAMBDA_CONFIGS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
    }
    let config = match config::load(&opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sidekey: {e}");
            if let Some(api) = &lambda {
                block_on(async {
                    sidekey::lambda::report_startup_failure(api, &AppError::Config(e)).await;
                    Ok(())
                });
            }
            return ExitCode::from(config::EXIT_CONFIG);
        }
    };
    sidekey::harden::apply(
        config.raw.process.core_dumps,
        matches!(command, Command::Exec(_)),
    );
    match command {
        Command::CheckConfig => check_config(&config),
        Command::Health => match app::health(&config, &opts.env) {
            Ok(200) => ExitCode::SUCCESS,
            Ok(status) => {
                eprintln!("sidekey: not ready (HTTP {status})");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("sidekey: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Get { reference, kind } => block_on(get(config, reference, kind)),
        Command::Exec(args) => exec(config, &opts, args),
        Command::Render { .. } => block_on(async {
            sidekey::telemetry::init(&config.log).map_err(AppError::Io)?;
            let n = app::render_once(&config, &opts.env).await?;
            tracing::info!(written = n, "Templates rendered.");
            Ok(())
        }),
        Command::Run => block_on(run(config, opts, lambda)),
    }
}

/// Config files a Lambda extension picks up when no `--config` or `SIDEKEY_CONFIG` is given.
const LAMBDA_CONFIGS: [&str; 2] = ["/var/task/sidekey.toml", "/opt/sidekey.toml"];

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

fn exec(config: Config, opts: &LoadOptions, args: ExecArgs) -> ExitCode {
    let serve = args.serve;
    let spec = match exec_spec(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sidekey: {e}");
            return ExitCode::from(config::EXIT_CONFIG);
        }
    };
    let mut code = 1u8;
    let status = block_on(async {
        sidekey::telemetry::init(&config.log).map_err(AppError::Io)?;
        let listeners = match serve {
            true => Some(
                Listeners::bind(&config.listen)
                    .await
                    .map_err(AppError::Bind)?,
            ),
            false => None,
        };
        let source = app::build_source(&config).await?;
        let setup = Setup {
            config,
            load: opts.clone(),
            source,
        };
        let c = sidekey::exec::run(setup, listeners, spec).await?;
        code = u8::try_from(c).unwrap_or(1);
        Ok(())
    });
    if status == ExitCode::SUCCESS {
        ExitCode::from(code)
    } else {
        status
    }
}

fn exec_spec(a: ExecArgs) -> Result<sidekey::exec::ExecSpec, AppError> {
    use sidekey::exec::{ExecError, OnChange, parse_pair, read_env_file};
    let mut env = a
        .env
        .iter()
        .map(|p| parse_pair(p))
        .collect::<Result<Vec<_>, ExecError>>()?;
    for f in &a.env_file {
        env.extend(read_env_file(f)?);
    }
    let expand = a
        .expand
        .iter()
        .map(|p| parse_pair(p))
        .collect::<Result<Vec<_>, ExecError>>()?;
    let bad = |what: &str| AppError::Exec(ExecError::BadOption(what.to_owned()));
    let on_change = match a.on_change.as_str() {
        "restart" => OnChange::Restart,
        "none" => OnChange::None,
        s => match s.strip_prefix("signal:").and_then(config::signal_number) {
            Some(n) => OnChange::Signal(n),
            None => return Err(bad(&format!("--on-change {s}"))),
        },
    };
    let dur = |s: &str| {
        config::Dur::parse(s)
            .map(|d| d.0)
            .ok_or_else(|| bad(&format!("duration {s}")))
    };
    Ok(sidekey::exec::ExecSpec {
        env,
        expand,
        resolve_env: a.resolve_env,
        command: a.command,
        on_change,
        grace: dur(&a.grace)?,
        wait: dur(&a.wait)?,
        wait_max: dur(&a.wait_max)?,
    })
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
        .map_err(AppError::Io)
}

async fn run(config: Config, load: LoadOptions, lambda: Option<String>) -> Result<(), AppError> {
    sidekey::telemetry::init(&config.log).map_err(AppError::Io)?;
    let started = async {
        let listeners = Listeners::bind(&config.listen)
            .await
            .map_err(AppError::Bind)?;
        Ok::<_, AppError>((listeners, app::build_source(&config).await?))
    }
    .await;
    let (listeners, source) = match (started, &lambda) {
        (Ok(s), _) => s,
        (Err(e), Some(api)) => {
            sidekey::lambda::report_startup_failure(api, &e).await;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let reloads = tx.clone();
    tokio::spawn(async move {
        if let Err(e) = control::forward_signals(tx.clone()).await {
            tracing::error!(error = %e, "Cannot install signal handlers.");
            let _ = tx.send(Control::Shutdown).await;
        }
    });
    let setup = Setup {
        config,
        load,
        source,
    };
    match lambda {
        Some(api) => sidekey::lambda::run(setup, listeners, rx, &api).await,
        None => app::run(setup, listeners, rx, Some(reloads)).await,
    }
}
