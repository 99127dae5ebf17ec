#!/usr/bin/env bash
# Installs systemd-analyze, which `go test ./deploy` runs to verify
# deploy/systemd/kms-ha.service. Debian ships it in the `systemd` package
# (the tool runs without systemd being PID 1). Idempotent: when
# systemd-analyze is on PATH it exits 0 without a word.
set -euo pipefail

if command -v systemd-analyze >/dev/null 2>&1; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-systemd-analyze: systemd-analyze not found and apt-get is unavailable; install systemd with your package manager" >&2
	exit 1
fi
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "install-systemd-analyze: not root and sudo is unavailable; run as root: apt-get install systemd" >&2
		exit 1
	fi
	sudo=(sudo)
fi
install() {
	echo "install-systemd-analyze: ${sudo[*]:+${sudo[*]} }apt-get install -y --no-install-recommends systemd"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd
}
echo "install-systemd-analyze: systemd-analyze not found; installing Debian package systemd"
if ! install; then
	echo "install-systemd-analyze: install failed; running apt-get update and retrying"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
	install
fi
command -v systemd-analyze >/dev/null 2>&1 || { echo "install-systemd-analyze: systemd installed but systemd-analyze is not on PATH" >&2; exit 1; }
