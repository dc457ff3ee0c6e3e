"""Simulation scale: ``fedmm simulate`` with 4, 16 and 64 virtual hospitals, 3 rounds each.

Every hospital holds the same number of patients, so the federation's total grows with the
number of hospitals. Reported per run: wall time, seconds per round after the first (the first
pays Ray's start-up and each worker's imports once), that time per 1,000 patients, and the
peak resident memory of the whole process tree (the CLI, Ray's GCS and raylet, its workers),
sampled every 0.25 s. One Ray actor per core trains the hospitals one after another, so only
the running hospitals are resident.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.loopback import PeakMemory
from benchmarks.report import machine
from server.run_folder import RunFolder

SAMPLES_PER_SITE = 40
ROUNDS = 3


def run_simulation_at_scale(*, hospitals: int, root: Path) -> dict:
    out = root / f"sim-{hospitals}"
    command = [sys.executable, "-m", "fedmm", "simulate", "--sites", str(hospitals),
               "--samples-per-site", str(SAMPLES_PER_SITE), "--rounds", str(ROUNDS),
               "--out", str(out), "--set", f"training.min_sites={hospitals}"]
    started = time.perf_counter()
    with (root / f"sim-{hospitals}.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TMPDIR": str(root)})
        with PeakMemory(process.pid) as memory:
            code = process.wait()
    wall = time.perf_counter() - started
    if code != 0:
        tail = (root / f"sim-{hospitals}.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"simulate with {hospitals} hospitals failed (exit {code}):\n{tail}")
    records = RunFolder(out).rounds()
    later = [r.seconds for r in records[1:]]
    per_round = statistics.median(later)
    row = {"benchmark": "scale", "hospitals": hospitals, "rounds": len(records),
           "patients": hospitals * SAMPLES_PER_SITE, "wall_seconds": round(wall, 1),
           "first_round_seconds": round(records[0].seconds, 2),
           "round_seconds_after_first": round(per_round, 2),
           "seconds_per_1000_patients": round(1000 * per_round
                                              / (hospitals * SAMPLES_PER_SITE), 2),
           "sites_ok": [r.sites_ok for r in records],
           "peak_rss_mib": round(memory.peak / 2**20, 1)}
    print(json.dumps(row), flush=True)
    return row


def simulation_scale(*, quick: bool) -> list[dict]:
    sizes = (4,) if quick else (4, 16, 64)
    with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as folder:
        return [run_simulation_at_scale(hospitals=n, root=Path(folder)) for n in sizes]


def markdown(rows: list[dict], command: str, plot: str | None) -> list[str]:
    lines = [
        "## Simulation scale", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}", "",
        f"`fedmm simulate --sites N --samples-per-site {SAMPLES_PER_SITE} --rounds {ROUNDS}` "
        "(default model, DP-SGD, secure aggregation on, evaluation every round), one Ray actor "
        "per core (2) with one CPU each.", "",
        "| hospitals | patients | wall (s) | first round (s) | s / round after | "
        "s / round per 1,000 patients | sites in each round | peak memory, whole tree (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hospitals']} | {r['patients']} | {r['wall_seconds']} | "
            f"{r['first_round_seconds']} | {r['round_seconds_after_first']} | "
            f"{r['seconds_per_1000_patients']} | {', '.join(str(n) for n in r['sites_ok'])} | "
            f"{r['peak_rss_mib']} |")
    if len(rows) > 1:
        small, big = rows[0], rows[-1]
        memory = big["peak_rss_mib"] / small["peak_rss_mib"]
        time_ratio = big["round_seconds_after_first"] / small["round_seconds_after_first"]
        patients = big["patients"] / small["patients"]
        warm_small = small["first_round_seconds"] - small["round_seconds_after_first"]
        warm_big = big["first_round_seconds"] - big["round_seconds_after_first"]
        per_hospital = (warm_big - warm_small) / (big["hospitals"] - small["hospitals"])
        lines += ["", f"From {small['hospitals']} to {big['hospitals']} hospitals "
                  f"({patients:.0f}× the patients): peak memory {memory:.2f}× (target: flat: "
                  f"{'met' if memory < 1.25 else 'missed'}), round time {time_ratio:.1f}× "
                  f"(target: at most linear, {patients:.0f}×: "
                  f"{'met' if time_ratio <= patients else 'missed'}). The first round costs "
                  f"{warm_small:.0f} s more than the others with {small['hospitals']} hospitals "
                  f"(Ray's start-up and each worker's imports, paid once per run) and "
                  f"{warm_big:.0f} s more with {big['hospitals']}: about {per_hospital:.1f} s "
                  "per hospital of one-off work in its first round (reading and caching its "
                  "data, calibrating its per-sample-gradient mode), never repeated."]
    if plot:
        lines += ["", f"![round time and memory vs hospitals]({plot})"]
    lines += ["", "On a Ray cluster: start Ray on every machine (`ray start --head` on one, "
              "`ray start --address HEAD:6379` on the others), make the site folders readable "
              "at the same path on each, then `fedmm simulate --ray-address auto ...` "
              "on the head: each virtual hospital takes one CPU of the cluster, as many at "
              "once as the cluster has CPUs."]
    return lines
