//! Watching the policy directory: any change (a file written, added,
//! removed, or a ConfigMap's symlink swap) wakes the reloader, debounced.
use std::{path::Path, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Starts watching `dir`; the receiver yields once per burst of changes.
pub fn watch(dir: &Path) -> notify::Result<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if !event.kind.is_access() {
                let _ = raw_tx.send(());
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Let an editor or `kubectl` finish writing: wait until the
            // directory has been quiet for a moment.
            loop {
                match tokio::time::timeout(Duration::from_millis(150), raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok((watcher, rx))
}
