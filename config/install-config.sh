#!/bin/sh
# meson install script: puts the example configuration (spoad.yaml and the lists it names) in
# $1 (<sysconfdir>/spoad) unless a spoad.yaml is already there, so that an upgrade never
# overwrites an operator's configuration. Honours DESTDIR like meson's own install steps.
set -eu
dest="${DESTDIR:-}$1"
src="$MESON_SOURCE_ROOT/config"
if [ -e "$dest/spoad.yaml" ]; then
  echo "spoad: keeping the existing $1/spoad.yaml"
  exit 0
fi
install -d "$dest/lists"
install -m 644 "$src/spoad.yaml" "$dest/spoad.yaml"
install -m 644 "$src"/lists/* "$dest/lists/"
echo "spoad: installed the example configuration in $1"
