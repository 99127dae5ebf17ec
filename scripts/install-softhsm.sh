#!/usr/bin/env bash
# Installs SoftHSM2, the software PKCS#11 token that keys/pkcs11's tests (and
# the e2e tests that exercise the pkcs11 backend) run against. Idempotent:
# when libsofthsm2.so is already present it exits 0 without a word, so `make`
# targets and CI can call it unconditionally.
set -euo pipefail

# Keep this list in step with pkcs11test.ModuleCandidates.
candidates=(
	/usr/lib/softhsm/libsofthsm2.so
	/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so
	/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so
	/usr/lib64/pkcs11/libsofthsm2.so
	/usr/lib/pkcs11/libsofthsm2.so
	/usr/local/lib/softhsm/libsofthsm2.so
	/opt/homebrew/lib/softhsm/libsofthsm2.so
	/usr/local/opt/softhsm/lib/softhsm/libsofthsm2.so
)

if [[ -n "${SOFTHSM2_MODULE:-}" && -f "${SOFTHSM2_MODULE}" ]]; then
	exit 0
fi
for m in "${candidates[@]}"; do
	if [[ -f "$m" ]]; then
		exit 0
	fi
done

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-softhsm: libsofthsm2.so not found and apt-get is unavailable;" >&2
	echo "install-softhsm: install SoftHSM2 with your package manager (e.g. 'brew install softhsm', 'dnf install softhsm')" >&2
	echo "install-softhsm: or set SOFTHSM2_MODULE to the path of libsofthsm2.so" >&2
	exit 1
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
	if ! command -v sudo >/dev/null 2>&1; then
		echo "install-softhsm: not root and sudo is unavailable; run as root: apt-get install softhsm2" >&2
		exit 1
	fi
	sudo=(sudo)
fi

install() {
	echo "install-softhsm: ${sudo[*]:+${sudo[*]} }apt-get install -y --no-install-recommends softhsm2"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends softhsm2
}

echo "install-softhsm: libsofthsm2.so not found; installing Debian package softhsm2"
if ! install; then
	# A fresh container usually has empty package lists; refresh only then,
	# so the common path does not touch the network twice.
	echo "install-softhsm: install failed; running apt-get update and retrying"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
	install
fi

for m in "${candidates[@]}"; do
	if [[ -f "$m" ]]; then
		echo "install-softhsm: SoftHSM2 module at $m"
		exit 0
	fi
done
echo "install-softhsm: softhsm2 installed but libsofthsm2.so is in none of the known locations" >&2
exit 1
