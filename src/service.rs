//! Telling a service manager how the mount stands: systemd's `Type=notify` protocol
//! (`READY=1` once the file system is mounted, `STOPPING=1` when it is being unmounted). Without
//! `NOTIFY_SOCKET` in the environment these do nothing.

use sd_notify::NotifyState;

/// The mount is up: a `Type=notify` unit becomes active, and units ordered after it may start.
pub fn ready(mountpoint: &std::path::Path) {
    let status = format!("mounted on {}", mountpoint.display());
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The mount is going away: pending changes are being committed.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("unmounted; committing pending changes"),
    ]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}
