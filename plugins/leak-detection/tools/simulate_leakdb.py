#!/usr/bin/env python3
"""Simulate LeakDB Hanoi scenarios (CCWI-WDSA 2018) with their leaks and per-step labels.

Scenario N's leaks come from LeakDB's table (`HANOI_LEAKAGES` in EPyT-Flow's
`leakdb_data.py`, read as JSON): node, diameter, abrupt|incipient, start/peak/end in
30-minute steps from 2017-01-01 00:00. The scenario is built as LeakDB's generator and
EPyT-Flow's loader build it, with seeded randomness:
- demands: every junction gets its own yearly pattern from LeakDB's `genDem` (yearly and
  weekly Fourier components with +/-10 % random coefficients, 5 % Gaussian noise, a random
  weekly amplitude 0.75 + N(0, 0.07));
- model uncertainty (EPyT-Flow's LeakDB loader): pipe length, roughness and base demand
  each drawn per element within +/-u of nominal, u ~ U(0, 0.25) per element;
- pressure-dependent demand (EPANET PDA: minimum 0 m, required 0.1 m, exponent 0.5);
- each leak an emitter at its node, orifice 0.75·A·sqrt(2·g·p): abrupt at full size from
  start to end; incipient with a diameter growing linearly from 0 at start to full at peak;
- seeded sensor noise: pressures N(0, 0.1 m), flows 0.5 % of reading.
Labels: 1 for steps start <= t < end of any leak (as EPyT-Flow builds them).

Usage:
  simulate_leakdb.py --scenarios 1,2,10-20 [--first-step K] [--steps N] [--out DIR]
                     [--seed S] [--noise-scale X] [--uncertainty on|off] [--leaks on|off]
Output per scenario, DIR/Scenario-N/: pressures.csv (m, every junction), flows.csv (m3/h,
every pipe), labels.csv (0/1), leaks.csv (true leak outflow per leak, m3/h), meta.json.
"""

import argparse
import ctypes
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import wntr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulate_ltown import EN_ACCURACY, EN_DURATION, EN_EMITTER, EN_FLOW, EN_HYDSTEP  # noqa: E402
from simulate_ltown import EN_PATTERNSTEP, EN_PDA, EN_PRESSURE, EN_REPORTSTEP, Epanet  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data" / "leakdb"
STEP_S = 1800
N_YEAR = 17_520
AXIS_START = pd.Timestamp("2017-01-01 00:00")
EN_BASEDEMAND = 1
EN_LENGTH, EN_ROUGHNESS = 1, 2
NOISE = {"pressure_m": 0.1, "flow_rel": 0.005}


def hanoi_table(data):
    text = (Path(data) / "epyt-flow" / "leakdb_data.py").read_text()
    start = text.index('HANOI_LEAKAGES = """') + len('HANOI_LEAKAGES = """')
    return json.loads(text[start : text.index('"""', start)])


def gen_dem(rng, Aw, nw, Ay, ny):
    """LeakDB's demandGenerator.genDem (30-minute steps, one year), with a seeded rng."""
    k = np.arange(1, N_YEAR + 1)
    w = 2 * np.pi / N_YEAR
    Hy = np.column_stack([np.ones(N_YEAR)] + [f(i * w * k) for i in range(1, ny + 1) for f in (np.sin, np.cos)])
    year = Hy @ (Ay * (1 - 0.1 + 0.2 * rng.random(Ay.shape)))
    w = 2 * np.pi / (48 * 7)
    Hw = np.column_stack([np.ones(N_YEAR)] + [f(i * w * k) for i in range(1, nw + 1) for f in (np.sin, np.cos)])
    week = Hw @ (Aw * (1 - 0.1 + 0.2 * rng.random(Aw.shape)))
    noise = rng.normal(0, 0.05, week.shape)
    variation = 0.75 + rng.normal(0, 0.07)
    return ((year + 1) * (week * variation + 1) * (noise + 1))[:, 0]


