#!/usr/bin/env bash
# A real Autonomi network on this machine, offline: anvil with the payment contracts
# (examples/evm-testnet.rs) and NODES antnode 0.4.17 processes on 127.0.0.1.
#
#   scripts/local-network.sh start    # idempotent: does nothing if the network is already up
#   scripts/local-network.sh status   # exit 0 if every process is up, 1 otherwise
#   scripts/local-network.sh stop     # kills every process this script started (by pid)
#
# Everything lives under the state dir (MUTANT_LOCALNET_DIR, default ~/.cache/mutant-mount/localnet):
#   pids/*.pid        one file per process started
#   home/             the nodes' HOME: their bootstrap cache is home/.local/share/autonomi/bootstrap_cache
#   nodes/node-N/     each node's --root-dir, logs/ and stdout.log
#   evm.ready         written by evm-testnet once the contracts are deployed
#   peers             the nodes' multiaddrs, comma-separated (the ANT_PEERS format)
#   env               `source` it: EVM_NETWORK=local, ANT_PEERS=...
#   wallet.key        the funded anvil account #0 key (a well-known test key), mode 0600
#
# Settings: NODES (15), BASE_PORT (40100: nodes use BASE_PORT..BASE_PORT+NODES-1, UDP),
# ANVIL_PORT (61611, what EVM_NETWORK=local expects), CARGO_TARGET_DIR, LOCALNET_KEEP_DATA=1 to
# keep the nodes' records across a restart.
set -euo pipefail

STATE=${MUTANT_LOCALNET_DIR:-$HOME/.cache/mutant-mount/localnet}
NODES=${NODES:-15}
BASE_PORT=${BASE_PORT:-40100}
ANVIL_VERSION=1.7.1
ANVIL_DIR=${ANVIL_DIR:-$HOME/.cache/mutant-mount/anvil}
ANVIL_BIN_DIR=$ANVIL_DIR/package/bin
ANTNODE_VERSION=0.4.17
CARGO_ROOT=${CARGO_ROOT:-$HOME/.cargo}
ANTNODE=$CARGO_ROOT/bin/antnode
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mutant-mount/target}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REWARDS_ADDRESS=0x03B770D9cD32077cC0bF330c13C114a87643B124
ANVIL_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
PIDS=$STATE/pids

log() { printf '[local-network] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A pid file's process, if it is alive and still the program we started (pids get reused).
alive() { # alive PIDFILE EXPECTED_NAME
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

name_of() { # the program a pid file is for
    case $(basename "$1") in
        node-*) echo antnode ;;
        evm-testnet.pid) echo evm-testnet ;;
        anvil.pid) echo anvil ;;
        *) echo '?' ;;
    esac
}

