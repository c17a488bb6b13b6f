#!/usr/bin/env python3
"""Writes the bad cluster files of piha's validation corpus.

Each case is the small valid cluster below with one thing broken (a few break
several things at once). Every file starts with one `# expect: ...` line per
message `piha validate` must print for it; tests/validate_corpus.rs runs the
real binary on each file and checks them. Edit the table here, then run
`python3 tests/bad-clusters/generate.py` and commit the result.
"""

import pathlib

HERE = pathlib.Path(__file__).resolve().parent

BASE = """\
name: corpus
distro: debian-bookworm
kubernetes:
  version: "1.34.1"
  runtime: containerd
  pod_subnet: 10.244.0.0/16
  service_subnet: 10.96.0.0/12
  proxy_mode: nftables
  key_algorithm: rsa-2048
api:
  vip: 192.168.50.100
  port: 6443
  mode: lvs-dr
  vrrp_router_id: 51
network:
  prefix: 24
  gateway: 192.168.50.1
  dns: [192.168.50.1]
  ntp: [pool.ntp.org]
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q admin@laptop
nodes:
  - name: lb1
    board: amd64
    role: director
    ip: 192.168.50.10
  - name: cp1
    board: rpi4
    role: control-plane
    ip: 192.168.50.11
    init: true
  - name: w1
    board: rpi4
    role: worker
    ip: 192.168.50.21
"""

CP2 = """  - name: cp2
    board: rpi4
    role: control-plane
    ip: 192.168.50.12
"""

W1 = """  - name: w1
    board: rpi4
    role: worker
    ip: 192.168.50.21
"""

