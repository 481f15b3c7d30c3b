#!/usr/bin/env bash
# One file of a pinned npm package, checked against its SHA-256, copied to DEST (the docs' vendored
# scripts, `make docs-assets`): npm-vendor.sh PACKAGE VERSION FILE_IN_TARBALL SHA256 DEST
set -euo pipefail
package=$1 version=$2 member=$3 sha256=$4 dest=$5
if ! command -v npm >/dev/null; then
    echo "make docs needs npm (Debian: apt-get install npm) to fetch $package $version for the site" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$package@$version" >/dev/null && tar xzf "$package-$version.tgz" "$member")
if ! echo "$sha256  $tmp/$member" | sha256sum --check --quiet; then
    echo "$package $version: $member does not have the pinned SHA-256 $sha256" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
cp "$tmp/$member" "$dest.tmp" && mv "$dest.tmp" "$dest"
