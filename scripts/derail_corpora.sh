#!/usr/bin/env bash
# Rebuilds the two extra corpora of docs/derailing.md (prose and C source) from Debian packages,
# outside the repository: kjv.txt (King James Bible, 2.0 MB) and linux_c.txt (Linux UAPI headers, 2.0 MB).
# Needs root for apt-get; usage: scripts/derail_corpora.sh [OUT_DIR]   (default /work/corpora)
set -euo pipefail
out=${1:-/work/corpora}
mkdir -p "$out"
apt-get install -y -qq bible-kjv bible-kjv-text linux-libc-dev >/dev/null
# One verse a line, without its "Ge1:1 " reference.
# (whole texts first, then cut: head closing a pipe early would stop the script under pipefail)
bible -f 'Gen1:1-Rev22:21' 2>/dev/null | sed -E 's/^[0-9A-Za-z]+[0-9]+:[0-9]+ //' > "$out/kjv.full"
find /usr/include/linux -name '*.h' -print0 | LC_ALL=C sort -z | xargs -0 cat > "$out/linux_c.full"
head -c 2000000 "$out/kjv.full" > "$out/kjv.txt"
head -c 2000000 "$out/linux_c.full" > "$out/linux_c.txt"
rm "$out/kjv.full" "$out/linux_c.full"
wc -c "$out/kjv.txt" "$out/linux_c.txt"
