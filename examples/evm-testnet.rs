//! The EVM half of a local Autonomi network: starts anvil (which must be on PATH) through
//! `evmlib::testnet::Testnet`, deploys the payment token and vaults at the addresses that
//! `EVM_NETWORK=local` expects, prints them, writes a ready file and runs until SIGTERM/SIGINT.
//!
//! ```text
//! evm-testnet [--ready-file PATH]
//! ```
//!
//! The ready file is written (atomically) once the contracts are deployed. It is a shell-sourceable
//! list of `KEY=value` lines: the custom-network variables evmlib reads (`RPC_URL`,
//! `PAYMENT_TOKEN_ADDRESS`, `DATA_PAYMENTS_ADDRESS`, `MERKLE_PAYMENTS_ADDRESS`), `ANVIL_PID`
//! (so a supervisor can clean up even if this process is killed hard), and `EVM_TESTNET_PID`.
//! The funded key (anvil account 0) is printed, not written.
//!
//! ANVIL_PORT and ANVIL_IP_ADDR are honoured (evmlib reads them); the default port is 61611.

use std::path::PathBuf;
use std::process::ExitCode;

use evmlib::testnet::Testnet;
use evmlib::Network;
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> ExitCode {
    eprintln!("usage: evm-testnet [--ready-file PATH]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut ready_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ready-file" => match args.next() {
                Some(path) => ready_file = Some(PathBuf::from(path)),
                None => return usage(),
            },
            "-h" | "--help" => {
                println!("usage: evm-testnet [--ready-file PATH]");
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }

    // Register the handlers before anything slow, so a signal during start-up is not lost.
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            eprintln!("evm-testnet: cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };

    // Testnet::new panics when anvil is missing or a deployment fails: report it plainly.
    let testnet = match tokio::spawn(Testnet::new()).await {
        Ok(testnet) => testnet,
        Err(e) => {
            eprintln!(
                "evm-testnet: could not start anvil or deploy the contracts (is `anvil` on PATH, \
                 is port {} free?): {e}",
                std::env::var("ANVIL_PORT").unwrap_or_else(|_| "61611".into())
            );
            return ExitCode::FAILURE;
        }
    };

    let Network::Custom(custom) = testnet.to_network() else {
        unreachable!("a testnet is always a custom network")
    };
    let merkle = testnet.merkle_payments_address();
    let anvil_pid = anvil_pid();
    println!("EVM testnet running");
    println!("  RPC URL:                 {}", custom.rpc_url_http);
    println!(
        "  Payment token address:   {}",
        custom.payment_token_address
    );
    println!(
        "  Data payments address:   {}",
        custom.data_payments_address
    );
    println!("  Merkle payments address: {merkle}");
    println!(
        "  Funded key (anvil #0):   {}",
        testnet.default_wallet_private_key()
    );
    if let Some(pid) = anvil_pid {
        println!("  anvil pid:               {pid}");
    }
    match evmlib::utils::get_evm_network(true, None) {
        Ok(expected) if expected == testnet.to_network() => {
            println!("  matches EVM_NETWORK=local")
        }
        Ok(_) => println!(
            "  NOTE: differs from EVM_NETWORK=local's addresses: export the variables in the ready file"
        ),
        Err(e) => println!("  (could not compare with EVM_NETWORK=local: {e})"),
    }

    if let Some(path) = &ready_file {
        let mut text = format!(
            "RPC_URL={}\nPAYMENT_TOKEN_ADDRESS={}\nDATA_PAYMENTS_ADDRESS={}\nMERKLE_PAYMENTS_ADDRESS={merkle}\nEVM_TESTNET_PID={}\n",
            custom.rpc_url_http,
            custom.payment_token_address,
            custom.data_payments_address,
            std::process::id(),
        );
        if let Some(pid) = anvil_pid {
            text.push_str(&format!("ANVIL_PID={pid}\n"));
        }
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
            eprintln!(
                "evm-testnet: cannot write the ready file {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        println!("  ready file:              {}", path.display());
    }

    tokio::select! {
        _ = term.recv() => println!("SIGTERM: stopping anvil"),
        _ = int.recv() => println!("SIGINT: stopping anvil"),
    }
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    // Dropping the testnet kills its anvil child.
    drop(testnet);
    ExitCode::SUCCESS
}

/// The pid of the anvil child: our only child process (any of our threads may have spawned it).
fn anvil_pid() -> Option<u32> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    tasks.flatten().find_map(|task| {
        let children = std::fs::read_to_string(task.path().join("children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    })
}
