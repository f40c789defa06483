#!/usr/bin/env bash
# More texts for the planner's comparisons (docs/planner.md), built from Debian packages outside
# the repository: fortunes.txt (fortune-cookie quotes, 500 KB, a small text), python.txt (Python's
# standard library source, 4.0 MB, a larger one) and changelogs.txt (the first 300,000 bytes of the
# Debian changelogs of the packages installed, in path order: release notes, names and dates; it
# depends on what is installed). With scripts/derail_corpora.sh's kjv.txt and linux_c.txt.
# Needs root for apt-get; usage: scripts/more_corpora.sh [OUT_DIR]   (default /work/corpora)
set -euo pipefail
out=${1:-/work/corpora}
mkdir -p "$out"
apt-get install -y -qq fortunes python3.11-minimal libpython3.11-stdlib >/dev/null
python3 - "$out" <<'PY'
import glob, gzip, os, random, re, sys
out = sys.argv[1]
# Quotes are separated by "%" lines; shuffled with a fixed seed so the validation split (the last
# 10 %) is drawn from every file, not from the last files of the alphabet. Overstrikes removed.
quotes = []
for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
    if path.endswith((".dat", ".u8")) or os.path.islink(path) or not os.path.isfile(path):
        continue
    text = open(path, encoding="latin-1").read()
    text = re.sub(r".\x08", "", text)  # "_\bX" overstrike: keep the character
    quotes += [q.strip("\n") for q in text.split("\n%\n") if q.strip()]
random.Random(0).shuffle(quotes)
text = "\n%\n".join(quotes)[:500_000]
open(os.path.join(out, "fortunes.txt"), "w", encoding="utf-8").write(text[:text.rindex("\n%\n")] + "\n")
# The standard library's top-level modules in name order, cut to 4,000,000 characters.
source = "".join(open(p, encoding="utf-8", errors="replace").read()
                 for p in sorted(glob.glob("/usr/lib/python3.11/*.py")))
open(os.path.join(out, "python.txt"), "w", encoding="utf-8").write(source[:4_000_000])
# The first 300,000 bytes of every installed package's Debian changelog, in path order.
logs = b""
for path in sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz")):
    logs += gzip.open(path).read()
    if len(logs) >= 300_000:
        break
open(os.path.join(out, "changelogs.txt"), "wb").write(logs[:300_000])
PY
wc -c "$out/fortunes.txt" "$out/python.txt" "$out/changelogs.txt"