def uncertain(rng, values):
    """EPyT-Flow's LeakDB uncertainty: z = v * U(0, 0.25); value uniform in [v - z, v + z]."""
    values = np.asarray(values, dtype=float)
    z = values * rng.uniform(0, 0.25, values.shape)
    return values - z + rng.random(values.shape) * 2 * z


def leak_coefficient(leak, n):
    """Emitter coefficient (m3/h per sqrt(m)) per step of the year."""
    c = np.zeros(n)
    full = 0.75 * math.sqrt(2 * 9.81) * 3600
    s, e, p, d = leak["leak_start_time"], leak["leak_end_time"], leak["leak_peak_time"], leak["leak_diameter"]
    k = np.arange(n)
    on = (k >= s) & (k < e)
    if leak["leak_type"] == "incipient" and p > s:
        diam = np.where(k < p, d * (k - s) / (p - s), d)
    else:
        diam = np.full(n, d)
    c[on] = full * 3.14159 * (diam[on] / 2) ** 2
    return c


def run_scenario(sid, leaks, args, pats):
    rng = np.random.default_rng([args.seed, sid])
    wn = wntr.network.WaterNetworkModel(str(Path(args.data) / "networks" / "Hanoi_CMH.inp"))
    junctions = wn.junction_name_list
    pipes = wn.pipe_name_list
    base = np.array([wn.get_node(j).demand_timeseries_list[0].base_value * 3600 for j in junctions])  # m3/h
    patterns = np.array([gen_dem(rng, *pats) for _ in junctions])
    if args.uncertainty == "on":
        lengths = uncertain(rng, [wn.get_link(p).length for p in pipes])
        rough = uncertain(rng, [wn.get_link(p).roughness for p in pipes])
        base = uncertain(rng, base)
    k0, n = args.first_step, args.steps
    coeff = {i: leak_coefficient(l, N_YEAR) for i, l in enumerate(leaks)}

    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "hanoi.inp"
        wntr.network.write_inpfile(wn, str(inp), version=2.2)
        en = Epanet(inp, Path(tmp) / "hanoi.rpt")
        try:
            en.check(en.lib.EN_setdemandmodel(en.proj, EN_PDA, ctypes.c_double(0), ctypes.c_double(0.1), ctypes.c_double(0.5)), "demandmodel")
            en.set_option(EN_ACCURACY, 1e-5)
            en.set_time(EN_DURATION, (n - 1) * STEP_S)
            for code in (EN_HYDSTEP, EN_REPORTSTEP, EN_PATTERNSTEP):
                en.set_time(code, STEP_S)
            j_idx = [en.node_index(j) for j in junctions]
            p_idx = [en.link_index(p) for p in pipes]
            if args.uncertainty == "on":
                for i, idx in enumerate(p_idx):
                    en.lib.EN_setlinkvalue(en.proj, idx, EN_LENGTH, ctypes.c_double(lengths[i]))
                    en.lib.EN_setlinkvalue(en.proj, idx, EN_ROUGHNESS, ctypes.c_double(rough[i]))
            leak_idx = [en.node_index(l["node_id"]) for l in leaks]
            P = np.zeros((n, len(j_idx)))
            F = np.zeros((n, len(p_idx)))
            Q = np.zeros((n, len(leaks)))
            en.en.ENopenH()
            en.en.ENinitH(0)
            t = 0
            while True:
                k = k0 + t // STEP_S
                for i, idx in enumerate(j_idx):
                    en.set_node(idx, EN_BASEDEMAND, base[i] * patterns[i, k])
                for i, idx in enumerate(leak_idx):
                    en.set_node(idx, EN_EMITTER, coeff[i][k])
                t = en.en.ENrunH()
                if t % STEP_S == 0:
                    r = t // STEP_S
                    P[r] = [en.node(i, EN_PRESSURE) for i in j_idx]
                    F[r] = [en.link(i, EN_FLOW) for i in p_idx]
                    Q[r] = [coeff[i][k] * math.sqrt(max(en.node(idx, EN_PRESSURE), 0.0)) for i, idx in enumerate(leak_idx)]
                if en.en.ENnextH() <= 0:
                    break
            en.en.ENcloseH()
        finally:
            en.close()

    index = pd.DatetimeIndex([AXIS_START + pd.Timedelta(seconds=STEP_S * (k0 + r)) for r in range(n)], name="timestamp")
    noise = np.random.default_rng([args.seed, sid, 7])
    s = args.noise_scale
    pressures = pd.DataFrame(P + s * NOISE["pressure_m"] * noise.standard_normal(P.shape), index=index, columns=junctions)
    flows = pd.DataFrame(F * (1 + s * NOISE["flow_rel"] * noise.standard_normal(F.shape)), index=index, columns=pipes)
    labels = np.zeros(n, dtype=int)
    for l in leaks:
        labels[max(l["leak_start_time"] - k0, 0) : max(min(l["leak_end_time"] - k0, n), 0)] = 1
    leak_cols = [f"leak{i}_node{l['node_id']}" for i, l in enumerate(leaks)]
    return pressures, flows, pd.DataFrame({"label": labels}, index=index), pd.DataFrame(Q, index=index, columns=leak_cols)


