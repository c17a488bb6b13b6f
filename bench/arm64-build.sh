#!/usr/bin/env bash
# Benchmark (not a test): cold and warm `piha build`
# of the rpi4 image next to the amd64 image in the same run, the ratio
# rpi4/amd64, the rpi4 stage split and the compressed image size, checked
# against its targets (PASS/MISS lines; a MISS never fails the script).
#
# Every build: examples/qemu-lab.yaml (after `piha init`), Debian bookworm from
# the host's apt mirror, test profile, `piha build --json` for the stage times.
# Runs, in this order, each board with its own cache directory:
#
#   cold            empty --cache-dir per board, see "Seeding" below
#   warm            the same build again: cached rootfs tarball, nothing changed
#   changed         warm, after adding a key to the cluster's ssh_authorized_keys
#                   (only stage 2, customize, sees it)
#   agent           (arm64 boards) warm, after deleting the cached agent binary
#                   (<cache>/agent*) and the build root's cargo target dir: one
#                   clean cross-build of piha-agent from the seeded build root,
#                   from its vendored crates (offline)
#
# in the order amd64 cold, rpi4 cold, amd64 warm, rpi4 warm, amd64 changed,
# rpi4 changed, rpi4 agent.
#
# Seeding: the cold caches start empty except for what a user's machine keeps
# after its first build, copied from ${PIHA_CACHE_DIR:-~/.cache/piha}:
#   - the downloaded .debs (debs/<distro>-<arch>/), so network speed is not
#     measured;
#   - for arm64 boards, the Debian trixie build root the agent is cross-built
#     in (buildroot-trixie-*, a one-time host setup) and the cached agent
#     binaries (agent/<triple>-*): the agent's own build is timed separately
#     by the "agent" run. The build root is copied whole, with its cargo
#     target dir, so if the agent's sources changed since the seed the cold
#     build compiles it incrementally, as on a set-up machine, and says so.
# What the seed lacks is downloaded or made by the cold build, and then copied
# back to that cache (where a normal build would have left it) for next time.
# --with-downloads seeds nothing: the cold builds then also download every
# .deb and make the build root and vendor the agent's crates (needs the network).
# The amd64 agent is the release build made up front (PIHA_AGENT_BIN), so no
# cold build includes compiling the agent.
#
# Prints a table per run (seconds per stage), a summary table, the ratios, the
# targets and the load average before and after (the machine is shared), and
# writes it all as JSON to bench/results/arm64-build-<date>.json.
#
#   sudo bench/arm64-build.sh [--boards amd64,rpi4] [--with-downloads] [--no-agent] [--keep]
#     --boards LIST     comma-separated boards, amd64 first as the reference (default amd64,rpi4)
#     --with-downloads  seed nothing: cold builds download .debs and make the build root
#     --no-agent        skip the "agent" run
#     --keep            keep the work directory (/var/tmp/piha-bench-arm64.*)
#     --seed-only       seed the cold caches, list them and stop (checks what a run would start from)
#   PIHA_BIN: the piha binary to time instead of the release build of this checkout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
distro=debian-bookworm
boards=amd64,rpi4
seed=1
agent_run=1
keep=""
seed_only=""
while [ $# -gt 0 ]; do
    case $1 in
        --boards) boards=${2:?--boards needs a list, e.g. amd64,rpi4}; shift 2 ;;
        --boards=*) boards=${1#*=}; shift ;;
        --with-downloads) seed=""; shift ;;
        --no-agent) agent_run=""; shift ;;
        --keep) keep=1; shift ;;
        --seed-only) seed_only=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a board_list <<<"$boards"

[ "$(id -u)" = 0 ] || { echo "run as root (mmdebstrap root mode, the agent build root's chroot)" >&2; exit 1; }
for t in python3 tar bc sync dpkg; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done
for b in "${board_list[@]}"; do
    [ -f "$repo/boards/$b.yaml" ] || { echo "no board file boards/$b.yaml (--boards $boards)" >&2; exit 2; }
done

