#!/usr/bin/env bash
# Install what shadowbox-rig and its virtual lab need on a fresh Debian 12 machine.
# Run again, it only checks (dpkg-query, pip's stamp) and returns in a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(
  qemu-system-x86 qemu-utils          # the virtual laptops
  linux-image-amd64 linux-headers-amd64  # guest kernel + headers of the same version (sbsim build)
  busybox-static dropbear-bin openssh-sftp-server  # the guest's userland, SSH and SFTP
  openssh-server openssh-client       # a real OpenSSH peer for the SSH tests
  ser2net socat                       # the console server path: QEMU serial -> pty -> ser2net
  ipmitool openipmi                   # IPMI peers: ipmitool client, ipmi_sim BMC
  snmpd snmp                          # the virtual PDU (snmpd, APC outlet OID) and net-snmp's snmpset/snmpget (labgrid's apc)
  cpio kmod zstd xz-utils gzip        # building the initramfs (kmod: depmod for fetched kernels)
  gpgv debian-archive-keyring dpkg    # fetching Debian 11's 5.10 kernel: verify the signed index, unpack .debs
  gpg                                 # tests only: throw-away signing keys for the fetcher's signature tests
  make gcc python3-venv python3-dev git
  chromium                            # headless browser: the HTML report tests open pages from disk
)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The guest kernel and its headers must be the same version, or sbsim will not load.
img=$(dpkg-query -W -f='${Depends}' linux-image-amd64 | grep -o 'linux-image-[^ ,]*' | head -1)
hdr=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 | grep -o 'linux-headers-[^ ,]*' | head -1)
if [ "${img#linux-image-}" != "${hdr#linux-headers-}" ]; then
  echo "bootstrap: $img and $hdr differ; run: apt-get install linux-image-amd64 linux-headers-amd64" >&2
  exit 1
fi

# Python side: a venv in .venv with the rig installed editable, re-done when pyproject.toml changes.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  # The rig depends on labgrid's pyserial fork (see pyproject.toml). A venv made before that change
  # also holds upstream pyserial, and both own the same `serial` files: remove pyserial, then put the
  # fork's files back (uninstalling pyserial deleted them).
  if .venv/bin/pip show -q pyserial >/dev/null 2>&1; then
    .venv/bin/pip uninstall -q -y pyserial
    .venv/bin/pip install -q --force-reinstall --no-deps pyserial-labgrid
  fi
  touch .venv/.installed
fi

# A second lab kernel: Debian 11's 5.10 (image, headers, kbuild) fetched from Debian's signed archive
# into ~/.cache/shadowbox-rig/kernels (never installed into /, bullseye is NOT added to apt's sources).
# Silent and instant when cached; set RIG_SKIP_KERNEL_FETCH=1 to skip it (the lab then offers 6.1 only).
if [ -z "${RIG_SKIP_KERNEL_FETCH:-}" ]; then
  .venv/bin/python -m rig.lab.kernels 5.10
fi