ensure_anvil() {
    if [[ -x $ANVIL_BIN_DIR/anvil && $("$ANVIL_BIN_DIR/anvil" --version 2>/dev/null) == *"$ANVIL_VERSION"* ]]; then
        return
    fi
    command -v npm >/dev/null || die "npm is needed to install anvil"
    log "installing anvil $ANVIL_VERSION from npm into $ANVIL_DIR"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@foundry-rs/anvil-linux-amd64@$ANVIL_VERSION" >/dev/null)
    rm -rf "$ANVIL_DIR" && mkdir -p "$ANVIL_DIR"
    tar xzf "$tmp"/*.tgz -C "$ANVIL_DIR"
    rm -rf "$tmp"
    chmod +x "$ANVIL_BIN_DIR/anvil"
    "$ANVIL_BIN_DIR/anvil" --version >/dev/null || die "the installed anvil does not run"
}

ensure_antnode() {
    if [[ -x $ANTNODE && $("$ANTNODE" --version 2>/dev/null) == *"v$ANTNODE_VERSION"* ]]; then
        return
    fi
    # Without --version, cargo would install the post-quantum ant-node, which has no scratchpads.
    log "installing antnode $ANTNODE_VERSION (cargo install, about 10 minutes)"
    nice -n 10 cargo install ant-node --version "$ANTNODE_VERSION" --locked --root "$CARGO_ROOT"
    [[ $("$ANTNODE" --version 2>/dev/null) == *"v$ANTNODE_VERSION"* ]] || die "antnode $ANTNODE_VERSION did not install"
}

build_evm_testnet() {
    EVM_TESTNET=$CARGO_TARGET_DIR/debug/examples/evm-testnet
    # An example of the main package (so `cargo install` leaves it off the user's PATH);
    # building it builds the library too: skip that when the binary is newer than its source
    # and the lock file.
    if [[ -x $EVM_TESTNET && $EVM_TESTNET -nt $REPO/examples/evm-testnet.rs && $EVM_TESTNET -nt $REPO/Cargo.lock ]]; then
        return
    fi
    log "building evm-testnet"
    (cd "$REPO" && nice -n 10 cargo build --quiet --example evm-testnet)
    [[ -x $EVM_TESTNET ]] || die "no evm-testnet binary at $EVM_TESTNET"
}

# Every process the pid files name, alive or not.
pid_files() { ls "$PIDS"/*.pid 2>/dev/null || true; }

status() {
    local files up=0 total=0 f
    files=$(pid_files)
    if [[ -z $files ]]; then
        echo "local network: not running (state dir $STATE)"
        return 1
    fi
    for f in $files; do
        total=$((total + 1))
        if alive "$f" "$(name_of "$f")"; then
            up=$((up + 1))
        else
            echo "  down: $(basename "$f" .pid)"
        fi
    done
    echo "local network: $up of $total processes up (state dir $STATE)"
    [[ -f $STATE/env ]] && echo "  source $STATE/env   # EVM_NETWORK, ANT_PEERS"
    [[ $up -eq $total ]]
}

stop() {
    local files f pid name
    files=$(pid_files)
    [[ -z $files ]] && { log "nothing to stop"; return 0; }
    # Nodes first, then the chain.
    for f in $(ls "$PIDS"/node-*.pid 2>/dev/null) "$PIDS/evm-testnet.pid" "$PIDS/anvil.pid"; do
        [[ -f $f ]] || continue
        name=$(name_of "$f")
        if alive "$f" "$name"; then
            pid=$(cat "$f")
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    # Wait up to 15 s, then kill what is left.
    local deadline=$((SECONDS + 15)) left
    while :; do
        left=0
        for f in $(pid_files); do
            if alive "$f" "$(name_of "$f")"; then left=$((left + 1)); fi
        done
        [[ $left -eq 0 || $SECONDS -ge $deadline ]] && break
        sleep 0.5
    done
    for f in $(pid_files); do
        if alive "$f" "$(name_of "$f")"; then
            log "killing $(basename "$f" .pid) ($(cat "$f"))"
            kill -KILL "$(cat "$f")" 2>/dev/null || true
        fi
        rm -f "$f"
    done
    rm -f "$STATE/evm.ready" "$STATE/env" "$STATE/peers"
    log "stopped"
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        [[ $SECONDS -lt $deadline ]] || return 1
        sleep 0.3
    done
}

# Peers in a node's routing table, from its latest "kBucketTable has K kbuckets N peers" log line.
rt_peers() {
    local n
    n=$(grep -ho 'kBucketTable has [0-9]* kbuckets [0-9]* peers' "$1"/logs/antnode*.log 2>/dev/null | tail -1 | awk '{print $5}')
    echo "${n:-0}"
}
well_connected() { [[ $(rt_peers "$1") -ge $WANT_PEERS ]]; }

peer_id_of() { sed -n 's/^PeerId is \([A-Za-z0-9]*\).*/\1/p' "$1/stdout.log" 2>/dev/null | head -1; }
has_peer_id() { [[ -n $(peer_id_of "$1") ]]; }

start() {
    if [[ -n $(pid_files) ]]; then
        if status >/dev/null; then
            log "already running"
            status
            return 0
        fi
        log "a previous network is partly down: stopping what is left of it"
        stop
    fi
    ensure_anvil
    ensure_antnode
    build_evm_testnet

    mkdir -p "$PIDS"
    if [[ ${LOCALNET_KEEP_DATA:-0} != 1 ]]; then
        rm -rf "$STATE/nodes" "$STATE/home"
    fi
    mkdir -p "$STATE/home" "$STATE/nodes"
    local started=$SECONDS

    # The chain.
    local anvil_port=${ANVIL_PORT:-61611}
    if (exec 3<>"/dev/tcp/127.0.0.1/$anvil_port") 2>/dev/null; then
        die "port $anvil_port is taken: another anvil running? (ANVIL_PORT to choose another)"
    fi
    rm -f "$STATE/evm.ready"
    PATH=$ANVIL_BIN_DIR:$PATH nohup "$EVM_TESTNET" --ready-file "$STATE/evm.ready" \
        >"$STATE/evm-testnet.log" 2>&1 </dev/null &
    echo $! >"$PIDS/evm-testnet.pid"
    if ! wait_for 90 "the EVM testnet" test -f "$STATE/evm.ready"; then
        cat "$STATE/evm-testnet.log" >&2 || true
        stop
        die "evm-testnet did not come up (log above)"
    fi
    local anvil_pid
    anvil_pid=$(sed -n 's/^ANVIL_PID=//p' "$STATE/evm.ready")
    [[ -n $anvil_pid ]] && echo "$anvil_pid" >"$PIDS/anvil.pid"
    log "EVM testnet up ($(sed -n 's/^RPC_URL=//p' "$STATE/evm.ready"))"

    # The nodes: the first alone, then the rest, which find it through the shared bootstrap cache.
    local i dir port first
    for ((i = 1; i <= NODES; i++)); do
        dir=$STATE/nodes/node-$i
        port=$((BASE_PORT + i - 1))
        mkdir -p "$dir/logs"
        first=()
        [[ $i -eq 1 ]] && first=(--first)
        HOME=$STATE/home XDG_DATA_HOME=$STATE/home/.local/share EVM_NETWORK=local \
            nohup "$ANTNODE" "${first[@]}" --local --no-upnp --ip 127.0.0.1 --port "$port" \
            --root-dir "$dir" --log-output-dest "$dir/logs" \
            --rewards-address "$REWARDS_ADDRESS" \
            >"$dir/stdout.log" 2>&1 </dev/null &
        echo $! >"$PIDS/node-$i.pid"
        if [[ $i -eq 1 ]]; then
            if ! wait_for 60 "the first node" has_peer_id "$dir"; then
                cat "$dir/stdout.log" >&2 || true
                stop
                die "the first node did not start (output above)"
            fi
            # Let it write the bootstrap cache the others read.
            wait_for 30 "the bootstrap cache" compgen -G "$STATE/home/.local/share/autonomi/bootstrap_cache/*/*.json" >/dev/null || true
        fi
    done

    # Up: every node printed its peer id and is still running.
    local peers=() pid_file
    for ((i = 1; i <= NODES; i++)); do
        dir=$STATE/nodes/node-$i
        if ! wait_for 90 "node $i" has_peer_id "$dir"; then
            cat "$dir/stdout.log" >&2 || true
            stop
            die "node $i did not start (output above)"
        fi
        peers+=("/ip4/127.0.0.1/udp/$((BASE_PORT + i - 1))/quic-v1/p2p/$(peer_id_of "$dir")")
    done
    # Up means connected: every node knows most of the others (a client needs 5 connections
    # and quotes from 5 of 10 candidates).
    WANT_PEERS=$((NODES - 1 < 8 ? NODES - 1 : 8))
    for ((i = 1; i <= NODES; i++)); do
        if ! wait_for 60 "node $i's routing table" well_connected "$STATE/nodes/node-$i"; then
            stop
            die "node $i knows only $(rt_peers "$STATE/nodes/node-$i") peers after a minute"
        fi
    done
    # Check nobody died on the way.
    for pid_file in $(pid_files); do
        if ! alive "$pid_file" "$(name_of "$pid_file")"; then
            stop
            die "$(basename "$pid_file" .pid) died during start-up (see $STATE/nodes/*/stdout.log, $STATE/evm-testnet.log)"
        fi
    done

    (IFS=,; echo "${peers[*]}") >"$STATE/peers"
    cat >"$STATE/env" <<EOF
export EVM_NETWORK=local
export ANT_PEERS=$(cat "$STATE/peers")
export MUTANT_LOCALNET_DIR=$STATE
EOF
    (umask 077 && echo "$ANVIL_KEY" >"$STATE/wallet.key")
    log "up: $NODES nodes and the EVM testnet in $((SECONDS - started)) s"
    status
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|status|restart" >&2; exit 2 ;;
esac
