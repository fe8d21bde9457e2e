#!/usr/bin/env bash
# fresh_copy.sh DEST: the files CI would check out (tracked + untracked-not-ignored) plus the
# committed reference tables, without results/ or .snakemake/ (a clean study tree).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
dest=$1
mkdir -p "$dest"
cd "$src"
git ls-files -co --exclude-standard -z | grep -zv -e '^results/' -e '^\.snakemake/' \
    | xargs -0 -I{} cp --parents -p {} "$dest"/ 2>/dev/null || true
mkdir -p "$dest/results"
cp -rp results/reference "$dest/results/"
[ -f results/README.md ] && cp -p results/README.md "$dest/results/"
echo "$dest"
