//! The client's side of the control socket (blocking: it serves one short command).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::{socket_dir, socket_path, Reply, Request, Status};

/// Sends `request` to the socket at `socket` and hands each reply line to `on_reply`.
fn exchange(
    socket: &Path,
    request: Request,
    on_reply: &mut dyn FnMut(Reply),
) -> std::io::Result<()> {
    let mut stream = UnixStream::connect(socket)?;
    let mut line = serde_json::to_string(&request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let reply = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        on_reply(reply);
    }
    Ok(())
}

/// Sends `request` to the mount on `mountpoint`.
pub fn request(
    mountpoint: &Path,
    request: Request,
    on_reply: &mut dyn FnMut(Reply),
) -> Result<(), String> {
    let canonical =
        std::fs::canonicalize(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let socket = socket_path(&canonical);
    exchange(&socket, request, on_reply).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "no mutant-mount of yours is running on {} (no control socket at {})",
            canonical.display(),
            socket.display()
        ),
        _ => format!("cannot talk to the mount on {}: {e}", canonical.display()),
    })
}

/// The status of `mountpoint`'s mount.
pub fn status(mountpoint: &Path) -> Result<Status, String> {
    let mut found = None;
    let mut failed = None;
    request(mountpoint, Request::Status, &mut |reply| match reply {
        Reply::Status(s) => found = Some(*s),
        Reply::Error(e) => failed = Some(e),
        _ => {}
    })?;
    match (found, failed) {
        (Some(s), _) => Ok(s),
        (None, Some(e)) => Err(e),
        (None, None) => Err("the mount sent no status".into()),
    }
}

/// The status of every mount of this user that answers, in mount point order.
pub fn all_statuses() -> Vec<Status> {
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(socket_dir())
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    sockets.sort();
    let mut all = Vec::new();
    for socket in sockets {
        let _ = exchange(&socket, Request::Status, &mut |reply| {
            if let Reply::Status(s) = reply {
                all.push(*s);
            }
        });
    }
    all.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    all
}
