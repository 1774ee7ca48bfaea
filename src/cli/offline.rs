//! `mutant-mount fsck [--repair]`: a progress bar while the pads are checked, then one line
//! per damaged file; the exit status follows e2fsck's, which scripts already know.
//! `mutant-mount gc [--free]`: the pads interrupted writes left behind.

use std::process::ExitCode;

use mutant_mount::engine::check::Damaged;
use mutant_mount::mount::MountConfig;

pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_REPAIRED: u8 = 1;
pub const EXIT_DAMAGE_LEFT: u8 = 4;
pub const EXIT_CANNOT_CHECK: u8 = 8;

pub fn fsck(cfg: &MountConfig, repair: bool) -> ExitCode {
    let bar = super::progress_bar("{spinner} checking pads: {bar:30} {pos}/{len} {eta}");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let outcome = mutant_mount::offline::fsck(cfg, repair, &progress);
    bar.finish_and_clear();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("mutant-mount fsck: {e}");
            return ExitCode::from(EXIT_CANNOT_CHECK);
        }
    };
    let report = &outcome.report;
    println!(
        "{} pads checked ({}), {} damaged file{}",
        report.pads,
        indicatif::BinaryBytes(report.bytes),
        report.damaged.len(),
        if report.damaged.len() == 1 { "" } else { "s" }
    );
    for file in &report.damaged {
        println!("{}", describe(file));
    }
    match (&outcome.set_aside, report.damaged.is_empty()) {
        (_, true) => ExitCode::from(EXIT_CLEAN),
        (Some(dir), false) => {
            println!("set aside under /{dir} (see DAMAGE.txt there)");
            ExitCode::from(EXIT_REPAIRED)
        }
        (None, false) => {
            println!("run `mutant-mount fsck --repair` to set these files aside");
            ExitCode::from(EXIT_DAMAGE_LEFT)
        }
    }
}

/// `DAMAGED path: bytes a..b (why), ...`; a file with several names lists them all.
fn describe(file: &Damaged) -> String {
    let names = match file.names.is_empty() {
        true => "(a file deleted while open)".to_string(),
        false => file
            .names
            .iter()
            .map(|n| format!("/{}", mutant_mount::index::names::display(n)))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let chunks = file
        .chunks
        .iter()
        .map(|c| format!("bytes {}..{} ({})", c.bytes.start, c.bytes.end, c.why))
        .collect::<Vec<_>>()
        .join("; ");
    format!("DAMAGED {names}: {chunks}")
}

pub fn gc(cfg: &MountConfig, free: bool) -> ExitCode {
    let leaked = match mutant_mount::offline::gc(cfg, free) {
        Ok(leaked) => leaked,
        Err(e) => {
            eprintln!("mutant-mount gc: {e}");
            return ExitCode::FAILURE;
        }
    };
    let n = leaked.pads.len();
    let pads = if n == 1 { "pad" } else { "pads" };
    match (n, free) {
        (0, _) => println!("no pads to reclaim"),
        (_, true) => println!("{n} {pads} that nothing referenced returned to the free list"),
        (_, false) => println!(
            "{n} {pads} left by interrupted writes, referenced by nothing; \
             `mutant-mount gc --free` returns them to the free list"
        ),
    }
    ExitCode::SUCCESS
}
