#!/usr/bin/env bash
# Copies the `nft` command and every shared library it loads into DEST, laid
# out as under /, for the orchestrator's `FROM scratch` image: the service
# installs its egress rules with it (docs/egress.md).
#
#   tests/compose/nft-root.sh DEST
set -euo pipefail
dest=${1:?usage: nft-root.sh DEST}
nft=$(command -v nft) || { echo "nft-root.sh: no nft here (apt-get install nftables)" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest/usr/sbin"
cp -L "$nft" "$dest/usr/sbin/nft"
# `ldd` lines: "libx.so => /lib/.../libx.so (0x...)" and the loader's
# "/lib64/ld-linux-x86-64.so.2 (0x...)".
ldd "$nft" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r library; do
        mkdir -p "$dest$(dirname "$library")"
        cp -L "$library" "$dest$library"
    done
"$dest/usr/sbin/nft" --version >/dev/null
