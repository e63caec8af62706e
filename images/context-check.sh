#!/usr/bin/env bash
# Every workspace member must be in the Docker build context each images/*.dockerignore admits:
# cargo loads the whole workspace inside an image build, so a member left out breaks all three.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import fnmatch, pathlib, re, sys

members = re.search(r"members\s*=\s*\[(.*?)\]", pathlib.Path("Cargo.toml").read_text(), re.S)
members = re.findall(r'"([^"]+)"', members.group(1))
failed = False
for ignore in sorted(pathlib.Path("images").glob("*.dockerignore")):
    rules = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]

    def admitted(path):
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule[1:] if negate else rule
            pattern = pattern.rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    for m in members:
        for f in (f"{m}/Cargo.toml", f"{m}/src/lib.rs" if pathlib.Path(m, "src/lib.rs").exists() else f"{m}/src/main.rs"):
            if not admitted(f):
                print(f"{ignore}: {f} is not in the build context (workspace member {m})")
                failed = True
sys.exit(1 if failed else 0)
PY
echo "[context-check] every workspace member is in each image's build context"