def parse_ids(spec):
    ids = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        ids.extend(range(int(a), int(b or a) + 1))
    return ids


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", required=True, help="e.g. 1,2,10-20 (1..1000)")
    ap.add_argument("--first-step", type=int, default=0, help="first 30-min step of the year")
    ap.add_argument("--steps", type=int, default=N_YEAR, help="number of steps (default: the year)")
    ap.add_argument("--out", default="/var/tmp/outpost-data/leakdb/hanoi")
    ap.add_argument("--seed", type=int, default=2018)
    ap.add_argument("--noise-scale", type=float, default=1.0)
    ap.add_argument("--uncertainty", choices=["on", "off"], default="on")
    ap.add_argument("--leaks", choices=["on", "off"], default="on", help="off: same scenario without its leaks (baseline)")
    ap.add_argument("--data", default=str(DATA), help="tests/data/leakdb")
    args = ap.parse_args(argv)
    if not (0 <= args.first_step and args.steps > 0 and args.first_step + args.steps <= N_YEAR):
        ap.error(f"--first-step/--steps must lie within the {N_YEAR} steps of the year")
    table = hanoi_table(args.data)
    w = scipy.io.loadmat(str(Path(args.data) / "generator" / "weekPat_30min.mat"))
    y = scipy.io.loadmat(str(Path(args.data) / "generator" / "yearOffset_30min.mat"))
    pats = (w["Aw"], int(w["nw"][0][0]), y["Ay"], int(y["ny"][0][0]))
    for sid in parse_ids(args.scenarios):
        t0 = time.time()
        leaks = table.get(str(sid), []) if args.leaks == "on" else []
        pressures, flows, labels, leak_q = run_scenario(sid, leaks, args, pats)
        out = Path(args.out) / f"Scenario-{sid}"
        out.mkdir(parents=True, exist_ok=True)
        fmt = dict(date_format="%Y-%m-%d %H:%M", float_format="%.4f")
        pressures.to_csv(out / "pressures.csv", **fmt)
        flows.to_csv(out / "flows.csv", **fmt)
        labels.to_csv(out / "labels.csv", date_format=fmt["date_format"])
        leak_q.to_csv(out / "leaks.csv", **fmt)
        meta = {
            "network": "Hanoi_CMH",
            "scenario": sid,
            "leaks": leaks,
            "first_step": args.first_step,
            "steps": args.steps,
            "step_s": STEP_S,
            "axis_start": str(AXIS_START),
            "seed": args.seed,
            "noise_scale": args.noise_scale,
            "noise_std": NOISE,
            "uncertainty": args.uncertainty,
            "leaks_simulated": args.leaks == "on",
            "pda": {"minimum_pressure_m": 0, "required_pressure_m": 0.1, "exponent": 0.5},
            "units": {"pressures": "m", "flows": "m3/h", "leaks": "m3/h"},
            "versions": {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__, "wntr": wntr.__version__},
            "run_time_s": round(time.time() - t0, 2),
        }
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"Scenario-{sid}: {len(leaks)} leak(s), {int(labels.label.sum())} leak steps, {meta['run_time_s']} s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
