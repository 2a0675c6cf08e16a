#!/usr/bin/env bash
# Generate what the Debian package ships besides the binary: man pages (gzipped) and shell
# completions, from the clap definitions of target/release/colo-proxy, into
# target/package-assets/ (the paths [package.metadata.deb] names).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/colo-proxy}
out=target/package-assets
rm -rf "$out"
"$bin" gen-man "$out/man" >/dev/null
gzip -9n "$out"/man/*.1
"$bin" gen-completions "$out/completions" >/dev/null
