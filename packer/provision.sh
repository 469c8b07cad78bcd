#!/usr/bin/env bash
# Provision a Debian 12 runner image with the appliance (run as root by packer, or by hand).
#
# - installs the system packages (bcc, kernel headers, iptables, nftables) through the
#   project's own scripts/setup.sh logic, without the test-only servers;
# - installs the package into /opt/appliance/.venv (built from /usr/bin/python3 so that
#   Debian's python3-bpfcc is importable);
# - installs systemd/appliance.service and enables it (it starts before the runner service);
# - creates /etc/appliance with an example config; secrets are NOT part of the image.
set -euo pipefail
src=${APPLIANCE_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
dest=/opt/appliance

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-bpfcc bpfcc-tools bpftool iptables nftables iproute2 \
  "linux-headers-$(uname -r)" ca-certificates >/dev/null || \
apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-bpfcc bpfcc-tools bpftool iptables nftables iproute2 \
  linux-headers-amd64 ca-certificates >/dev/null

install -d -m 0755 "$dest"
cp -a "$src/appliance" "$src/bpf" "$src/pyproject.toml" "$src/README.md" "$dest/"
/usr/bin/python3 -m venv --system-site-packages "$dest/.venv"
"$dest/.venv/bin/pip" install -q "$dest"

install -D -m 0644 "$src/systemd/appliance.service" /etc/systemd/system/appliance.service
install -d -m 0750 /etc/appliance
# Secrets (systemd credentials, see the unit): the ledger key, targets' secrets, and the
# S3 credentials of ledger.ship / policy.approvals.hub (empty where the instance role is used).
install -d -m 0700 /etc/appliance/credentials /etc/appliance/credentials/targets \
  /etc/appliance/credentials/s3
if [ ! -e /etc/appliance/config.yaml ]; then
  install -m 0640 "$src/packer/config.example.yaml" /etc/appliance/config.yaml
fi
systemctl daemon-reload
systemctl enable appliance.service
echo "appliance installed in $dest; edit /etc/appliance/config.yaml and provide the credentials"
