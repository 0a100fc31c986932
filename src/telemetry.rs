//! Logging setup: text or JSON lines to stderr (or a file), filtered by the configured level.
//! stdout is reserved for the `listening on` lines and `get` output.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::config::LogConfig;

/// Installs the global subscriber. Fails only when the log file cannot be opened.
pub fn init(cfg: &LogConfig) -> std::io::Result<()> {
    let (writer, ansi) = match &cfg.file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            (BoxMakeWriter::new(Mutex::new(file)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let filter = EnvFilter::try_new(&cfg.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = if cfg.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}
