#!/usr/bin/env bash
# Sets up everything kernmesh needs on a Debian 12 machine with Node 20, as root, and builds it.
# Idempotent: installs only what is missing, mounts bpffs only if absent, rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "[setup] kernmesh loads BPF programs and needs root; run this as root" >&2
  exit 1
fi

# Debian packages: the BPF toolchain, libbpf for the addon, iproute2 for network-namespace tests,
# nftables for the outlier tests' dropping rules (inside their own network namespace),
# prometheus (promtool checks the metrics exposition; the server evaluates the dashboards' queries),
# openssl for the TLS test CA, tshark to read back what kernmesh capture writes,
# kubectl with kustomize (package kubernetes-client) to render deploy/kubernetes offline, and
# util-linux's setpriv to run the agent with only the capabilities the DaemonSet grants.
pkgs=(clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev linux-libc-dev pkg-config make g++ python3 iproute2 nftables prometheus openssl tshark kubernetes-client util-linux)
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
# Another package may own /usr/bin/kubectl (a cloud SDK's); then Debian's is unpacked under .tools/
# instead of installed, and the tests use it from there.
kubectl_owner=$(dpkg-query -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1 || true)
missing=()
for p in "${pkgs[@]}"; do
  if [ "$p" = kubernetes-client ] && [ -n "$kubectl_owner" ] && [ "$kubectl_owner" != kubernetes-client ]; then
    continue
  fi
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark's package asks whether non-root users may capture: no (kernmesh capture needs no dumpcap).
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -n "$kubectl_owner" ] && [ "$kubectl_owner" != kubernetes-client ] && [ ! -x .tools/kubernetes-client/usr/bin/kubectl ]; then
  say "unpacking Debian's kubernetes-client into .tools/ (/usr/bin/kubectl belongs to $kubectl_owner)"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq kubernetes-client >/dev/null 2>&1 || { apt-get update -qq && apt-get download -qq kubernetes-client; })
  mkdir -p .tools/kubernetes-client
  dpkg-deb -x "$tmp"/kubernetes-client_*.deb .tools/kubernetes-client
  rm -rf "$tmp"
fi

# Pinned maps and links live on bpffs; some machines boot without it mounted.
if ! awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { found = 1 } END { exit !found }' /proc/mounts; then
  say "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# npm ci only when the lock file changed since the last install.
stamp=node_modules/.kernmesh-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

say "building BPF programs, the native addon and TypeScript"
npm run --silent build:bpf >/dev/null
if [ ! -f native/build/Release/kernmesh_native.node ] || [ -n "$(find native/src native/binding.gyp -newer native/build/Release/kernmesh_native.node 2>/dev/null)" ]; then
  npm run --silent build:native >/dev/null
fi
npm run --silent build:ts
say "ready"
