#!/usr/bin/env python3
"""Per-package time from a dpkg.log: seconds between a package's first
status line of an action and the next line of the log (dpkg logs at
one-second resolution, so small numbers are noise). Prints the top N and
the sum per action (unpack / configure / trigproc)."""
import sys, datetime, collections

def parse(path):
    for line in open(path):
        parts = line.split()
        if len(parts) < 4:
            continue
        t = datetime.datetime.strptime(parts[0] + " " + parts[1], "%Y-%m-%d %H:%M:%S")
        yield t, parts[2:]

rows = list(parse(sys.argv[1]))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
cost = collections.Counter()
per_action = collections.Counter()
for (t, p), (t2, _) in zip(rows, rows[1:]):
    dt = (t2 - t).total_seconds()
    if p[0] in ("configure", "unpack", "install", "upgrade", "trigproc"):
        action = "unpack" if p[0] in ("unpack", "install", "upgrade") else p[0]
        cost[(action, p[1].split(":")[0])] += dt
        per_action[action] += dt
    elif p[0] == "status" and p[1] in ("half-configured", "triggers-awaited"):
        cost[("configure", p[2].split(":")[0])] += dt
        per_action["configure"] += dt
total = (rows[-1][0] - rows[0][0]).total_seconds()
print(f"log span {total:.0f} s; " + ", ".join(f"{k} {v:.0f} s" for k, v in per_action.items()))
for (action, pkg), dt in cost.most_common(n):
    print(f"{dt:6.0f} s  {action:9} {pkg}")
