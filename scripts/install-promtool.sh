#!/usr/bin/env bash
# Installs promtool, which `go test ./deploy` runs to check and unit-test
# deploy/prometheus/kms-ha.rules.yml. Debian ships it in the `prometheus`
# package. Idempotent: when promtool is already on PATH it exits 0 without
# a word, so `make` targets and CI can call it unconditionally.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-promtool: promtool not found and apt-get is unavailable;" >&2
	echo "install-promtool: install Prometheus's promtool with your package manager (e.g. 'brew install prometheus', 'dnf install golang-github-prometheus')" >&2
	exit 1
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "install-promtool: not root and sudo is unavailable; run as root: apt-get install prometheus" >&2
		exit 1
	fi
	sudo=(sudo)
fi

install() {
	echo "install-promtool: ${sudo[*]:+${sudo[*]} }apt-get install -y --no-install-recommends prometheus"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends prometheus
}

echo "install-promtool: promtool not found; installing Debian package prometheus"
if ! install; then
	# A fresh container usually has empty package lists; refresh only then.
	echo "install-promtool: install failed; running apt-get update and retrying"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
	install
fi

# The package starts a Prometheus server where an init system runs; the
# project needs only the tool.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
	"${sudo[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

if ! command -v promtool >/dev/null 2>&1; then
	echo "install-promtool: prometheus installed but promtool is not on PATH" >&2
	exit 1
fi
echo "install-promtool: $(command -v promtool)"