echo "building piha and piha-agent (release)…" >&2
cargo build --release --locked -p piha -p piha-agent --manifest-path "$repo/Cargo.toml" >&2
piha=${PIHA_BIN:-$repo/target/release/piha}
host_agent="$repo/target/release/piha-agent"
host_arch=$(dpkg --print-architecture)
seed_from=${PIHA_CACHE_DIR:-$HOME/.cache/piha}

work=$(mktemp -d /var/tmp/piha-bench-arm64.XXXXXX)
cleanup() {
    if [ -n "$keep" ]; then echo "kept $work" >&2; return; fi
    # A build killed inside mmdebstrap may leave mounts behind: never descend into them.
    if grep -q " $work/" /proc/mounts; then
        echo "something is still mounted under $work; not removing it" >&2
        return
    fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# A snapshot of the checkout's data and agent sources: builds in this run all
# see the same sources (the agent's cache key hashes them) even while the
# checkout is being edited.
data="$work/data"
mkdir -p "$data/builder"
(cd "$repo" && tar -cf - --exclude=target Cargo.toml Cargo.lock agent config runner overlays boards distros) | tar -xf - -C "$data"
cp -p "$repo/builder/Cargo.toml" "$data/builder/"
export PIHA_DATA_DIR="$data"

cluster="$work/cluster.yaml"
cp "$repo/examples/qemu-lab.yaml" "$cluster"
"$piha" init --cluster "$cluster" >/dev/null

runs="$work/runs.jsonl"
: >"$runs"
seeds="$work/seeds.jsonl"
: >"$seeds"
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load_before=$(loadavg)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)

board_arch() { sed -n 's/^arch:[[:space:]]*\([a-z0-9_]*\).*/\1/p' "$repo/boards/$1.yaml"; }
rust_triple() { case $1 in arm64) echo aarch64-unknown-linux-gnu ;; amd64) echo x86_64-unknown-linux-gnu ;; *) echo "$1" ;; esac; }

