//! File watchers → debounced [`Control`] events: the config file sends `Reload`, the local file
//! source's values file sends `RefreshNow`. Watches the parent directory and filters by file
//! name, because editors and Kubernetes ConfigMaps replace files (new inode) rather than write
//! them in place; a symlinked file (a ConfigMap key) also counts as changed when its target
//! does. Both paths re-read the file anyway, so a spurious event costs one parse.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Control;

/// Quiet period after the last event before a reload is sent (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Keeps the OS watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `file` and sends `event` to `tx` after each burst of changes.
pub fn watch_file(
    file: &Path,
    event: Control,
    tx: mpsc::Sender<Control>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> notify::Result<FileWatch> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let dir = file
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    let name = file.file_name().map(ToOwned::to_owned);
    let (raw_tx, mut raw_rx) = mpsc::channel::<()>(1);
    // A symlinked file can change without any event naming it: Kubernetes mounts a ConfigMap
    // key as `name -> ..data/name` and swaps `..data` by rename. So each event in the
    // directory also checks where the file leads now.
    let mut target = std::fs::canonicalize(&file).ok();
    let path = file.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let named = event.paths.iter().any(|p| p.file_name() == name.as_deref());
        let now = std::fs::canonicalize(&path).ok();
        let moved = now != target;
        target = now;
        if named || moved {
            // Full channel = a reload is already pending; that one will read the new file.
            let _ = raw_tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracker.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = raw_rx.recv() => if event.is_none() { return },
            }
            // Debounce: wait until the directory has been quiet for DEBOUNCE.
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(DEBOUNCE) => break,
                    _ = raw_rx.recv() => {}
                }
            }
            tracing::info!(file = %file.display(), "File changed.");
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    Ok(FileWatch { _watcher: watcher })
}

/// [`watch_file`] held until `shutdown`; a watch that cannot be set up is logged, not fatal
/// (the file is still read on reload and refresh, just not noticed by itself).
pub fn keep_watching(
    file: &Path,
    event: Control,
    tx: mpsc::Sender<Control>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    match watch_file(file, event, tx, shutdown.clone(), tracker) {
        Ok(w) => {
            let stop = shutdown.clone();
            tracker.spawn(async move {
                stop.cancelled().await;
                drop(w);
            });
        }
        Err(e) => tracing::warn!(file = %file.display(), error = %e, "Cannot watch the file."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_writes_is_one_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sidekey.toml");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let _w = watch_file(&file, Control::Reload, tx, stop.clone(), &tracker).unwrap();
        for i in 0..5 {
            std::fs::write(&file, format!("b{i}")).unwrap();
        }
        std::fs::write(dir.path().join("other.toml"), "x").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(first.ok().flatten(), Some(Control::Reload));
        let second = tokio::time::timeout(DEBOUNCE * 4, rx.recv()).await;
        assert!(second.is_err(), "one reload for one burst");
        stop.cancel();
    }

    /// Kubernetes mounts a ConfigMap key as `name -> ..data/name` with `..data -> ..<timestamp>`,
    /// and updates it by writing a new timestamped directory and renaming a new `..data` link
    /// over the old one: no event ever names the watched file.
    #[tokio::test]
    async fn a_configmap_style_symlink_swap_is_a_reload() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let version = |stamp: &str, text: &str| {
            std::fs::create_dir(d.join(stamp)).unwrap();
            std::fs::write(d.join(stamp).join("sidekey.toml"), text).unwrap();
        };
        version("..2026_11_26_01", "a");
        symlink("..2026_11_26_01", d.join("..data")).unwrap();
        symlink("..data/sidekey.toml", d.join("sidekey.toml")).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let _w = watch_file(
            &d.join("sidekey.toml"),
            Control::Reload,
            tx,
            stop.clone(),
            &tracker,
        )
        .unwrap();
        version("..2026_11_26_02", "b");
        symlink("..2026_11_26_02", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..2026_11_26_01")).unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(event.ok().flatten(), Some(Control::Reload));
        assert_eq!(
            std::fs::read_to_string(d.join("sidekey.toml")).unwrap(),
            "b"
        );
        stop.cancel();
    }
}
