#!/usr/bin/env bash
# Builds the kms-ha:dev, cometbft:dev and kms-ha-compose-init:dev images
# FROM scratch out of static binaries built here, so nothing is pulled from
# a registry (`make images`). The binaries are built with CGO_ENABLED=0:
# kms-ha:dev has no PKCS#11 support (see deploy/docker/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
OUT=${OUT:-build/docker}
TAG=${TAG:-dev}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
UID_=10001

rm -rf "$OUT"
mkdir -p "$OUT/bin"
echo "building static binaries (CGO_ENABLED=0) into $OUT/bin ..."
export CGO_ENABLED=0
$GO build -trimpath -ldflags "-X main.version=$VERSION" -o "$OUT/bin/kms-ha" ./cmd/kms-ha
$GO build -trimpath -o "$OUT/bin/cometbft" github.com/cometbft/cometbft/cmd/cometbft
$GO build -trimpath -o "$OUT/bin/compose-init" ./deploy/compose/init
for b in "$OUT"/bin/*; do
	if ! file "$b" 2>/dev/null | grep -q 'statically linked' && command -v file >/dev/null; then
		echo "$b is not statically linked" >&2
		exit 1
	fi
done

# One build context for the three targets (the legacy builder builds every
# stage before the target): root-IMAGE/ is owned by root in the image
# (/etc/passwd and group, the binaries, /tmp), user/ holds the directories
# owned by 10001, each copied by name.
CTX="$OUT/ctx"
mkdir -p "$CTX/user"
for d in /var/lib/kms-ha /cometbft /compose/node1 /compose/node2 /compose/node3 /compose/cometbft /compose/ca; do
	mkdir -p "$CTX/user$d"
	chmod 0700 "$CTX/user$d"
done
cp deploy/docker/scratch.Dockerfile "$CTX/Dockerfile"

# stage IMAGE BINARY...
stage() {
	local img=$1 root="$CTX/root-$1"
	shift
	mkdir -p "$root/etc" "$root/usr/local/bin" "$root/tmp"
	chmod 1777 "$root/tmp"
	printf 'root:x:0:0:root:/:/sbin/nologin\nkms-ha:x:%d:%d:kms-ha:/var/lib/kms-ha:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' $UID_ $UID_ >"$root/etc/passwd"
	printf 'root:x:0:\nkms-ha:x:%d:\nnogroup:x:65534:\n' $UID_ >"$root/etc/group"
	for b in "$@"; do
		install -m 0555 "$OUT/bin/$b" "$root/usr/local/bin/$b"
	done
}
stage kms-ha kms-ha
stage cometbft cometbft
stage kms-ha-compose-init kms-ha cometbft compose-init
for img in kms-ha cometbft kms-ha-compose-init; do
	echo "docker build $img:$TAG"
	docker build -q --target "$img" -t "$img:$TAG" --label "org.opencontainers.image.version=$VERSION" "$CTX" >/dev/null
done
docker images --filter "reference=*:$TAG" --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^(kms-ha|cometbft|kms-ha-compose-init):'