# Fills a board's empty cache with what a set-up machine already has (see the
# top). What is missing is recorded, and written back after the cold build.
declare -A missing=()
seed_cache() {
    local board=$1 arch=$2 cache=$3 t0 items=() d
    mkdir -p "$cache"
    [ -n "$seed" ] || { echo "$board: nothing seeded (--with-downloads): the cold build downloads everything" >&2; return 0; }
    t0=$(date +%s.%N)
    d="$seed_from/debs/$distro-$arch"
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then
        mkdir -p "$cache/debs"
        cp -a "$d" "$cache/debs/"
        items+=("debs/$distro-$arch ($(find "$d" -name '*.deb' | wc -l) .debs, $(du -sm "$d" | cut -f1) MiB)")
    else
        items+=("NO .debs in $d: this cold build downloads them")
        missing[$board]+=" debs/$distro-$arch"
    fi
    if [ "$arch" != "$host_arch" ]; then
        shopt -s nullglob
        for d in "$seed_from"/buildroot-trixie-*/ "$seed_from"/agent/"$(rust_triple "$arch")"-*/; do
            d=${d%/}
            mkdir -p "$cache/$(dirname "${d#"$seed_from"/}")"
            cp -a "$d" "$cache/${d#"$seed_from"/}"
            items+=("${d#"$seed_from"/}")
        done
        shopt -u nullglob
        if ! compgen -G "$seed_from/buildroot-trixie-*" >/dev/null; then
            items+=("NO agent build root in $seed_from: this cold build makes one (network) and compiles the agent")
            missing[$board]+=" buildroot-trixie-*"
        fi
    fi
    python3 -c 'import json, sys; print(json.dumps({"board": sys.argv[1], "seconds": round(float(sys.argv[2]), 1), "items": sys.argv[3:]}))' \
        "$board" "$(echo "$(date +%s.%N) - $t0" | bc)" "${items[@]}" >>"$seeds"
    printf '%s: seeded from %s in %.0f s (not timed): %s\n' "$board" "$seed_from" "$(echo "$(date +%s.%N) - $t0" | bc)" \
        "$(printf '%s; ' "${items[@]}" | sed 's/; $//')" >&2
}

# After a cold build that had to download or make what could not be seeded:
# put it where a normal build would have left it, so the next run is seeded.
write_back() {
    local board=$1 cache="$work/cache-$1" item src wanted
    read -r -a wanted <<<"${missing[$board]:-}"
    for item in "${wanted[@]}"; do
        for src in "$cache"/$item; do
            [ -e "$src" ] && [ ! -e "$seed_from/${src#"$cache"/}" ] || continue
            echo "$board: saving ${src#"$cache"/} to $seed_from for the next run" >&2
            mkdir -p "$(dirname "$seed_from/${src#"$cache"/}")"
            cp -a "$src" "$seed_from/${src#"$cache"/}"
        done
    done
}

declare -A failed=()
# One timed build: `run BOARD NAME`. Appends a record to $runs; fails when piha does.
run() {
    local board=$1 name=$2 arch cache out log json start end load1 agent_env=() rc=0
    arch=$(board_arch "$board")
    cache="$work/cache-$board"
    out="$work/out-$board"
    log="$work/$board-$name.log"
    json="$work/$board-$name.json"
    # The amd64 agent is the release build made above; other architectures are cross-built by piha.
    [ "$arch" = "$host_arch" ] && agent_env=(PIHA_AGENT_BIN="$host_agent")
    sync
    load1=$(cut -d' ' -f1 /proc/loadavg)
    start=$(date +%s.%N)
    env "${agent_env[@]}" "$piha" build --board "$board" --distro "$distro" --profile test --cluster "$cluster" \
        --out "$out" --cache-dir "$cache" --json >"$json" 2>"$log" || rc=$?
    end=$(date +%s.%N)
    python3 - "$board" "$name" "$start" "$end" "$load1" "$rc" "$json" "$log" >>"$runs" <<'PY'
import json, sys
board, name, start, end, load1, rc, path, log = sys.argv[1:]
summary = None
if rc == "0":
    with open(path) as f:
        summary = json.load(f)
print(json.dumps({"board": board, "run": name, "ok": rc == "0", "wall_s": round(float(end) - float(start), 1),
                  "load1_before": float(load1), "log": log, "summary": summary}))
PY
    if [ "$rc" != 0 ]; then
        printf '%-14s FAILED (exit %s), see %s:\n' "$board $name" "$rc" "$log"
        tail -15 "$log" | sed 's/^/    /'
        return 1
    fi
    tail -1 "$runs" | python3 -c '
import json, sys
r = json.load(sys.stdin); s = r["summary"]; t = s["timings"]
print("%-14s %7.1f %9.1f %7.1f %6.1f %9.1f %8.1f %8.1f %6s %9.1f" % ("%s %s" % (r["board"], r["run"]), r["wall_s"], t["preflight"],
      t["rootfs"], t["agent"], t["customize"], t["assemble"], t["package"], s["rootfs_cache"], s["compressed_size"] / 1e6))'
}
# `step BOARD NAME`: one run unless the board already failed.
step() {
    [ -z "${failed[$1]:-}" ] || return 0
    run "$1" "$2" || failed[$1]=1
}

for b in "${board_list[@]}"; do
    rm -rf "$work/cache-$b"
    seed_cache "$b" "$(board_arch "$b")" "$work/cache-$b"
done
if [ -n "$seed_only" ]; then
    (cd "$work" && shopt -s nullglob && du -sh cache-*/debs/* cache-*/agent/* cache-*/buildroot-*)
    exit 0
fi
printf '%-14s %7s %9s %7s %6s %9s %8s %8s %6s %9s\n' run wall preflight rootfs agent customize assemble package cache 'zst MB'
for b in "${board_list[@]}"; do step "$b" cold; done
for b in "${board_list[@]}"; do [ -n "${failed[$b]:-}" ] || write_back "$b"; done
for b in "${board_list[@]}"; do step "$b" warm; done
# A user adds a colleague's key: stage 2 changes, the rootfs tarball does not.
if command -v ssh-keygen >/dev/null; then
    ssh-keygen -q -t ed25519 -N '' -C bench@piha -f "$work/bench-key"
    key=$(cat "$work/bench-key.pub")
else
    key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZxurD8U1Lk/PGlDFJlnQTHb0FZEjo026lcX1Oktx3Q bench@piha"
fi
python3 - "$cluster" "$key" <<'PY'
import sys
path, key = sys.argv[1:]
lines = open(path).read().split("\n")
i = lines.index("ssh_authorized_keys:") + 1
while i < len(lines) and lines[i].startswith("  - "):
    i += 1
lines.insert(i, "  - " + key)
open(path, "w").write("\n".join(lines))
PY
for b in "${board_list[@]}"; do step "$b" changed; done
if [ -n "$agent_run" ]; then
    for b in "${board_list[@]}"; do
        [ "$(board_arch "$b")" != "$host_arch" ] || continue
        # The cached binaries and the cargo target dir inside the build root
        # (without the latter cargo finds everything fresh and compiles nothing).
        rm -rf "$work/cache-$b"/agent "$work/cache-$b"/agent-target-* "$work/cache-$b"/buildroot-trixie-*/piha/target
        step "$b" agent
    done
fi
load_after=$(loadavg)

mkdir -p "$repo/bench/results"
results="$repo/bench/results/arm64-build-$(date -u +%Y-%m-%d-%H%M%S).json"
# The report: tables, ratios, targets, and the same as JSON.
BENCH_BOARDS=$boards BENCH_DISTRO=$distro BENCH_SEEDED=$seed BENCH_SEED_FROM=$seed_from BENCH_STARTED=$started \
BENCH_LOAD_BEFORE=$load_before BENCH_LOAD_AFTER=$load_after BENCH_CORES=$(nproc) BENCH_KERNEL=$(uname -r) BENCH_HOST_ARCH=$host_arch \
    python3 - "$runs" "$seeds" "$results" <<'PY'
import json, os, sys

runs = [json.loads(l) for l in open(sys.argv[1])]
seeds = [json.loads(l) for l in open(sys.argv[2])]
results_path = sys.argv[3]
env = os.environ
boards = env["BENCH_BOARDS"].split(",")
seeded = bool(env["BENCH_SEEDED"])
load_before = [float(x) for x in env["BENCH_LOAD_BEFORE"].split()]
load_after = [float(x) for x in env["BENCH_LOAD_AFTER"].split()]
REF = "amd64"  # the board every other one is compared with


def get(board, name):
    for r in runs:
        if r["board"] == board and r["run"] == name and r["ok"]:
            return r
    return None


def wall(board, name):
    r = get(board, name)
    return r["wall_s"] if r else None


def fmt(v, spec="%.1f"):
    return spec % v if v is not None else "-"


print()
print("piha build --distro %s --profile test, examples/qemu-lab.yaml; wall seconds" % env["BENCH_DISTRO"])
if seeded:
    for s in seeds:
        print("  %s cold cache seeded from %s: %s" % (s["board"], env["BENCH_SEED_FROM"], "; ".join(s["items"]) or "nothing found"))
    print("  (.debs seeded: no download is timed; run with --with-downloads to time them)")
else:
    print("  cold caches empty (--with-downloads): downloads, the agent build root and the agent build are timed")
print("%-8s %8s %8s %20s %15s" % ("board", "cold s", "warm s", "warm-after-change s", "compressed MB"))
summary = {}
for b in boards:
    cold, agent = get(b, "cold"), get(b, "agent")
    summary[b] = {
        "cold_s": wall(b, "cold"),
        "warm_s": wall(b, "warm"),
        "warm_after_change_s": wall(b, "changed"),
        "agent_cross_build_s": agent["summary"]["timings"]["agent"] if agent else None,
        "compressed_bytes": cold["summary"]["compressed_size"] if cold else None,
        "image_bytes": cold["summary"]["image_size"] if cold else None,
    }
    size = summary[b]["compressed_bytes"]
    print("%-8s %8s %8s %20s %15s" % (b, fmt(summary[b]["cold_s"]), fmt(summary[b]["warm_s"]), fmt(summary[b]["warm_after_change_s"]),
                                       fmt(size / 1e6 if size else None)))
for r in runs:
    if r["ok"] and r["run"] != "cold" and r["summary"]["rootfs_cache"] != "hit":
        print("note: %s %s missed the rootfs cache (rebuilt the root filesystem)" % (r["board"], r["run"]))

ratios = {}
for b in boards:
    if b == REF or REF not in boards:
        continue
    rb = {}
    for col in ("cold_s", "warm_s", "warm_after_change_s"):
        x, y = summary[b][col], summary[REF][col]
        rb[col] = round(x / y, 2) if x is not None and y else None
    ratios["%s/%s" % (b, REF)] = rb
    print("ratio %s/%s: cold %s, warm %s, warm after change %s"
          % (b, REF, fmt(rb["cold_s"], "%.2fx"), fmt(rb["warm_s"], "%.2fx"), fmt(rb["warm_after_change_s"], "%.2fx")))

for b in boards:
    if b == REF:
        continue
    cold = get(b, "cold")
    if cold:
        t = cold["summary"]["timings"]
        total = t["total"] or 1
        parts = ["%s %.1f (%d%%)" % (k, t[k], round(100 * t[k] / total))
                 for k in ("preflight", "rootfs", "agent", "customize", "assemble", "package")]
        print("%s cold, seconds per stage of %.1f: %s" % (b, t["total"], ", ".join(parts)))
        print("%s cold, rootfs %.1f s vs customize+assemble+package %.1f s"
              % (b, t["rootfs"], t["customize"] + t["assemble"] + t["package"]))
        if t["agent"] > 2:
            print("note: the %s cold build compiled its agent (%.1f s): no seeded agent binary matched these sources; "
                  "the build without that stage: %.1f s" % (b, t["agent"], cold["wall_s"] - t["agent"]))
    agent = get(b, "agent")
    if agent:
        print("%s agent cross-build from the seeded build root (clean cargo target, vendored crates): %.1f s (that whole build %.1f s)"
              % (b, agent["summary"]["timings"]["agent"], agent["wall_s"]))

targets = []


def target(name, value, limit, unit):
    if value is not None:
        targets.append({"target": name, "value": value, "limit": limit, "unit": unit, "pass": value <= limit})


for b in boards:
    if b != REF:
        target("cold %s build <= 5 min" % b, summary[b]["cold_s"], 300, "s")
        target("cold %s build <= 3x amd64 cold" % b, ratios.get("%s/%s" % (b, REF), {}).get("cold_s"), 3, "x")
    target("warm %s rebuild, unchanged, <= 15 s" % b, summary[b]["warm_s"], 15, "s")
    target("warm %s rebuild, after a cluster-file change, <= 15 s" % b, summary[b]["warm_after_change_s"], 15, "s")
    size = summary[b]["compressed_bytes"]
    target("compressed %s image <= 400 MB" % b, round(size / 1e6, 1) if size else None, 400, "MB")
print()
print("targets (reported, never enforced):")
for t in targets:
    print("%-4s %-55s %8s %s (limit %s)" % ("PASS" if t["pass"] else "MISS", t["target"], t["value"], t["unit"], t["limit"]))
failed = sorted({r["board"] for r in runs if not r["ok"]})
if failed:
    print("FAILED builds: %s (their later runs were skipped; the tail of the log is above, --keep keeps the whole work directory)" % ", ".join(failed))
print("load average before %s, after %s (%s cores, shared: expect noise)"
      % (env["BENCH_LOAD_BEFORE"], env["BENCH_LOAD_AFTER"], env["BENCH_CORES"]))

out = {
    "started": env["BENCH_STARTED"],
    "host": {"cores": int(env["BENCH_CORES"]), "kernel": env["BENCH_KERNEL"], "arch": env["BENCH_HOST_ARCH"]},
    "distro": env["BENCH_DISTRO"],
    "profile": "test",
    "cluster": "examples/qemu-lab.yaml",
    "boards": boards,
    "seeded": seeded,
    "seeded_from": env["BENCH_SEED_FROM"] if seeded else None,
    "seeds": seeds,
    "load_before": load_before,
    "load_after": load_after,
    "summary": summary,
    "ratios": ratios,
    "targets": targets,
    "failed": failed,
    "runs": [{k: v for k, v in r.items() if k != "log"} for r in runs],
}
with open(results_path, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
print("results: %s" % results_path)
PY
[ ${#failed[@]} -eq 0 ]
