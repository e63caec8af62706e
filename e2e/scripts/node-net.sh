#!/usr/bin/env bash
# The e2e world's node network: a network namespace for the real node (containerd, kubelet, kube-proxy and
# every pod), joined to the host by one veth pair, and the gateway through which pods reach the world's
# loopback servers.
#
#   host  vrg-gw   10.250.255.1/30  (HOST_IP, the gateway)      route 10.244.0.0/24 via 10.250.255.2
#   netns vrg-node 10.250.255.2/30  (NODE_IP, the node's InternalIP), bridge vrg-cni0 10.244.0.1/24 (made
#         by the CNI bridge plugin) with the pods behind it; no default route: the only address beyond
#         the netns is the gateway's (kube-proxy turns the kubernetes Service's address into it)
#
# The world's servers (apiserver, libvirtd, S3, nginx, sshd, the Proxmox simulator) listen on 127.0.0.1
# only; for each of their ports a socat on HOST_IP forwards to it, so pods connect to HOST_IP:<port> and
# nothing listens on any other address. vcsim listens on HOST_IP itself (the lease URLs it hands out
# name its listen address). No traffic leaves for any other address: the
# netns has no route beyond the veth's /30 (a pod's DNS query or an image pull fails at once).
#
#   node-net.sh up | down | status        (sourced by the other scripts for the names and addresses)
set -euo pipefail

NODE_NETNS=vrg-node
HOST_IF=vrg-gw
NODE_IF=vrg-node0
HOST_IP=10.250.255.1
NODE_IP=10.250.255.2
NET_PREFIX=30
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
APISERVER_PORT=6443
# apiserver, libvirtd, S3, HTTP, HTTPS, sshd, Proxmox simulator, NFS (portmapper, NFS, MOUNT); vcsim
# listens on HOST_IP itself
GATEWAY_PORTS=${E2E_GATEWAY_PORTS:-"$APISERVER_PORT 16509 9000 8088 8443 2222 8006 111 2049 20048"}

net_exists() { [ -e "/run/netns/$NODE_NETNS" ] && ip link show "$HOST_IF" >/dev/null 2>&1; }

net_say() { printf '[node-net] %s\n' "$*" >&2; }

net_up() {
  if ! net_exists; then
    ip netns del "$NODE_NETNS" 2>/dev/null || true
    ip link del "$HOST_IF" 2>/dev/null || true
    ip netns add "$NODE_NETNS"
    ip link add "$HOST_IF" type veth peer name "$NODE_IF"
    ip link set "$NODE_IF" netns "$NODE_NETNS"
    ip addr add "$HOST_IP/$NET_PREFIX" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    ip -n "$NODE_NETNS" addr add "$NODE_IP/$NET_PREFIX" dev "$NODE_IF"
    ip -n "$NODE_NETNS" link set lo up
    ip -n "$NODE_NETNS" link set "$NODE_IF" up
    ip netns exec "$NODE_NETNS" sysctl -q -w net.ipv4.ip_forward=1
    net_say "netns $NODE_NETNS ($NODE_IP) joined to the host at $HOST_IP"
  fi
  ip route replace "$POD_CIDR" via "$NODE_IP" dev "$HOST_IF"
  gateway_up
}

gateway_pidfile() { echo "${E2E_WORLD:?}/pids/gateway-$1.pid"; }

gateway_up() {
  mkdir -p "$E2E_WORLD/pids" "$E2E_WORLD/logs"
  local port pid
  for port in $GATEWAY_PORTS; do
    pid=$(cat "$(gateway_pidfile "$port")" 2>/dev/null || true)
    if [ -n "$pid" ] && [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)" 2>/dev/null)" = socat ]; then
      continue
    fi
    setsid socat "TCP-LISTEN:$port,bind=$HOST_IP,reuseaddr,fork" "TCP:127.0.0.1:$port" \
      >>"$E2E_WORLD/logs/gateway.log" 2>&1 </dev/null &
    echo $! >"$(gateway_pidfile "$port")"
  done
  net_say "gateway $HOST_IP forwards ports $GATEWAY_PORTS to 127.0.0.1"
}

net_down() {
  local port pid
  for port in $GATEWAY_PORTS; do
    pid=$(cat "$(gateway_pidfile "$port")" 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -f "$(gateway_pidfile "$port")"
  done
  ip route del "$POD_CIDR" 2>/dev/null || true
  ip link del "$HOST_IF" 2>/dev/null || true
  ip netns del "$NODE_NETNS" 2>/dev/null || true
  net_say "netns $NODE_NETNS and the gateway removed"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  export E2E_WORLD=${E2E_WORLD:-$(cd "$HERE/.." && pwd)/.world}
  [ "$(id -u)" = 0 ] || { net_say "ERROR: run as root"; exit 1; }
  case ${1:-} in
    up) net_up ;;
    down) net_down ;;
    status) net_exists && echo "up: netns $NODE_NETNS $NODE_IP, gateway $HOST_IP" || { echo down; exit 1; } ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
  esac
fi
