#!/usr/bin/env bash
# Installs an Outpost gateway in one command: the binaries, the config file,
# the service packages and the systemd unit, then starts the agent.
#
#   sudo deploy/gateway/install.sh --site quarry-north
#
# Run with --help for the options. Safe to re-run (upgrade): binaries,
# packages and the unit are replaced, an existing config is kept.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
BINARIES=(outpost outpostctl outpost-sim)
ID_RE='^[A-Za-z0-9._-]+$'

usage() {
    cat <<EOF
usage: install.sh [options]

Installs the Outpost agent with its systemd unit and starts it.

options:
  --prefix DIR     install under DIR instead of / (a staging tree or a test);
                   the config and unit still name the gateway's own paths
                   (/etc/outpost, /var/lib/outpost, /usr/local/bin)
  --bin-dir DIR    folder with prebuilt outpost, outpostctl and outpost-sim
                   (default: build them with cargo build --release from
                   $REPO_ROOT)
  --packages DIR   folder of service packages (one subfolder per service with
                   service.toml and service.wasm), or one package folder
                   (default: $REPO_ROOT/target/outpost/packages
                   if it exists, as built by cargo xtask build)
  --gateway ID     this gateway's id (default: the host name)
  --site ID        the site this gateway serves
  --config FILE    start from FILE instead of the default config template
                   (e.g. deploy/sites/quarry-north.toml)
  --broker KIND    "mosquitto" (default, production: nothing acknowledged is
                   lost in a crash) writes /etc/mosquitto/conf.d/outpost.conf
                   with persistence and points a new config at it;
                   "embedded" keeps the agent's own broker (no other
                   package needed), which loses what is queued in it when
                   the agent crashes
  --no-start       install only; do not enable or start the systemd service
  -h, --help       show this help

An existing config (etc/outpost/outpost.toml) is never overwritten.
EOF
}

say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
on_err() {
    printf 'error: command failed (exit %s) at install.sh line %s: %s\n' "$1" "$2" "$3" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

prefix=/
bin_dir=
packages=
gateway=
site=
config_src=
no_start=0
broker=mosquitto

while [[ $# -gt 0 ]]; do
    opt=$1
    case $opt in
    --prefix | --bin-dir | --packages | --gateway | --site | --config | --broker)
        [[ $# -ge 2 && -n $2 ]] || die "$opt needs a value (see --help)"
        val=$2
        shift 2
        ;;
    --prefix=* | --bin-dir=* | --packages=* | --gateway=* | --site=* | --config=* | --broker=*)
        val=${opt#*=}
        opt=${opt%%=*}
        [[ -n $val ]] || die "$opt needs a value (see --help)"
        shift
        ;;
    --no-start)
        no_start=1
        shift
        continue
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown option '$opt' (see --help)" ;;
    esac
    case $opt in
    --prefix) prefix=$val ;;
    --bin-dir) bin_dir=$val ;;
    --packages) packages=$val ;;
    --gateway) gateway=$val ;;
    --site) site=$val ;;
    --config) config_src=$val ;;
    --broker) broker=$val ;;
    esac
done

[[ $broker == embedded || $broker == mosquitto ]] || die "--broker '$broker' must be embedded or mosquitto"

# --- where things go --------------------------------------------------------

