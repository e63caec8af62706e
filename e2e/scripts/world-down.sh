#!/usr/bin/env bash
# Stops every process the e2e world started, by pid (the node first, the control plane last), and
# removes the node network.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for part in node pvesim nfsd endpoints control-plane; do
  [ -f "$HERE/$part-down.sh" ] && bash "$HERE/$part-down.sh"
done
bash "$HERE/node-net.sh" down
exit 0
