#!/bin/sh
# Regenerates the captured command outputs the agent's parsers are tested
# against. Needs root (network namespaces). Run from anywhere:
#   sudo tests/agent/capture-fixtures.sh
#
# ip-addr.json   `ip -j -4 addr show` in a namespace with the director's NIC
#                (ens3, 10.0.2.10/24, as in examples/qemu-lab.yaml).
# ipvsadm-Ln.txt `ipvsadm -Ln` with a virtual server as keepalived programs it
#                on a director: wrr, three control planes by direct routing.
#                Needs the ip_vs kernel module; where it is missing (this
#                workplace's containers) the existing file is kept: it is the
#                output recorded on a real LVS-DR director with three control planes.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

unshare -n sh -c '
  ip link set lo up
  ip link add ens3 type veth peer name peer0
  ip addr add 10.0.2.10/24 dev ens3
  ip link set ens3 up
  ip -j -4 addr show
' > "$here/ip-addr.json.new"
mv "$here/ip-addr.json.new" "$here/ip-addr.json"

if unshare -n sh -c '
  ipvsadm -A -t 10.10.197.101:6443 -s wrr &&
  ipvsadm -a -t 10.10.197.101:6443 -r 10.10.197.97:6443 -g -w 10 &&
  ipvsadm -a -t 10.10.197.101:6443 -r 10.10.197.98:6443 -g -w 10 &&
  ipvsadm -a -t 10.10.197.101:6443 -r 10.10.197.99:6443 -g -w 10 &&
  ipvsadm -Ln
' > "$here/ipvsadm-Ln.txt.new" 2>/dev/null; then
  mv "$here/ipvsadm-Ln.txt.new" "$here/ipvsadm-Ln.txt"
else
  rm -f "$here/ipvsadm-Ln.txt.new"
  echo "ip_vs is not available here: kept $here/ipvsadm-Ln.txt" >&2
fi