for id_opt in "gateway:$gateway" "site:$site"; do
    name=${id_opt%%:*}
    value=${id_opt#*:}
    if [[ -n $value && ! $value =~ $ID_RE ]]; then
        die "--$name '$value' may only contain ASCII letters, digits, '-', '_' and '.'"
    fi
done

if [[ $prefix == / || $prefix =~ ^/+$ ]]; then
    system=1
    root=
else
    system=0
    mkdir -p -- "$prefix" || die "cannot create --prefix $prefix; check the path and its permissions"
    root=$(cd -- "$prefix" && pwd)
fi

if [[ $system == 1 && $EUID -ne 0 ]]; then
    die "installing into / needs root: re-run with sudo, or stage the files elsewhere with --prefix DIR"
fi

bin_dest=$root/usr/local/bin
etc_dest=$root/etc/outpost
cfg=$etc_dest/outpost.toml
lib_dest=$root/var/lib/outpost
svc_dest=$lib_dest/services
state_dest=$lib_dest/state
unit_dest=$root/etc/systemd/system/outpost.service
doc_dest=$root/usr/local/share/doc/outpost

if [[ $system == 1 ]]; then
    say "installing the Outpost gateway"
else
    say "installing the Outpost gateway under $root"
fi

# --- binaries ---------------------------------------------------------------

if [[ -z $bin_dir ]]; then
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found, so the binaries cannot be built here: install Rust (https://rustup.rs), or build elsewhere with 'cargo build --release -p outpost-runtime -p outpost-devtools --bins' and pass --bin-dir DIR"
    [[ -f $REPO_ROOT/Cargo.toml ]] ||
        die "no Cargo.toml in $REPO_ROOT, so the binaries cannot be built; pass --bin-dir DIR with prebuilt outpost, outpostctl and outpost-sim"
    say "building the binaries (cargo build --release -p outpost-runtime -p outpost-devtools --bins)"
    (cd "$REPO_ROOT" && cargo build --release -p outpost-runtime -p outpost-devtools --bins) ||
        die "building the binaries failed (cargo output above); fix the build, or pass --bin-dir DIR with prebuilt binaries"
    target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    [[ $target_dir == /* ]] || target_dir=$REPO_ROOT/$target_dir
    bin_dir=$target_dir/release
fi
[[ -d $bin_dir ]] || die "--bin-dir $bin_dir is not a folder; build the binaries with 'cargo build --release -p outpost-runtime -p outpost-devtools --bins' and pass their folder (target/release)"
bin_dir=$(cd -- "$bin_dir" && pwd)

missing=()
for b in "${BINARIES[@]}"; do
    [[ -f $bin_dir/$b && -x $bin_dir/$b ]] || missing+=("$b")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    die "$bin_dir lacks ${missing[*]}; build them with 'cargo build --release -p outpost-runtime -p outpost-devtools --bins' and pass their folder with --bin-dir"
fi

say "installing binaries to $bin_dest"
install -d -m 0755 "$bin_dest"
for b in "${BINARIES[@]}"; do
    if [[ -f $bin_dest/$b ]] && cmp -s "$bin_dir/$b" "$bin_dest/$b"; then
        info "$b: unchanged"
        continue
    fi
    # Copy beside, then rename: a running agent keeps its old file intact.
    install -m 0755 "$bin_dir/$b" "$bin_dest/.$b.new" ||
        die "cannot copy $bin_dir/$b to $bin_dest; check free space and permissions"
    mv -f "$bin_dest/.$b.new" "$bin_dest/$b"
    info "$b: $("$bin_dest/$b" --version 2>/dev/null || echo installed)"
done

# --- config -----------------------------------------------------------------

# Value of a top-level `key = "value"` line.
toml_top_value() {
    awk -v key="$2" '
        /^[[:space:]]*\[/ { exit }
        $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
        }' "$1"
}

# `key = "value"` inside [section]; prints "-" when the section exists but
# has no such key, nothing when the section is absent.
toml_section_value() {
    awk -v section="[$2]" -v key="$3" '
        /^[[:space:]]*\[/ {
            if (in_section) exit
            line = $0; gsub(/[[:space:]]/, "", line)
            if (line == section) { in_section = 1; found = 1 }
            next
        }
        in_section && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; done = 1; exit
        }
        END { if (found && !done) print "-" }' "$1"
}

install -d -m 0755 "$etc_dest"
# Provider keys whose signed packages (.opkg) the agent accepts: root's to
# change (outpostctl keygen writes NAME.pub; copy it here).
install -d -m 0755 "$etc_dest/trust"
if [[ -e $cfg ]]; then
    say "keeping the existing config $cfg (never overwritten)"
    for id_opt in "gateway:$gateway" "site:$site"; do
        name=${id_opt%%:*}
        value=${id_opt#*:}
        current=$(toml_top_value "$cfg" "$name")
        if [[ -n $value && $value != "$current" ]]; then
            warn "--$name $value not applied: $cfg keeps $name = \"$current\"; edit it there if it should change"
        fi
    done
    [[ -z $config_src ]] || warn "--config $config_src not applied: $cfg already exists; merge the settings you need by hand"
else
    if [[ -n $config_src ]]; then
        [[ -f $config_src ]] || die "--config $config_src does not exist"
        template=$config_src
    else
        template=$SCRIPT_DIR/outpost.toml
        [[ -f $template ]] || die "config template $template is missing; re-fetch the deploy/ folder"
        if [[ -z $gateway ]]; then
            host=$(hostname -s 2>/dev/null || uname -n)
            if [[ $host =~ $ID_RE ]]; then
                gateway=$host
            else
                warn "host name '$host' is not a valid gateway id; keeping the template's, pass --gateway ID"
            fi
        fi
    fi
    for key in gateway site; do
        grep -Eq "^${key}[[:space:]]*=" "$template" ||
            die "$template has no top-level '$key = ...' line; add one (see deploy/gateway/outpost.toml)"
    done
    tmp_cfg=$(mktemp "$etc_dest/.outpost.toml.XXXXXX")
    sed_args=()
    [[ -z $gateway ]] || sed_args+=(-e "s|^gateway[[:space:]]*=.*|gateway = \"$gateway\"|")
    [[ -z $site ]] || sed_args+=(-e "s|^site[[:space:]]*=.*|site = \"$site\"|")
    if [[ $broker == mosquitto ]]; then
        # The agent connects to the local Mosquitto instead of running its own.
        sed_args+=(-e 's|^mode[[:space:]]*=[[:space:]]*"embedded".*|mode = "external"\nurl = "mqtt://127.0.0.1:1883"|')
    fi
    if [[ ${#sed_args[@]} -gt 0 ]]; then
        sed "${sed_args[@]}" "$template" >"$tmp_cfg"
    else
        cat "$template" >"$tmp_cfg"
    fi
    chmod 0640 "$tmp_cfg"
    mv -f "$tmp_cfg" "$cfg"
    say "wrote the config $cfg"
    info "gateway = \"$(toml_top_value "$cfg" gateway)\", site = \"$(toml_top_value "$cfg" site)\""
    if [[ -z $site && -z $config_src ]]; then
        warn "no --site given: the config says site = \"$(toml_top_value "$cfg" site)\"; set the real site id in $cfg"
    fi
fi

# --- services and state -----------------------------------------------------

install -d -m 0755 "$lib_dest" "$svc_dest"
# Private to the agent's user: the precompiled-code cache under it is loaded
# as native code (the agent also refuses entries it did not record).
install -d -m 0700 "$state_dest"

if [[ -z $packages && -d $REPO_ROOT/target/outpost/packages ]]; then
    packages=$REPO_ROOT/target/outpost/packages
fi
package_dirs=()
if [[ -z $packages ]]; then
    warn "no service packages found ($REPO_ROOT/target/outpost/packages does not exist): the agent will run with no services; build them with 'cargo xtask build' or pass --packages DIR"
else
    [[ -d $packages ]] || die "--packages $packages is not a folder; pass the folder that holds the package folders (e.g. target/outpost/packages)"
    if [[ -f $packages/service.toml ]]; then
        package_dirs+=("$packages")
    else
        for d in "$packages"/*/; do
            [[ -d $d ]] || continue
            d=${d%/}
            if [[ -f $d/service.toml ]]; then
                package_dirs+=("$d")
            else
                info "skipping $d (no service.toml)"
            fi
        done
    fi
fi

say "installing ${#package_dirs[@]} service package(s) to $svc_dest"
for d in "${package_dirs[@]}"; do
    name=$(basename -- "$d")
    [[ -f $d/service.wasm ]] || die "package $d has service.toml but no service.wasm; rebuild it with 'cargo xtask build'"
    if ! check_out=$(RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$bin_dest/outpostctl" check "$d" 2>&1); then
        printf '%s\n' "$check_out" >&2
        die "package $name failed 'outpostctl check $d' (output above); rebuild it with 'cargo xtask build' or leave it out of --packages"
    fi
    install -d -m 0755 "$svc_dest/$name"
    install -m 0644 "$d/service.toml" "$svc_dest/$name/service.toml"
    install -m 0644 "$d/service.wasm" "$svc_dest/$name/service.wasm"
    info "$name: ok"
done
for d in "$svc_dest"/*/; do
    [[ -d $d ]] || continue
    name=$(basename -- "$d")
    keep=1
    for p in "${package_dirs[@]}"; do
        [[ $(basename -- "$p") != "$name" ]] || keep=0
    done
    [[ $keep == 0 ]] || info "$name: already installed, left as is (remove $d to uninstall it)"
done

# --- system user ------------------------------------------------------------

if [[ $system == 1 ]]; then
    if ! getent passwd outpost >/dev/null; then
        command -v useradd >/dev/null 2>&1 ||
            die "useradd not found: create a system user and group 'outpost' by hand, then re-run"
        nologin=/usr/sbin/nologin
        [[ -x $nologin ]] || nologin=/sbin/nologin
        [[ -x $nologin ]] || nologin=/bin/false
        useradd --system --user-group --home-dir /var/lib/outpost --no-create-home --shell "$nologin" outpost ||
            die "could not create the system user 'outpost' (useradd output above)"
        say "created the system user 'outpost'"
    fi
    chown -R outpost:outpost "$state_dest"
    chown root:outpost "$cfg"
    chmod 0640 "$cfg"
else
    info "skipping the system user 'outpost' (created only when installing into / as root)"
fi

# --- systemd unit and docs --------------------------------------------------

[[ -f $SCRIPT_DIR/outpost.service ]] || die "$SCRIPT_DIR/outpost.service is missing; re-fetch the deploy/ folder"
say "installing the systemd unit to $unit_dest"
install -d -m 0755 "$(dirname -- "$unit_dest")"
install -m 0644 "$SCRIPT_DIR/outpost.service" "$unit_dest"

if [[ $broker == mosquitto ]]; then
    # Production broker: sessions and QoS 1 messages persisted, so neither an
    # agent crash nor a broker restart loses what a publisher was told is
    # delivered; messages larger than any service accepts are refused at the
    # broker, so the agent never has to hold one.
    mq_conf=$root/etc/mosquitto/conf.d/outpost.conf
    say "configuring Mosquitto as the gateway's broker ($mq_conf)"
    install -d -m 0755 "$(dirname -- "$mq_conf")"
    cat >"$mq_conf" <<'MQ'
# Written by the Outpost installer (--broker mosquitto).
listener 1883 127.0.0.1
allow_anonymous true
persistence true
persistence_location /var/lib/mosquitto/
autosave_interval 5
message_size_limit 16777216
max_queued_messages 100000
max_inflight_messages 100
MQ
    chmod 0644 "$mq_conf"
    sed -i -e 's|^After=network-online.target$|After=network-online.target mosquitto.service|' \
        -e 's|^Wants=network-online.target$|Wants=network-online.target mosquitto.service|' "$unit_dest"
    if [[ $system == 1 ]] && ! command -v mosquitto >/dev/null 2>&1; then
        die "--broker mosquitto: mosquitto is not installed; apt-get install mosquitto (or install its .deb from the release media), then re-run"
    fi
fi

install -d -m 0755 "$doc_dest" "$doc_dest/sites"
install -m 0644 "$SCRIPT_DIR/outpost.toml" "$doc_dest/outpost.toml.example"
[[ ! -f $SCRIPT_DIR/../README.md ]] || install -m 0644 "$SCRIPT_DIR/../README.md" "$doc_dest/README.md"
for f in "$SCRIPT_DIR"/../sites/*; do
    [[ ! -f $f ]] || install -m 0644 "$f" "$doc_dest/sites/"
done

# --- check the config -------------------------------------------------------

say "checking the config"
RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 "$bin_dest/outpost" --check --config "$cfg" ||
    die "the config $cfg is invalid (problems listed above); fix it, then re-run this installer or check it with: outpost --check --config /etc/outpost/outpost.toml"

# --- start ------------------------------------------------------------------

metrics_listen=$(toml_section_value "$cfg" metrics listen)
case $metrics_listen in
"") status_addr=127.0.0.1:9464 ;;
-) status_addr= ;;
*) status_addr=${metrics_listen/#0.0.0.0:/127.0.0.1:} ;;
esac
api_listen=$(toml_section_value "$cfg" api listen)
case $api_listen in
"") api_addr=127.0.0.1:9465 ;;
-) api_addr= ;;
*) api_addr=${api_listen/#0.0.0.0:/127.0.0.1:} ;;
esac
if [[ $(toml_section_value "$cfg" broker mode) == external ]]; then
    broker_url=$(toml_section_value "$cfg" broker url)
else
    broker_listen=$(toml_section_value "$cfg" broker listen)
    [[ -n $broker_listen && $broker_listen != - ]] || broker_listen=127.0.0.1:1883
    broker_url=mqtt://${broker_listen/#0.0.0.0:/127.0.0.1:}
fi
gw_id=$(toml_top_value "$cfg" gateway)

started=0
if [[ $system == 1 && $no_start == 0 && -d /run/systemd/system ]]; then
    was_active=0
    systemctl is-active --quiet outpost && was_active=1
    say "starting the agent (systemctl enable --now outpost)"
    systemctl daemon-reload || die "systemctl daemon-reload failed (output above)"
    if [[ $broker == mosquitto ]]; then
        if ! { systemctl enable mosquitto && systemctl restart mosquitto; }; then
            die "Mosquitto did not start with $mq_conf; see why with: journalctl -u mosquitto -n 50"
        fi
    fi
    systemctl enable --now outpost ||
        die "systemctl could not start outpost; see why with: journalctl -u outpost -n 50"
    if [[ $was_active == 1 ]]; then
        info "the agent was running: restarting it on the new binaries and packages"
        systemctl restart outpost || die "systemctl restart outpost failed; see why with: journalctl -u outpost -n 50"
    fi
    sleep 2
    systemctl is-active --quiet outpost ||
        die "the agent stopped right after starting; see why with: journalctl -u outpost -n 50"
    started=1
    info "outpost is running"
fi

echo
if [[ $started == 0 ]]; then
    if [[ $system == 0 ]]; then
        say "staged under $root (not started)"
        info "copy this tree onto the gateway's / (the config and unit name /etc/outpost,"
        info "/var/lib/outpost and /usr/local/bin), then on the gateway, as root:"
        info "useradd --system --user-group --home-dir /var/lib/outpost --shell /usr/sbin/nologin outpost"
        info "chown -R outpost:outpost /var/lib/outpost/state && chown root:outpost /etc/outpost/outpost.toml"
    elif [[ ! -d /run/systemd/system ]]; then
        say "installed; systemd is not running here, so start the agent by hand:"
        info "sudo -u outpost /usr/local/bin/outpost --config /etc/outpost/outpost.toml"
        info "or, on a host with systemd:"
    else
        say "installed (not started: --no-start); start it with:"
    fi
    info "systemctl daemon-reload && systemctl enable --now outpost"
    echo
fi

say "checking health (on the gateway, no internet needed)"
if [[ -n $status_addr ]]; then
    info "status page:    http://$status_addr/"
    info "health (JSON):  curl -s $status_addr/status        (\"state\": \"ready\" when up)"
    info "                curl -s $status_addr/healthz       (ok / degraded)"
    info "metrics:        curl -s $status_addr/metrics"
else
    info "the status page is off (no metrics.listen in $cfg)"
fi
if [[ $api_addr == 127.0.0.1:9465 ]]; then
    info "agent status:   outpostctl status"
elif [[ -n $api_addr ]]; then
    info "agent status:   outpostctl status --agent http://$api_addr"
fi
info "on the bus:     outpostctl watch 'outpost/$gw_id/status' --broker $broker_url --count 1 --timeout 5"
info "service output: outpostctl watch 'svc/#' --broker $broker_url --timeout 10"
info "logs:           journalctl -u outpost -f"
info "config:         /etc/outpost/outpost.toml (check edits with: outpost --check --config /etc/outpost/outpost.toml)"
