#!/usr/bin/env python3
"""Physical sanity checks of simulate_ltown.py output.

  check_ltown.py LEAKY_DIR [--baseline LEAKFREE_DIR]

LEAKY_DIR: a run of --config evaluation (or historical); LEAKFREE_DIR: the same window
and seed with --config leakfree. Checks and prints:
- pressures are in the tens of metres;
- the inlet flows p227 + p235 equal consumption + leakage + tank inflow (true balance),
  and the balance itself closes;
- simulated leak outflows against the organisers' 2019 series (evaluation config only);
- with a baseline: the pressure drop each leak causes at the nearest pressure sensors.
Exits 1 if a check fails.
"""

import argparse
import json
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import wntr

DATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "battledim"


def meta_leak(meta, pipe):
    return next(l for l in meta["leaks"] if l["pipe"] == pipe)


def load(d, name):
    return pd.read_csv(Path(d) / name, index_col="timestamp", parse_dates=["timestamp"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("leaky")
    ap.add_argument("--baseline")
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args(argv)
    ok = True

    def verdict(cond, msg):
        nonlocal ok
        ok &= bool(cond)
        print(("ok   " if cond else "FAIL ") + msg)

    meta = json.loads((Path(args.leaky) / "meta.json").read_text())
    p = load(args.leaky, "pressures.csv")
    f = load(args.leaky, "flows.csv")
    b = load(args.leaky, "balance.csv")
    q = load(args.leaky, "leaks.csv")
    print(f"{meta['config']} {meta['start']} .. {meta['end']}, {len(p)} steps, seed {meta['seed']}")

    lo, med, hi = np.nanmin(p.values), np.nanmedian(p.values), np.nanmax(p.values)
    verdict(5 < lo and 10 < med < 100 and hi < 100, f"pressures min {lo:.2f} m, median {med:.2f} m, max {hi:.2f} m")

    residual = (b.supply_m3h - b.tank_inflow_m3h - b.consumption_m3h - b.leakage_m3h).abs().max()
    verdict(residual < 0.01, f"true balance supply - tank - consumption - leakage: max |residual| {residual:.4f} m3/h")
    inlet = f["p227"] + f["p235"]
    out = b.consumption_m3h + b.leakage_m3h + b.tank_inflow_m3h
    rel = ((inlet - out).abs() / out.abs()).mean()
    verdict(
        rel < 0.02,
        f"inlets p227+p235 (sensors, noisy) mean {inlet.mean():.2f} m3/h vs consumption {b.consumption_m3h.mean():.2f}"
        f" + leakage {b.leakage_m3h.mean():.2f} + tank {b.tank_inflow_m3h.mean():.2f}: mean rel. error {rel:.4f}",
    )

    active = [c for c in q.columns if q[c].max() > 0]
    if meta["config"] == "evaluation" and active:
        official = pd.read_csv(
            Path(args.data) / "leak-flows" / "leak_flows_2019_m3h.csv.gz", index_col="timestamp", parse_dates=["timestamp"]
        ).loc[q.index]
        print("leak outflow vs the organisers' series (mean over active steps, m3/h):")
        worst = 0.0
        for c in active:
            on = (q[c] > 0) & (official[c] > 0)
            if on.sum() == 0:
                continue
            ours, theirs = q.loc[on, c].mean(), official.loc[on, c].mean()
            worst = max(worst, abs(ours / theirs - 1))
            print(f"  {c}: ours {ours:8.3f}  official {theirs:8.3f}  ratio {ours / theirs:.4f}")
        verdict(worst < 0.1, f"leak outflows within {worst * 100:.1f} % of the official series")

    if args.baseline:
        p0 = load(args.baseline, "pressures.csv")
        wn = wntr.network.WaterNetworkModel(str(Path(args.data) / "L-TOWN.inp"))
        g = nx.Graph()
        for _, pipe in wn.pipes():
            g.add_edge(pipe.start_node_name, pipe.end_node_name, weight=pipe.length)
        diff = p - p0.loc[p.index]
        print(
            "pressure drop each leak causes at the 3 nearest pressure sensors (pipe distance): change of"
            " (leaky - leak-free) from the day before the leak starts to the day after it reaches full size:"
        )
        biggest = 0.0
        for c in active:
            on = q.index[q[c] > 0]
            full = on[0] if meta_leak(meta, c)["type"] == "abrupt" else pd.Timestamp(meta_leak(meta, c)["peak"])
            before = diff.loc[on[0] - pd.Timedelta(days=1) : on[0] - pd.Timedelta(minutes=5)]
            after = diff.loc[full : min(full + pd.Timedelta(days=1), on[-1])]
            if len(before) < 288 or len(after) < 288:
                print(f"  {c}: skipped (starts or peaks too close to the window's edges)")
                continue
            link = wn.get_link(c)
            dist = {}
            for s in p.columns:
                try:
                    dist[s] = min(nx.shortest_path_length(g, n, s, weight="weight") for n in (link.start_node_name, link.end_node_name))
                except nx.NetworkXNoPath:
                    pass
            nearest = sorted(dist, key=dist.get)[:3]
            drop = {s: after[s].mean() - before[s].mean() for s in nearest}
            text = ", ".join(f"{s} ({dist[s]:.0f} m) {drop[s]:+.3f} m" for s in nearest)
            print(f"  {c} ({meta_leak(meta, c)['type']}, {q.loc[after.index, c].mean():.1f} m3/h): {text}")
            biggest = max([biggest] + [-d for d in drop.values()])
        if active:
            verdict(biggest > 0.1, f"largest drop at a nearest sensor {biggest:.3f} m")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
