#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian 12 machine (run as root).
#
# Installs the system packages the appliance, its lab and its tests need, makes bcc usable
# (kernel headers, tracefs), and builds .venv from /usr/bin/python3 (so that Debian's
# python3-bpfcc is importable) with the package and its test extras. A second run checks
# each step and does nothing that is already done.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh must run as root (it installs packages, mounts tracefs, builds network namespaces in tests)" >&2
  exit 2
fi

# --- apt ---------------------------------------------------------------------------------
APT_PACKAGES=(
  python3 python3-venv python3-dev python3-bpfcc bpfcc-tools
  build-essential
  iptables nftables iproute2 util-linux procps kmod bpftool
  postgresql postgresql-contrib postgresql-client pgbouncer
  mariadb-server mariadb-client sysbench libmariadb-dev pkg-config
  openssl ca-certificates curl tshark systemd shellcheck
  openssh-client openssh-sftp-server rsync
  nginx git awscli fcgiwrap python3-requests nghttp2-client
  debootstrap systemd-container
  chromium
  # the fleet's bucket in the lab: a one-node Ceph cluster with radosgw (tests/lab/ceph.py)
  ceph-mon ceph-osd radosgw ceph-common
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ]; then
  # The running kernel's own headers if the distribution has them, else the generic ones.
  if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
    hdr="linux-headers-$kver"
  else
    hdr="linux-headers-amd64"
  fi
  dpkg-query -W -f='${Status}' "$hdr" 2>/dev/null | grep -q "install ok installed" || missing+=("$hdr")
fi
# OpenSSH's server is for the lab's SSH target only: the tests start sshd themselves, with
# their own config, host keys and port, inside a target network namespace. A machine that
# has the package already (its own sshd) gets nothing installed and nothing touched; on one
# that has not, the package is installed without starting or enabling its service.
new_sshd=0
if ! dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q "install ok installed"; then
  missing+=(openssh-server)
  new_sshd=1
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # invoke-rc.d and deb-systemd-invoke ask policy-rc.d before starting a service: 101 says
  # no. One that is already there (container images have one) is left as it is.
  own_policy=0
  if [ "$new_sshd" = 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# appliance setup.sh: no service starts while it installs packages\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if [ "$new_sshd" = 1 ] && [ -d /run/systemd/system ]; then
    # The package enables ssh.service for the next boot; this machine did not run one.
    systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
  # Debian starts a cluster on install; the lab runs its own servers and needs none.
  if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
      pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
  fi
  systemctl disable --now pgbouncer >/dev/null 2>&1 || service pgbouncer stop >/dev/null 2>&1 || true
  # Likewise nginx and fcgiwrap: the lab starts its own from temporary directories, in its
  # target namespaces; the host serves nothing.
  for unit in nginx fcgiwrap.socket fcgiwrap; do
    systemctl disable --now "$unit" >/dev/null 2>&1 || service "${unit%.socket}" stop >/dev/null 2>&1 || true
  done
  # Likewise MariaDB: the lab starts its own servers from temporary data directories.
  systemctl disable --now mariadb >/dev/null 2>&1 || service mariadb stop >/dev/null 2>&1 || true
  update-rc.d mariadb disable >/dev/null 2>&1 || true
fi
# kubectl: the lab's Kubernetes tests need a client that speaks exec over WebSockets
# (v5.channel.k8s.io, kubectl 1.30 and later). Debian 12 packages only kubernetes-client
# 1.20 (SPDY only); the machine image brings kubectl 1.32. Without it those tests fail.
command -v kubectl >/dev/null 2>&1 || log "warning: no kubectl on this machine (Debian 12's kubernetes-client 1.20 cannot exec over WebSockets)"

# --- kernel headers for bcc ------------------------------------------------------------
if [ ! -e "/lib/modules/$kver/build" ]; then
  gen=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-amd64' 2>/dev/null | sort -V | tail -n1 || true)
  common=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-common' 2>/dev/null | sort -V | tail -n1 || true)
  if [ -n "$gen" ] && [ -n "$common" ]; then
    log "kernel headers: linking /lib/modules/$kver/{build,source} to $gen, $common"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$gen" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
  else
    log "warning: no kernel headers found; bcc will not compile BPF programs"
  fi
fi

# --- tracefs / bpffs ---------------------------------------------------------------------
if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then
  log "mounting tracefs at /sys/kernel/tracing"
  mount -t tracefs nodev /sys/kernel/tracing || log "warning: could not mount tracefs"
fi
if [ -d /sys/fs/bpf ] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf || log "warning: could not mount bpffs"
fi

# --- virtualenv --------------------------------------------------------------------------
# --system-site-packages: bcc is only packaged by Debian, for /usr/bin/python3.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
  log "creating .venv from /usr/bin/python3"
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.appliance-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "pip: installing appliance[test] into .venv"
  # constraints.txt: the versions the suite last passed with (pip's too), not the newest.
  .venv/bin/python -m pip install -q --upgrade -c constraints.txt pip >/dev/null
  if ! .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]' >.venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
# The hot path compiled with mypyc (scripts/compile.py: only when its sources changed; the
# pure-Python build is the same tree with APPLIANCE_PURE=1).
if ! .venv/bin/python scripts/compile.py >.venv/compile.log 2>&1; then
  cat .venv/compile.log >&2
  exit 1
fi
# What the daemon will say at start (appliance.start's hot_path); not compiled here means
# the benchmarks and the lab run the pure-Python build (about twice the CPU a statement).
version=$(env -u APPLIANCE_PURE .venv/bin/appliance --version 2>&1) || true
if [[ "$version" != *"(hot path: compiled)" ]]; then
  log "warning: the hot path is not compiled: $version (see .venv/compile.log)"
fi
.venv/bin/python -c 'import bcc' 2>/dev/null || log "warning: 'import bcc' fails in .venv"
log "ready"
