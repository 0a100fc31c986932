//! The one closed set of control events, and the OS signals that produce them. SIGHUP (and,
//! later, the config watcher) sends `Reload`; SIGTERM/SIGINT send `Shutdown`; a second
//! terminating signal or SIGQUIT sends `Quit`.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// What the app loop is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Re-read the config and apply what can change at runtime.
    Reload,
    /// Re-fetch every cached value now (the local file source changed).
    RefreshNow,
    /// Stop accepting, drain under the grace period, exit 0.
    Shutdown,
    /// Exit now.
    Quit,
}

/// Forwards OS signals as [`Control`] events until the receiver is gone.
pub async fn forward_signals(tx: mpsc::Sender<Control>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut stopping = false;
    loop {
        let event = tokio::select! {
            _ = term.recv() => Control::Shutdown,
            _ = int.recv() => Control::Shutdown,
            _ = hup.recv() => Control::Reload,
            _ = quit.recv() => Control::Quit,
        };
        let event = match event {
            Control::Shutdown if stopping => Control::Quit,
            Control::Shutdown => {
                stopping = true;
                Control::Shutdown
            }
            other => other,
        };
        if tx.send(event).await.is_err() {
            return Ok(());
        }
    }
}
