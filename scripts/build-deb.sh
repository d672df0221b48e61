#!/usr/bin/env bash
# Build the Debian package from this checkout, with one command:
#
#   ./scripts/build-deb.sh [OUT_DIR]        # default OUT_DIR: target/debian
#
# It builds the release binary (cargo, honouring CARGO_TARGET_DIR), strips it,
# generates the man pages and shell completions from the binary itself
# (`blackpony man`, `blackpony completions`), and assembles the package tree
# with the files under packaging/ (config, systemd units, maintainer scripts,
# changelog, copyright). BLACKPONY_DEB_VERSION overrides the version (the
# package test builds a newer one to check upgrades). Prints the .deb's path.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
out="${1:-$target/debian}"
version="${BLACKPONY_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)}"
arch="$(dpkg --print-architecture)"

(cd "$repo" && cargo build --release --locked --quiet)
bin="$target/release/blackpony"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

# The binary, stripped of debug info (the release profile keeps it for
# profiling; the package does not ship it).
install -D -m 0755 "$bin" "$root/usr/bin/blackpony"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/blackpony"

# Man pages and completions from the clap definitions, so they match the
# flags of this very binary.
"$root/usr/bin/blackpony" man --out "$stage/man" >/dev/null
install -d "$root/usr/share/man/man8"
for page in "$stage"/man/*.8; do
  gzip -9n -c "$page" > "$root/usr/share/man/man8/$(basename "$page").gz"
done
"$root/usr/bin/blackpony" completions --out "$stage/completions" >/dev/null
install -D -m 0644 "$stage/completions/blackpony.bash" "$root/usr/share/bash-completion/completions/blackpony"
install -D -m 0644 "$stage/completions/_blackpony" "$root/usr/share/zsh/vendor-completions/_blackpony"
install -D -m 0644 "$stage/completions/blackpony.fish" "$root/usr/share/fish/vendor_completions.d/blackpony.fish"

# The config file (a conffile: dpkg keeps the operator's edits on upgrade).
install -D -m 0644 "$repo/packaging/etc/blackpony.toml" "$root/etc/blackpony/blackpony.toml"

# systemd units, one per role; none is enabled by the package.
install -d "$root/lib/systemd/system"
install -m 0644 "$repo"/packaging/systemd/blackpony-* "$root/lib/systemd/system/"

# Documentation.
doc="$root/usr/share/doc/blackpony"
install -D -m 0644 "$repo/packaging/debian/copyright" "$doc/copyright"
gzip -9n -c "$repo/packaging/debian/changelog" > "$doc/changelog.gz"
install -m 0644 "$repo/README.md" "$doc/"
install -d "$doc/docs"
cp -r "$repo"/docs/. "$doc/docs/"
find "$doc/docs" -type d -exec chmod 0755 {} + && find "$doc/docs" -type f -exec chmod 0644 {} +
cp -r "$repo/proto-spec" "$doc/proto-spec"
rm -rf "$doc/proto-spec/vectors"
find "$doc/proto-spec" -type d -exec chmod 0755 {} + && find "$doc/proto-spec" -type f -exec chmod 0644 {} +

# DEBIAN/: control with the shared-library dependencies dpkg-shlibdeps finds,
# the conffile list, maintainer scripts, checksums.
install -d -m 0755 "$root/DEBIAN"
mkdir -p "$stage/shlibs/debian"
printf 'Source: blackpony\n\nPackage: blackpony\nArchitecture: any\n' > "$stage/shlibs/debian/control"
shlibs="$(cd "$stage/shlibs" && dpkg-shlibdeps -O "$root/usr/bin/blackpony" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@SHLIBS@/$shlibs/" \
  "$repo/packaging/debian/control.in" > "$root/DEBIAN/control"
install -m 0644 "$repo/packaging/debian/conffiles" "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "$repo/packaging/debian/$script" "$root/DEBIAN/$script"
done
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/blackpony_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