# (file name, [expected substrings], [(old, new), ...]); each `old` must occur exactly once.
CASES = [
    ("invalid-ip", ["nodes[1].ip: invalid IPv4 address syntax"], [("ip: 192.168.50.11", "ip: 192.168.50.300")]),
    ("duplicate-ip", ["nodes[2].ip: 192.168.50.11 is also the address of nodes[1] (cp1)"], [("ip: 192.168.50.21", "ip: 192.168.50.11")]),
    ("vip-is-node-ip", ["nodes[2].ip: 192.168.50.21 is the VIP (api.vip)"], [("vip: 192.168.50.100", "vip: 192.168.50.21")]),
    ("vip-outside-subnet", ["api.vip: 192.168.60.100 is outside the node subnet 192.168.50.0/24"], [("vip: 192.168.50.100", "vip: 192.168.60.100")]),
    ("node-outside-subnet", ["nodes[2].ip: 192.168.51.21 is outside the node subnet 192.168.50.0/24"], [("ip: 192.168.50.21", "ip: 192.168.51.21")]),
    ("gateway-outside-subnet", ["network.gateway: 10.0.0.1 is outside the node subnet"], [("gateway: 192.168.50.1", "gateway: 10.0.0.1")]),
    ("vip-broadcast", ["api.vip: 192.168.50.255 is the broadcast address of 192.168.50.0/24"], [("vip: 192.168.50.100", "vip: 192.168.50.255")]),
    ("node-network-address", ["nodes[2].ip: 192.168.50.0 is the network address of 192.168.50.0/24"], [("ip: 192.168.50.21", "ip: 192.168.50.0")]),
    ("vip-is-gateway", ["api.vip: 192.168.50.1 is the gateway (network.gateway)"], [("vip: 192.168.50.100", "vip: 192.168.50.1")]),
    ("cluster-name-uppercase", ["name: cluster name `HomeLab` is not an RFC 1123 label"], [("name: corpus", "name: HomeLab")]),
    ("node-name-underscore", ["nodes[1].name: node name `cp_1` is not an RFC 1123 label"], [("name: cp1", "name: cp_1")]),
    ("node-name-too-long", ["nodes[2].name: node name `" + "w" * 64 + "` is not an RFC 1123 label: it is 64 characters long"], [("name: w1", "name: " + "w" * 64)]),
    ("node-name-trailing-dash", ["nodes[0].name: node name `lb-` is not an RFC 1123 label: it starts or ends with '-'"], [("name: lb1", "name: lb-")]),
    ("duplicate-name", ["nodes[2].name: `cp1` is also the name of nodes[1]"], [("name: w1", "name: cp1")]),
    ("no-control-plane", ["nodes: no node has role: control-plane"], [("role: control-plane\n    ip: 192.168.50.11\n    init: true", "role: worker\n    ip: 192.168.50.11")]),
    ("two-init", ["nodes[2].init: nodes[1] (cp1) is already the init control plane"], [(W1, CP2 + "    init: true\n" + W1)]),
    ("init-on-worker", ["nodes[2].init: init: true on a worker node"], [("ip: 192.168.50.21", "ip: 192.168.50.21\n    init: true")]),
    ("init-on-director", ["nodes[0].init: init: true on a director node"], [("    ip: 192.168.50.10\n", "    ip: 192.168.50.10\n    init: true\n")]),
    ("no-director", ["api.mode: lvs-dr needs one or two nodes with role: director"], [("role: director", "role: worker")]),
    ("three-directors", ["api.mode: lvs-dr supports one or two directors (a VRRP pair), found 3: lb1, lb2, lb3"],
     [(W1, W1 + "".join(f"  - name: lb{i}\n    board: amd64\n    role: director\n    ip: 192.168.50.{i + 30}\n" for i in (2, 3)))]),
    ("pod-overlaps-service", ["kubernetes.service_subnet: 10.244.16.0/20 overlaps the pod subnet 10.244.0.0/16"], [("service_subnet: 10.96.0.0/12", "service_subnet: 10.244.16.0/20")]),
    ("pod-overlaps-nodes", ["kubernetes.pod_subnet: 192.168.0.0/16 overlaps the node subnet 192.168.50.0/24"], [("pod_subnet: 10.244.0.0/16", "pod_subnet: 192.168.0.0/16")]),
    ("service-overlaps-nodes", ["kubernetes.service_subnet: 192.168.50.128/25 overlaps the node subnet 192.168.50.0/24"], [("service_subnet: 10.96.0.0/12", "service_subnet: 192.168.50.128/25")]),
    ("vip-in-service-subnet", ["api.vip: 192.168.50.100 lies inside kubernetes.service_subnet 192.168.50.96/28"], [("service_subnet: 10.96.0.0/12", "service_subnet: 192.168.50.96/28")]),
    ("subnet-host-bits", ["kubernetes.pod_subnet: 10.244.1.0/16 has host bits set", "write it as 10.244.0.0/16"], [("pod_subnet: 10.244.0.0/16", "pod_subnet: 10.244.1.0/16")]),
    ("subnet-syntax", ["kubernetes.pod_subnet: invalid IP address syntax", "CIDR form"], [("pod_subnet: 10.244.0.0/16", "pod_subnet: 10.244.0.0/33")]),
    ("unknown-board", ["nodes[2].board: unknown board `rpi3`; piha knows: amd64"], [("board: rpi4\n    role: worker", "board: rpi3\n    role: worker")]),
    ("unknown-distro", ["distro: unknown distro `fedora-40`; piha knows: debian-bookworm, ubuntu-noble"], [("distro: debian-bookworm", "distro: fedora-40")]),
    ("unknown-runtime", ["kubernetes.runtime: unknown variant `docker`, expected `crio` or `containerd`"], [("runtime: containerd", "runtime: docker")]),
    ("unsupported-k8s", ["kubernetes.version: Kubernetes 1.27.16 is not supported: piha supports 1.28 to 1.37"], [('version: "1.34.1"', 'version: "1.27.16"')]),
    ("k8s-syntax", ["kubernetes.version: `1.34` is not a Kubernetes version of the form X.Y.Z"], [('version: "1.34.1"', 'version: "1.34"')]),
    ("unknown-proxy-mode", ["kubernetes.proxy_mode: unknown variant `ipvs`, expected `iptables` or `nftables`"], [("proxy_mode: nftables", "proxy_mode: ipvs")]),
    ("unknown-key-algorithm", ["kubernetes.key_algorithm: unknown variant `rsa-4096`, expected `rsa-2048` or `ecdsa-p256`"], [("key_algorithm: rsa-2048", "key_algorithm: rsa-4096")]),
    ("unknown-role", ["nodes[1].role: unknown variant `master`, expected one of `control-plane`, `worker`, `director`"], [("role: control-plane", "role: master")]),
    ("bad-ssh-key", ["ssh_authorized_keys[0]: not an OpenSSH public key"], [("AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q", "AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk")]),
    ("private-ssh-key", ["ssh_authorized_keys[0]: this is a PRIVATE key"],
     [("  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q admin@laptop", '  - "-----BEGIN OPENSSH PRIVATE KEY-----"')]),
    ("interface-and-mac", ["nodes[2].mac: interface and mac are both set"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    interface: eth0\n    mac: "dc:a6:32:00:00:21"')]),
    ("bad-mac", ["nodes[2].mac: `dc:a6:32:00:21` is not a MAC address"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    mac: "dc:a6:32:00:21"')]),
    ("long-interface", ["nodes[2].interface: `enx0123456789abcdef` is not a Linux interface name: it has 19 characters"], [("ip: 192.168.50.21", "ip: 192.168.50.21\n    interface: enx0123456789abcdef")]),
    ("interface-with-space", ["nodes[2].interface: `eth 0` is not a Linux interface name"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    interface: "eth 0"')]),
    ("prefix-31", ["network.prefix: /31 is outside 8..=30"], [("prefix: 24", "prefix: 31")]),
    ("port-zero", ["api.port: port 0 is not a port clients can connect to"], [("port: 6443", "port: 0")]),
    ("vrrp-id-zero", ["api.vrrp_router_id: VRRP router id 0 is reserved"], [("vrrp_router_id: 51", "vrrp_router_id: 0")]),
    ("unknown-field", ["nodes[2]: unknown field `ipaddr`, expected one of"], [("ip: 192.168.50.21", "ipaddr: 192.168.50.21")]),
    ("missing-field", ["missing field `api`"], [("api:\n  vip: 192.168.50.100\n  port: 6443\n  mode: lvs-dr\n  vrrp_router_id: 51\n", "")]),
    ("no-nodes", ["nodes: the cluster has no nodes"], [(BASE[BASE.index("  - name: lb1"):], "  []\n")]),
    ("unknown-vip-mode", ["api.mode: unknown variant `keepalived-nat`, expected `lvs-dr`"], [("mode: lvs-dr", "mode: keepalived-nat")]),
    ("bad-domain", ["network.domain: `lab_1.example` is not a DNS domain name"], [("ntp: [pool.ntp.org]", "ntp: [pool.ntp.org]\n  domain: lab_1.example")]),
    ("nftables-too-old", ["kubernetes.proxy_mode: kube-proxy's nftables mode needs Kubernetes 1.31"], [('version: "1.34.1"', 'version: "1.30.14"')]),
    ("pod-subnet-too-small", ["kubernetes.pod_subnet: 10.244.0.0/24 holds 0 per-node /24 pod range(s), but 2 node(s) run pods"], [("pod_subnet: 10.244.0.0/16", "pod_subnet: 10.244.0.0/24")]),
    ("port-is-apicheck", ["api.port: port 6444 is the control planes' health endpoint (piha-apicheck), which the directors check"], [("port: 6443", "port: 6444")]),
    # Cases from the review of issue 12: values kubeadm or the network would refuse later.
    ("service-subnet-too-large", ["kubernetes.service_subnet: 10.0.0.0/8 is larger than /12", "use a /12 to /28"], [("service_subnet: 10.96.0.0/12", "service_subnet: 10.0.0.0/8")]),
    ("service-subnet-too-small", ["kubernetes.service_subnet: 10.96.0.0/29 has 8 addresses; the cluster DNS service takes the 10th"], [("service_subnet: 10.96.0.0/12", "service_subnet: 10.96.0.0/29")]),
    ("pod-subnet-too-large", ["kubernetes.pod_subnet: 16.0.0.0/4 is larger than /8"], [("pod_subnet: 10.244.0.0/16", "pod_subnet: 16.0.0.0/4")]),
    ("duplicate-mac", ["nodes[2].mac: `DC:A6:32:00:00:11` is also the MAC of nodes[1] (cp1)"],
     [("ip: 192.168.50.11", 'ip: 192.168.50.11\n    mac: "dc:a6:32:00:00:11"'), ("ip: 192.168.50.21", 'ip: 192.168.50.21\n    mac: "DC:A6:32:00:00:11"')]),
    ("multicast-mac", ["nodes[2].mac: `01:00:5e:00:00:21` is a multicast address"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    mac: "01:00:5e:00:00:21"')]),
    ("zero-mac", ["nodes[2].mac: `00:00:00:00:00:00` is the all-zero address"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    mac: "00:00:00:00:00:00"')]),
    ("node-named-localhost", ["nodes[2].name: `localhost` is the name of the loopback address"], [("name: w1", "name: localhost")]),
    ("node-named-api-alias", ["nodes[2].name: `corpus-api` is the name every node's /etc/hosts gives the VIP"], [("name: w1", "name: corpus-api")]),
    ("cluster-name-too-long-for-alias", ["name: the VIP's name `" + "c" * 60 + "-api` would be 64 characters long", "at most 59 characters"], [("name: corpus", "name: " + "c" * 60)]),
    ("broadcast-dns", ["network.dns[1]: 192.168.50.255 is the network or broadcast address of the node subnet"], [("dns: [192.168.50.1]", "dns: [192.168.50.1, 192.168.50.255]")]),
    ("limited-broadcast-dns", ["network.dns[0]: 255.255.255.255 is not a unicast host address"], [("dns: [192.168.50.1]", "dns: [255.255.255.255]")]),
    ("api-port-is-kubelet", ["api.port: port 10250 is the kubelet's API port"], [("port: 6443", "port: 10250")]),
    ("api-port-is-etcd", ["api.port: port 2379 is etcd's client port"], [("port: 6443", "port: 2379")]),
    ("api-port-is-nodeport", ["api.port: port 30443 is in the NodePort range"], [("port: 6443", "port: 30443")]),
    ("ssh-key-with-newline", ["ssh_authorized_keys[0]: the entry holds more than one line"],
     [("  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q admin@laptop",
       '  - "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q admin@laptop\\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q evil@host"')]),
    ("interface-with-braces", ["nodes[2].interface: `eth{0}` is not a Linux interface name: it contains '{'"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    interface: "eth{0}"')]),
    ("interface-with-quote", ["nodes[2].interface: `eth\"0` is not a Linux interface name: it contains '\"'"], [("ip: 192.168.50.21", "ip: 192.168.50.21\n    interface: 'eth\"0'")]),
    ("interface-with-hash", ["nodes[2].interface: `eth#0` is not a Linux interface name: it contains '#'"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    interface: "eth#0"')]),
    ("interface-with-bang", ["nodes[2].interface: `eth!0` is not a Linux interface name: it contains '!'"], [("ip: 192.168.50.21", 'ip: 192.168.50.21\n    interface: "eth!0"')]),
    ("token-ttl-forever", ["kubernetes.bootstrap_token_ttl: `0s` would make the bootstrap token valid forever"], [("key_algorithm: rsa-2048", "key_algorithm: rsa-2048\n  bootstrap_token_ttl: 0s")]),
    ("token-ttl-days", ["kubernetes.bootstrap_token_ttl: `7d` is not a duration of hours, minutes and seconds", "24h, 90m or 1h30m"], [("key_algorithm: rsa-2048", "key_algorithm: rsa-2048\n  bootstrap_token_ttl: 7d")]),
    ("token-ttl-too-long", ["kubernetes.bootstrap_token_ttl: `9000h` is 32400000 s; piha accepts a minute to a year"], [("key_algorithm: rsa-2048", "key_algorithm: rsa-2048\n  bootstrap_token_ttl: 9000h")]),
    ("containerd-1-with-kubernetes-1.36", ["kubernetes.runtime: Kubernetes 1.36.1 needs containerd 2.x", "debian-bookworm's archive ships containerd 1.x", "runtime: crio"], [('version: "1.34.1"', 'version: "1.36.1"')]),
    ("nested-too-deep", ["it nests mappings and sequences deeper than 16 levels"], [("ntp: [pool.ntp.org]", "ntp: " + "[" * 40 + "]" * 40)]),
    ("schema-errors-at-once", [
        "api.vip: invalid IPv4 address syntax",
        "nodes[0].role: unknown variant `lb`",
        "nodes[1]: unknown field `address`",
        "nodes[1]: missing field `ip`",
        "nodes[2].mac: invalid type: sequence",
        "unknown field `extra`",
     ], [("vip: 192.168.50.100", "vip: 192.168.50.1000"), ("role: director", "role: lb"), ("    ip: 192.168.50.11\n", "    address: 192.168.50.11\n"),
         ("ip: 192.168.50.21", "ip: 192.168.50.21\n    mac: [1]"), ("name: corpus", "name: corpus\nextra: 1")]),
]

# Several independent mistakes in one file: every one must be reported at once.
MANY = (
    "many-errors",
    [
        "name: cluster name `Corpus` is not an RFC 1123 label",
        "distro: unknown distro `ubuntu-jammy`",
        "kubernetes.version: Kubernetes 1.20.0 is not supported",
        "api.port: port 0",
        "nodes[0].mac: interface and mac are both set",
        "nodes[1].board: unknown board `rpi9`",
        "nodes[2].ip: 192.168.50.11 is also the address of nodes[1] (cp1)",
        "7 error(s)",
    ],
    [
        ("name: corpus", "name: Corpus"),
        ("distro: debian-bookworm", "distro: ubuntu-jammy"),
        ('version: "1.34.1"', 'version: "1.20.0"'),
        ("port: 6443", "port: 0"),
        ("    ip: 192.168.50.10\n", '    ip: 192.168.50.10\n    interface: eno1\n    mac: "00:11:22:33:44:55"\n'),
        ("board: rpi4\n    role: control-plane", "board: rpi9\n    role: control-plane"),
        ("ip: 192.168.50.21", "ip: 192.168.50.11"),
    ],
)


def main():
    for old in HERE.glob("[0-9][0-9]-*.yaml"):
        old.unlink()
    for number, (name, expects, edits) in enumerate(CASES + [MANY], start=1):
        text = BASE
        for old, new in edits:
            assert text.count(old) == 1, f"{name}: {old!r} occurs {text.count(old)} times"
            text = text.replace(old, new)
        header = "".join(f"# expect: {e}\n" for e in expects)
        (HERE / f"{number:02d}-{name}.yaml").write_text(header + text)
    print(f"wrote {len(CASES) + 1} files to {HERE}")


if __name__ == "__main__":
    main()
