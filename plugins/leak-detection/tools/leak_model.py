#!/usr/bin/env python3
"""Builds the leak-detection service's network model message for L-Town.

The service runs in WASM without a filesystem, so the network knowledge it needs to locate a
leak reaches it as one bus message (`site/{site}/{network}/leak-model`), stored in its state:

- `sensors`: the pressure sensor node ids, in the order of every sensitivity row;
- `nodes`: ids, x, y (the .inp's [COORDINATES], m);
- `sensitivity`: per node, the change of each sensor's pressure (m) per m3/h of extra outflow
  at that node (negative: a leak lowers pressures), mean over `--hours` snapshot times of day;
- `pipes`: ids, end-node indices into `nodes`, lengths (m): the candidate leak locations;
- `tank_area_m2` of T1 (informative; the service learns the tank term from data).

Sensitivities come from EPANET 2.2 snapshots (the library shipped with WNTR, as in
simulate_ltown.py): PDD as the official generator (required 25 m, minimum 0, exponent 0.5),
tank at its initial level, an extra fixed demand of `--leak` m3/h at one node at a time.

    python3 leak_model.py --out /var/tmp/outpost-data/battledim/leak-model.json
"""
import argparse
import ctypes
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import wntr
from wntr.epanet import toolkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulate_ltown import DATA, Epanet, read_config  # noqa: E402

EN_BASEDEMAND, EN_PRESSURE = 1, 11
EN_DURATION, EN_PATTERNSTART = 0, 4
EN_ACCURACY = 1
EN_PDA = 1
EN_JUNCTION = 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", required=True)
    ap.add_argument("--leak", type=float, default=10.0, help="test outflow, m3/h (default 10)")
    ap.add_argument("--hours", default="3,9,15,21", help="snapshot times of day (pattern time, h)")
    ap.add_argument("--network", default="ltown")
    args = ap.parse_args(argv)
    data = Path(args.data)
    cfg = read_config(data / "generator" / "dataset_configuration_evaluation.yalm")
    sensors = [str(s) for s in cfg["pressure_sensors"]]
    wn = wntr.network.WaterNetworkModel(str(data / "L-TOWN.inp"))
    hours = [float(h) for h in args.hours.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        en = Epanet(data / "L-TOWN.inp", Path(tmp) / "m.rpt")
        en.check(en.lib.EN_setdemandmodel(en.proj, EN_PDA, ctypes.c_double(0), ctypes.c_double(25), ctypes.c_double(0.5)), "demandmodel")
        en.set_option(EN_ACCURACY, 1e-6)
        en.set_time(EN_DURATION, 0)
        n_nodes = en.en.ENgetcount(0)
        ids = [en.en.ENgetnodeid(i) for i in range(1, n_nodes + 1)]
        kinds = [en.en.ENgetnodetype(i) for i in range(1, n_nodes + 1)]
        s_idx = [en.node_index(s) for s in sensors]

        def solve():
            en.en.ENsolveH()
            return np.array([en.node(i, EN_PRESSURE) for i in s_idx])

        sens = np.zeros((n_nodes, len(sensors)))
        for h in hours:
            en.set_time(EN_PATTERNSTART, int(h * 3600))
            base = solve()
            for i in range(1, n_nodes + 1):
                if kinds[i - 1] != EN_JUNCTION:
                    continue
                # An extra demand category would be cleaner; the first demand's base is enough
                # here: every junction of L-Town has one demand entry (0 for non-consumers).
                b0 = en.node(i, EN_BASEDEMAND)
                en.set_node(i, EN_BASEDEMAND, b0 + args.leak)
                sens[i - 1] += (solve() - base) / args.leak / len(hours)
                en.set_node(i, EN_BASEDEMAND, b0)
        en.close()

    pipes = [(name, p) for name, p in wn.pipes()]
    index = {n: k for k, n in enumerate(ids)}
    coords = [wn.get_node(n).coordinates for n in ids]
    model = {
        "version": 1,
        "network": args.network,
        "source": "L-TOWN.inp; EPANET 2.2 snapshots, PDD 25 m, extra outflow %.1f m3/h, hours %s" % (args.leak, args.hours),
        "tank_area_m2": round(math.pi * wn.get_node("T1").diameter ** 2 / 4, 3),
        "sensors": sensors,
        "nodes": {
            "ids": ids,
            "x": [round(c[0], 2) for c in coords],
            "y": [round(c[1], 2) for c in coords],
        },
        "sensitivity": [[float("%.4g" % v) for v in row] for row in sens],
        "pipes": {
            "ids": [n for n, _ in pipes],
            "n1": [index[p.start_node_name] for _, p in pipes],
            "n2": [index[p.end_node_name] for _, p in pipes],
            "length_m": [round(p.length, 2) for _, p in pipes],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(model, separators=(",", ":"))
    out.write_text(text)
    print(f"{out}: {len(text)} bytes, {n_nodes} nodes, {len(pipes)} pipes, {len(sensors)} sensors")


if __name__ == "__main__":
    main()
