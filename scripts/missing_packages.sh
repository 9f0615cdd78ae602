#!/usr/bin/env bash
# The apt packages listed in the given file (packages.txt: one per line, '#' comments) that are not
# installed, one per line. The one reader of packages.txt for setup.sh and space_check.sh.
set -euo pipefail
while read -r pkg; do
  pkg="${pkg%%#*}"; pkg="${pkg// /}"
  [ -n "$pkg" ] || continue
  dpkg -s "$pkg" >/dev/null 2>&1 || echo "$pkg"
done < "$1"
