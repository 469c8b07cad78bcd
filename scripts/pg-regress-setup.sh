#!/usr/bin/env bash
# Fetch PostgreSQL's own regression suite for `make pg-regress` (not part of `make test`).
#
# The tests (src/test/regress: sql/, expected/, data/, the schedule) and the C module they
# load (regress.so) come from Debian's source package of the server that is installed, at the
# very same version, so that the suite matches the server. Nothing is installed or upgraded:
# apt reads a private list of deb-src entries (the system's sources and packages are left as
# they are), `apt-get source` fetches and unpacks the package (Debian's patches applied), and
# regress.so is built from it with the compiler that setup.sh installs (configured without
# readline, zlib, ICU or LLVM: regress.so needs none of them). Idempotent: a second run with
# the same server version does nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/build/pg-regress"
log() { printf '[pg-regress-setup] %s\n' "$*" >&2; }

version=$(dpkg-query -W -f='${Version}' postgresql-15 2>/dev/null || true)
if [ -z "$version" ]; then
  echo "postgresql-15 is not installed (run make setup first)" >&2
  exit 2
fi
src="$out/src-$version"
if [ -f "$src/src/test/regress/regress.so" ] && [ -f "$src/src/test/regress/refint.so" ]; then
  log "PostgreSQL $version regression suite ready in $src"
  exit 0
fi

apt_dir="$out/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$out/download"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# The same archives the system uses (see /etc/apt/sources.list.d/debian.sources), as deb-src.
cat >"$apt_dir/sources.list" <<EOF
deb-src [signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb-src [signed-by=$keyring] http://deb.debian.org/debian bookworm-updates main
deb-src [signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main
EOF
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=/nonexistent"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "DPkg::Lock::Timeout=900"
  -o "APT::Sandbox::User=root"
)
log "fetching the source package postgresql-15=$version"
apt-get "${apt_opts[@]}" -qq update
rm -rf "$src"
(cd "$out/download" && apt-get "${apt_opts[@]}" -qq source --download-only "postgresql-15=$version")
dsc=$(find "$out/download" -maxdepth 1 -name "postgresql-15_${version#*:}.dsc" | head -n1)
dpkg-source -x "$dsc" "$src" >/dev/null

log "building regress.so, refint.so, autoinc.so (configure, generated headers, three modules)"
(
  cd "$src"
  # (its warnings about bison and flex do not apply: the release tarball carries their output)
  ./configure -q --without-readline --without-zlib --without-icu --without-llvm \
    >"$out/configure.log" 2>&1 || { cat "$out/configure.log" >&2; exit 1; }
  make -s -C src/backend generated-headers >/dev/null
  make -s -C src/test/regress regress.so >/dev/null
  # the triggers test loads contrib/spi's refint and autoinc from the same directory
  make -s -C contrib/spi refint.so autoinc.so >/dev/null
  cp contrib/spi/refint.so contrib/spi/autoinc.so src/test/regress/
)
rm -rf "$out/download" "$out"/postgresql-15_*.orig.tar.*
log "PostgreSQL $version regression suite ready in $src"
