//! `mutant-mount status` and `mutant-mount sync`: clients of a running mount's control socket.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mutant_mount::control::{client, Reply, Request, Status};

/// How often `status --watch` refreshes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub fn status(mountpoint: Option<&Path>, json: bool, watch: bool) -> Result<(), String> {
    loop {
        let statuses = match mountpoint {
            Some(mp) => vec![client::status(mp)?],
            None => client::all_statuses(),
        };
        if watch && std::io::stdout().is_terminal() {
            // Clear the screen and go home, like watch(1).
            print!("\x1b[2J\x1b[H");
        }
        if json {
            let text = match mountpoint {
                Some(_) => serde_json::to_string_pretty(&statuses[0]),
                None => serde_json::to_string_pretty(&statuses),
            };
            println!("{}", text.expect("statuses serialize"));
        } else if statuses.is_empty() {
            println!("no mutant-mount of yours is running");
        } else {
            for (i, s) in statuses.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", describe(s));
            }
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

fn describe(s: &Status) -> String {
    let mut out = format!(
        "{} (pid {}, {}{}, key {})\n",
        s.mountpoint.display(),
        s.pid,
        s.store,
        if s.read_only { ", read-only" } else { "" },
        s.key_fingerprint
    );
    let mut line = |label: &str, value: String| out += &format!("  {label:<20} {value}\n");
    line(
        "uncommitted",
        match (s.uncommitted, s.uncommitted_changes) {
            (false, _) => "nothing: all changes are committed".into(),
            (true, 0) => "yes".into(),
            (true, n) => format!("{n} changes"),
        },
    );
    // Over the tier, the engine's writes go to local disk; the network's uploads are below.
    line(
        match s.staged {
            Some(_) => "writes in flight",
            None => "uploads in flight",
        },
        format!(
            "{} pads (up to {})",
            s.uploads_in_flight,
            bytes(s.upload_bytes_in_flight)
        ),
    );
    if let Some(staged) = &s.staged {
        line(
            "not yet uploaded",
            match (&staged.stopped, staged.pads) {
                (Some(why), _) => format!(
                    "{} pads ({}) kept locally; uploads stopped: {why}",
                    staged.pads,
                    bytes(staged.bytes)
                ),
                (None, 0) => "nothing: everything committed is on the network".into(),
                (None, n) => format!(
                    "{n} pads ({}) staged locally, {} uploading",
                    bytes(staged.bytes),
                    staged.uploading
                ),
            },
        );
    }
    line(
        "last commit",
        s.last_commit_unix.map_or("none since mounted".into(), ago),
    );
    line(
        "files",
        format!(
            "{} ({}), {} pads in use, {} free",
            s.files,
            bytes(s.data_bytes),
            s.pads_in_use,
            s.free_pads
        ),
    );
    line(
        "this session",
        format!(
            "{} pads created, {} updated, {} read ({} written, {} read)",
            s.pads_created,
            s.pads_updated,
            s.pads_read,
            bytes(s.bytes_written),
            bytes(s.bytes_read)
        ),
    );
    if let Some(tokens) = &s.tokens_spent {
        line("tokens spent", tokens.clone());
    }
    let lookups = s.cache_hits + s.cache_misses;
    line(
        "chunk cache",
        format!(
            "{} of {}, {}",
            bytes(s.cache_bytes as u64),
            bytes(s.cache_capacity as u64),
            if lookups == 0 {
                "no lookups yet".to_string()
            } else {
                format!("{:.0}% hits", 100.0 * s.cache_hits as f64 / lookups as f64)
            }
        ),
    );
    line(
        "store health",
        format!(
            "{} errors, {} failed attempts{}",
            s.store_errors,
            s.store_failed_attempts,
            s.last_store_error
                .as_ref()
                .map_or(String::new(), |e| format!("; last: {e}"))
        ),
    );
    out
}

fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

fn ago(unix: u64) -> String {
    let then = UNIX_EPOCH + Duration::from_secs(unix);
    let secs = SystemTime::now()
        .duration_since(then)
        .map_or(0, |d| d.as_secs());
    format!(
        "{} ago",
        indicatif::HumanDuration(Duration::from_secs(secs))
    )
}

/// Commits everything now and waits; progress on a terminal.
pub fn sync(mountpoint: &Path) -> Result<(), String> {
    let bar = super::progress_bar("{spinner} committing: {bar:30} {pos}/{len} {msg}");
    let mut outcome = Err("the mount ended the sync without an answer".to_string());
    let mut most = 0u64;
    client::request(mountpoint, Request::Sync, &mut |reply| match reply {
        Reply::Progress {
            uncommitted_changes,
            uploads_in_flight,
        } => {
            let left = (uncommitted_changes + uploads_in_flight) as u64;
            most = most.max(left);
            bar.set_length(most);
            bar.set_position(most - left);
            bar.set_message(format!(
                "{uncommitted_changes} changes, {uploads_in_flight} uploads left"
            ));
        }
        Reply::Synced => outcome = Ok(()),
        Reply::Error(e) => outcome = Err(e),
        Reply::Status(_) => {}
    })?;
    bar.finish_and_clear();
    if outcome.is_ok() {
        eprintln!(
            "{}: everything is committed and stored",
            mountpoint.display()
        );
    }
    outcome
}
