#!/usr/bin/env bash
# Provision a Debian 12 runner image with the appliance (run as root by packer, or by hand;
# tests/image/test_provision.py runs it in a debootstrapped root and boots the result).
#
# - installs the system packages (bcc, kernel headers, iptables, nftables) through the
#   project's own scripts/setup.sh logic, without the test-only servers;
# - installs the package into /opt/appliance/.venv (built from /usr/bin/python3 so that
#   Debian's python3-bpfcc is importable), and compiles its hot path with mypyc
#   (scripts/compile.py, as make setup does): the pure-Python build spends about twice the
#   CPU per statement. Provisioning fails if the compiled build is not what imports;
# - installs systemd/appliance.service and enables it (it starts before the runner service);
# - creates /etc/appliance with an example config; secrets are NOT part of the image;
# - creates the user CI jobs run as (RUNNER_USER, default "runner"): no password, no sudo,
#   in no group that is root by another name (sudo, docker, disk...), and checks it;
# - keeps unprivileged users away from BPF (kernel.unprivileged_bpf_disabled=1).
#
# The threat model (README, "Security"): the appliance holds against an unprivileged job. A
# job with root, CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN or CAP_SYS_PTRACE can undo it, so
# the runner service must start its jobs as RUNNER_USER (e.g. GitHub's runner:
# `./config.sh ...` then `./svc.sh install runner`). No sudo is left to the job user:
# package installs (apt-get) run maintainer scripts as root, and network administration is
# what the appliance must keep from jobs; jobs that need packages get them in the image.
set -euo pipefail
src=${APPLIANCE_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
dest=/opt/appliance
runner_user=${RUNNER_USER:-runner}

export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=900 update -qq
# gcc, libc6-dev, python3-dev: mypyc compiles the hot path here (below).
packages=(python3 python3-venv python3-bpfcc bpfcc-tools bpftool iptables nftables iproute2
  ca-certificates gcc libc6-dev python3-dev)
apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
  "${packages[@]}" "linux-headers-$(uname -r)" >/dev/null 2>&1 || \
apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends \
  "${packages[@]}" linux-headers-amd64 >/dev/null

install -d -m 0755 "$dest"
cp -a "$src/appliance" "$src/bpf" "$src/pyproject.toml" "$src/README.md" "$dest/"
/usr/bin/python3 -m venv --system-site-packages "$dest/.venv"
# Editable: the package runs from $dest, where bpf/*.c (loaded by bcc at start) sits beside
# it; a plain install would copy the package alone into site-packages and attribution would
# not find its programs (tests/image/test_provision.py caught that). constraints.txt: the
# versions the suite last passed with.
"$dest/.venv/bin/pip" install -q -c "$src/constraints.txt" -e "$dest"

# The hot path compiled in place (an extension beside each hot module; extensions copied
# from the source tree are removed first, they may be of other sources). mypy (with mypyc)
# and the stubs it checks against are needed for the build only, and removed after it.
install -d -m 0755 "$dest/scripts"
install -m 0644 "$src/scripts/compile.py" "$dest/scripts/compile.py"
"$dest/.venv/bin/pip" install -q -c "$src/constraints.txt" mypy types-PyYAML
"$dest/.venv/bin/python" "$dest/scripts/compile.py" --clean
if ! "$dest/.venv/bin/python" "$dest/scripts/compile.py" >"$dest/build-compile.log" 2>&1; then
  cat "$dest/build-compile.log" >&2
  echo "provision: compiling the hot path failed (log above)" >&2
  exit 1
fi
rm -rf "$dest/build/mypyc-temp" "$dest/build-compile.log"
"$dest/.venv/bin/pip" uninstall -q -y mypy types-PyYAML
# The package's bytecode, written once here: the unit runs with PYTHONDONTWRITEBYTECODE=1
# on a read-only /opt (ProtectSystem=strict), so every start would compile its sources
# again (the daemon's imports: 0.41-0.47 s instead of 0.30-0.32 on the dev VM).
"$dest/.venv/bin/python" -m compileall -q "$dest/appliance" >/dev/null
# What the daemon will say at start (appliance.start's hot_path): the compiled build.
version=$(env -u APPLIANCE_PURE "$dest/.venv/bin/appliance" --version 2>&1) || true
if [[ "$version" != *"(hot path: compiled)" ]]; then
  echo "provision: the hot path does not run compiled: $version" >&2
  exit 1
fi

install -D -m 0644 "$src/systemd/appliance.service" /etc/systemd/system/appliance.service
install -d -m 0750 /etc/appliance
# Secrets (systemd credentials, see the unit): the ledger key, targets' secrets, and the
# S3 credentials of ledger.ship / policy.approvals.hub (empty where the instance role is used).
install -d -m 0700 /etc/appliance/credentials /etc/appliance/credentials/targets \
  /etc/appliance/credentials/s3
if [ ! -e /etc/appliance/config.yaml ]; then
  install -m 0640 "$src/packer/config.example.yaml" /etc/appliance/config.yaml
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
systemctl enable appliance.service

# --- the job user: unprivileged, no sudo ----------------------------------------------
if ! id -u "$runner_user" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash --user-group "$runner_user"
fi
passwd -l "$runner_user" >/dev/null
for group in sudo admin wheel docker lxd disk adm systemd-journal; do
  if getent group "$group" >/dev/null && id -nG "$runner_user" | tr ' ' '\n' | grep -qx "$group"; then
    gpasswd -d "$runner_user" "$group" >/dev/null
  fi
done
if command -v sudo >/dev/null 2>&1; then
  install -m 0440 /dev/stdin /etc/sudoers.d/00-appliance-runner <<EOF
# appliance: CI jobs run as $runner_user, which may not use sudo (see packer/provision.sh).
# A rule for $runner_user in another file would undo this; provisioning checks none exists.
EOF
  if sudo -n -l -U "$runner_user" 2>/dev/null | grep -q "may run the following commands"; then
    echo "provision: $runner_user may still use sudo:" >&2
    sudo -n -l -U "$runner_user" >&2
    exit 1
  fi
fi

# --- the kernel: no BPF for unprivileged users (applied at boot by systemd-sysctl) --------
install -m 0644 /dev/stdin /etc/sysctl.d/60-appliance.conf <<'EOF'
# appliance: unprivileged users load no BPF programs (1: not even root can turn it back on
# until reboot). The appliance itself runs with CAP_BPF.
kernel.unprivileged_bpf_disabled = 1
EOF

echo "appliance installed in $dest; jobs run as $runner_user (no sudo);" \
  "edit /etc/appliance/config.yaml and provide the credentials"
