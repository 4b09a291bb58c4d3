#!/usr/bin/env python3
"""Simulate L-Town (BattLeDIM 2020) SCADA data at the competition's sensors.

Follows the official generator (`tests/data/battledim/generator/dataset_generator.py`)
and its configurations: same network (`L-TOWN.inp`), 5-minute steps, leak schedule,
leak model (each leak a node in the middle of its pipe; abrupt: orifice
Cd·A·sqrt(2·g·p) from start to end; incipient: the same orifice with a diameter growing
linearly from start to peak time, then constant), pressure-dependent demand
(required pressure 25 m), sensors (33 pressures, flows PUMP_1/p227/p235, 82 AMR demands,
tank T1 level), values rounded to 0.01.

Differences, all documented in tools/README.md: the hydraulics run in EPANET 2.2 (the
toolkit shipped with WNTR) stepped from Python, each leak an emitter whose coefficient is
set every step (equal to the generator's WNTR leak and PDD models for pressures below
100 m), 30x faster than WNTR's own solver; the .inp holds one week of demand patterns
(the official yearly ones are not available), so a seeded global demand multiplier adds
a seasonal cycle and day-to-day variation; seeded sensor noise.

Usage:
  simulate_ltown.py --config evaluation|historical|leakfree [--start T] [--end T]
                    [--out DIR] [--seed N] [--noise-scale X] [--demand-variation on|off]
                    [--spinup-days D | --warm-start DIR]
Times are 'YYYY-MM-DD HH:MM'. Output: pressures.csv (m), flows.csv (m3/h),
demands.csv (L/h), levels.csv (m), leaks.csv (true leak outflow, m3/h),
balance.csv (true water balance, m3/h), meta.json.
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
import wntr
from wntr.epanet import toolkit

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data" / "battledim"
STEP_S = 300
STEP = pd.Timedelta(minutes=5)

CONFIG_FILES = {
    "evaluation": "dataset_configuration_evaluation.yalm",
    "historical": "dataset_configuration_historical.yalm",
    # The 2019 time axis and sensors with every leak removed: a clean calibration baseline.
    "leakfree": "dataset_configuration_evaluation.yalm",
}

# Sensor noise: zero-mean Gaussian, standard deviations (scaled by --noise-scale).
NOISE = {
    "pressure_m": 0.1,  # 0.1 % of a 10 bar transducer's full scale
    "flow_rel": 0.005,  # 0.5 % of reading (electromagnetic flow meter)
    "amr_rel": 0.01,  # 1 % of reading
    "level_m": 0.01,
}
# Demand variation (global multiplier on every consumer demand).
SEASON_AMPLITUDE = 0.10  # +/-10 %, peak on day 196 (mid July)
SEASON_PEAK_DAY = 196
DAILY_SIGMA = 0.03  # day-to-day AR(1) factor, stationary std
DAILY_PHI = 0.7

# EPANET 2.2 toolkit codes.
EN_EMITTER, EN_DEMAND, EN_PRESSURE = 3, 9, 11
EN_FLOW, EN_INITSTATUS, EN_STATUS = 8, 4, 11
EN_TANKLEVEL = 8
EN_DURATION, EN_HYDSTEP, EN_PATTERNSTEP, EN_PATTERNSTART, EN_REPORTSTEP = 0, 1, 3, 4, 5
EN_ACCURACY, EN_DEMANDMULT = 1, 4
# The .inp's ACCURACY 0.01 leaves flow imbalances of ~1 % at some steps; WNTR's solver (used
# by the generator) converges much tighter. 1e-5 closes the water balance to < 1e-3 m3/h.
ACCURACY = 1e-5
EN_PDA = 1
EN_NODECOUNT = 0
EN_JUNCTION, EN_RESERVOIR, EN_TANK = 0, 1, 2


def read_config(path):
    """The organisers' .yalm: `key:` sections with `- item` lists or `name: value` lines."""
    cfg, section = {}, None
    for raw in Path(path).read_text(encoding="latin-1").splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        if not line.startswith((" ", "-")) and line.endswith(":"):
            section = line[:-1]
            cfg[section] = []
            continue
        item = line.strip()
        if item.startswith("-"):
            item = item[1:].strip()
            if item and not item.startswith("#"):
                cfg[section].append(item)
        elif ":" in item:
            key, value = item.split(":", 1)
            if not isinstance(cfg.get(section), dict):
                cfg[section] = {}
            cfg[section][key.strip()] = value.strip()
    return cfg


def parse_leaks(cfg):
    leaks = []
    for item in cfg.get("leakages", []):
        pipe, start, end, diameter, kind, peak = [x.strip() for x in item.split(",")]
        leaks.append(
            {
                "pipe": pipe,
                "start": pd.Timestamp(start),
                "end": pd.Timestamp(end),
                "diameter_m": float(diameter),
                "type": kind,
                "peak": pd.Timestamp(peak),
            }
        )
    return leaks


def leak_coefficients(leak, axis_start, n_axis):
    """Emitter coefficient (m3/h per sqrt(m)) of one leak at every step of the config's
    time axis, reproducing dataset_generator.py step for step."""
    ST = int((leak["start"] - axis_start) / STEP)
    ET = int((leak["end"] - axis_start) / STEP)
    d = leak["diameter_m"]
    area = 3.14159 * (d / 2) ** 2  # the generator's pi
    timesteps = n_axis - 1  # generator: TIMESTEPS = duration / step
    coeff = np.zeros(n_axis)
    if "incipient" in leak["type"]:
        # Generator: a PDD demand with nominal pressure 100 m and minimum 0 m, i.e.
        # q = pattern * sqrt(p / 100) m3/s, an emitter of coefficient pattern * 3600 / 10.
        ET = ET + 1
        PT = int((leak["peak"] - axis_start) / STEP) + 1
        inc = d / (PT - ST)
        inc_d = np.arange(inc, d, inc)
        inc_area = 0.75 * math.sqrt(2 / 1000) * 990.27 * 3.14159 * (inc_d / 2) ** 2
        magnitude = 0.75 * math.sqrt(2 / 1000) * 990.27 * area
        pattern = [0.0] * ST + inc_area.tolist() + [magnitude] * (ET - PT + 1) + [0.0] * (timesteps - ET)
        pattern = np.asarray(pattern)
        # WNTR wraps patterns: step k uses pattern[k % len].
        coeff = pattern[np.arange(n_axis) % len(pattern)] * 3600 / math.sqrt(100)
    else:
        # WNTR add_leak(discharge_coeff=0.75, area, start=ST, end=ET+1 steps):
        # q = 0.75 * A * sqrt(2 * 9.81 * p) m3/s from step ST to ET inclusive.
        c = 0.75 * area * math.sqrt(2 * 9.81) * 3600
        coeff[max(ST, 0) : ET + 1] = c
    return coeff


def demand_multiplier(axis, seed, enabled):
    """Global demand multiplier per step: season x day-to-day AR(1), seeded per config year
    so a window gets the same values as the full run."""
    if not enabled:
        return np.ones(len(axis))
    days = pd.date_range(axis[0].normalize(), axis[-1].normalize(), freq="D")
    rng = np.random.default_rng([seed, 1, axis[0].year])
    e = np.zeros(len(days))
    eta = rng.standard_normal(len(days))
    e[0] = DAILY_SIGMA * eta[0]
    for i in range(1, len(days)):
        e[i] = DAILY_PHI * e[i - 1] + DAILY_SIGMA * math.sqrt(1 - DAILY_PHI**2) * eta[i]
    daily = pd.Series(1 + e, index=days)
    doy = axis.day_of_year.to_numpy()
    season = 1 + SEASON_AMPLITUDE * np.cos(2 * np.pi * (doy - SEASON_PEAK_DAY) / 365.25)
    return season * daily.reindex(axis.normalize()).to_numpy()


def noisy(df, kind, seed, scale):
    """Adds seeded Gaussian noise; each day's draws come from their own seed, so a window
    and the full run agree where they overlap."""
    if scale == 0:
        return df
    kinds = {"pressure": 2, "flow": 3, "amr": 4, "level": 5}
    out = df.copy()
    for day, idx in df.groupby(df.index.normalize()).groups.items():
        rng = np.random.default_rng([seed, kinds[kind], int(day.value // 86_400_000_000_000)])
        # Draw a full day for every column so the values do not depend on the window.
        full = rng.standard_normal((288, df.shape[1]))
        rows = ((idx - day) / STEP).astype(int)
        z = full[rows]
        block = df.loc[idx].to_numpy()
        if kind == "pressure":
            block = block + scale * NOISE["pressure_m"] * z
        elif kind == "level":
            block = block + scale * NOISE["level_m"] * z
        elif kind == "flow":
            block = block * (1 + scale * NOISE["flow_rel"] * z)
        else:
            block = np.maximum(block * (1 + scale * NOISE["amr_rel"] * z), 0.0)
        out.loc[idx] = block
    return out


class Epanet:
    """Thin ctypes access to the EPANET 2.2 library shipped with WNTR."""

    def __init__(self, inp, rpt):
        self.en = toolkit.ENepanet(version=2.2)
        self.en.ENopen(str(inp), str(rpt), "")
        self.lib, self.proj = self.en.ENlib, self.en._project
        self._val = ctypes.c_double()
        self._ref = ctypes.byref(self._val)

    def check(self, code, what):
        if code > 100:
            raise RuntimeError(f"EPANET error {code} in {what}")

    def node_index(self, node_id):
        return self.en.ENgetnodeindex(node_id)

    def link_index(self, link_id):
        return self.en.ENgetlinkindex(link_id)

    def node(self, idx, code):
        self.lib.EN_getnodevalue(self.proj, idx, code, self._ref)
        return self._val.value

    def link(self, idx, code):
        self.lib.EN_getlinkvalue(self.proj, idx, code, self._ref)
        return self._val.value

    def set_node(self, idx, code, value):
        self.check(self.lib.EN_setnodevalue(self.proj, idx, code, ctypes.c_double(value)), "setnodevalue")

    def set_option(self, code, value):
        self.check(self.lib.EN_setoption(self.proj, code, ctypes.c_double(value)), "setoption")

    def set_time(self, code, value):
        self.check(self.lib.EN_settimeparam(self.proj, code, ctypes.c_long(int(value))), "settimeparam")

    def version(self):
        v = ctypes.c_int()
        self.lib.EN_getversion(ctypes.byref(v))
        return v.value

    def close(self):
        self.en.ENclose()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIG_FILES), required=True)
    ap.add_argument("--start", help="first step, 'YYYY-MM-DD HH:MM' (default: config start)")
    ap.add_argument("--end", help="last step, inclusive (default: config end)")
    ap.add_argument("--out", default=None, help="output dir (default /var/tmp/outpost-data/battledim/<config>)")
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--noise-scale", type=float, default=1.0, help="multiplies every noise std; 0 = no noise")
    ap.add_argument("--demand-variation", choices=["on", "off"], default="on")
    ap.add_argument("--spinup-days", type=float, default=1.0, help="simulated before --start and dropped")
    ap.add_argument(
        "--warm-start",
        metavar="DIR",
        help="a run of the same config covering --start: start from its tank level and pump status (no spin-up)",
    )
    ap.add_argument("--data", default=str(DATA), help="tests/data/battledim")
    args = ap.parse_args(argv)
    t0 = time.time()

    data = Path(args.data)
    cfg = read_config(data / "generator" / CONFIG_FILES[args.config])
    axis_start = pd.Timestamp(cfg["times"]["StartTime"])
    axis_end = pd.Timestamp(cfg["times"]["EndTime"])
    axis = pd.date_range(axis_start, axis_end, freq=STEP)
    leaks = [] if args.config == "leakfree" else parse_leaks(cfg)
    start = pd.Timestamp(args.start) if args.start else axis_start
    end = pd.Timestamp(args.end) if args.end else axis_end
    if not (axis_start <= start <= end <= axis_end):
        ap.error(f"--start/--end must lie in {axis_start} .. {axis_end}")
    if (start - axis_start) % STEP or (end - axis_start) % STEP:
        ap.error("--start/--end must be on the 5-minute grid")
    warm = None
    if args.warm_start:
        prev = pd.read_csv(Path(args.warm_start) / "balance.csv", index_col="timestamp", parse_dates=["timestamp"])
        if start not in prev.index:
            ap.error(f"--warm-start {args.warm_start} does not cover {start}")
        warm = prev.loc[start]
    spinup = pd.Timedelta(0) if warm is not None else pd.Timedelta(days=args.spinup_days)
    sim_start = max(axis_start, start - spinup)
    k0 = int((sim_start - axis_start) / STEP)
    k_first, k_last = int((start - axis_start) / STEP), int((end - axis_start) / STEP)
    out = Path(args.out or f"/var/tmp/outpost-data/battledim/{args.config}")
    out.mkdir(parents=True, exist_ok=True)

    # Network with one leak node in the middle of each leaking pipe (as the generator).
    wn = wntr.network.WaterNetworkModel(str(data / "L-TOWN.inp"))
    leak_nodes = []
    for leak in leaks:
        node = f"{leak['pipe']}_leaknode"
        wn = wntr.morph.split_pipe(wn, leak["pipe"], f"{leak['pipe']}_Bleak", node)
        leak_nodes.append(node)
    n_sim = k_last - k0 + 1
    wn.options.time.duration = (n_sim - 1) * STEP_S
    sensors = {
        name: [str(s) for s in cfg[name]] for name in ["pressure_sensors", "flow_sensors", "level_sensors", "amrs"]
    }

    multiplier = demand_multiplier(axis, args.seed, args.demand_variation == "on")
    coeffs = np.array([leak_coefficients(l, axis_start, len(axis)) for l in leaks]).reshape(len(leaks), len(axis))

    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "ltown_leaks.inp"
        wntr.network.write_inpfile(wn, str(inp), version=2.2)
        en = Epanet(inp, Path(tmp) / "ltown.rpt")
        try:
            epanet_version = en.version()
            # PDD as the generator: required pressure 25 m, minimum 0 m, exponent 0.5.
            en.check(en.lib.EN_setdemandmodel(en.proj, EN_PDA, ctypes.c_double(0), ctypes.c_double(25), ctypes.c_double(0.5)), "demandmodel")
            en.set_option(EN_ACCURACY, ACCURACY)
            en.set_time(EN_DURATION, (n_sim - 1) * STEP_S)
            en.set_time(EN_HYDSTEP, STEP_S)
            en.set_time(EN_REPORTSTEP, STEP_S)
            en.set_time(EN_PATTERNSTEP, STEP_S)
            # Pattern step 0 is the config's first step, as in the generator.
            en.set_time(EN_PATTERNSTART, k0 * STEP_S)
            p_idx = [en.node_index(n) for n in sensors["pressure_sensors"]]
            a_idx = [en.node_index(n) for n in sensors["amrs"]]
            l_idx = [en.node_index(n) for n in sensors["level_sensors"]]
            f_idx = [en.link_index(n) for n in sensors["flow_sensors"]]
            leak_idx = [en.node_index(n) for n in leak_nodes]
            n_nodes = en.en.ENgetcount(EN_NODECOUNT)
            kinds = [en.en.ENgetnodetype(i) for i in range(1, n_nodes + 1)]
            junctions = [i for i in range(1, n_nodes + 1) if kinds[i - 1] == EN_JUNCTION and i not in set(leak_idx)]
            reservoirs = [i for i in range(1, n_nodes + 1) if kinds[i - 1] == EN_RESERVOIR]
            tanks = [i for i in range(1, n_nodes + 1) if kinds[i - 1] == EN_TANK]

            P = np.full((n_sim, len(p_idx)), np.nan)
            A = np.full((n_sim, len(a_idx)), np.nan)
            L = np.full((n_sim, len(l_idx)), np.nan)
            F = np.full((n_sim, len(f_idx)), np.nan)
            Q = np.full((n_sim, len(leak_idx)), np.nan)
            B = np.full((n_sim, 6), np.nan)  # supply, tank inflow, consumption, leakage, tank level, pump on
            tank_idx, pump_idx = en.node_index("T1"), en.link_index("PUMP_1")
            if warm is not None:
                # The state a window cannot know: tank level and the pump's on/off (hysteresis).
                en.set_node(tank_idx, EN_TANKLEVEL, float(warm["tank_level_m"]))
                en.check(
                    en.lib.EN_setlinkvalue(en.proj, pump_idx, EN_INITSTATUS, ctypes.c_double(float(warm["pump_on"]))),
                    "initstatus",
                )
            en.en.ENopenH()
            en.en.ENinitH(0)
            t = 0
            while True:
                k = k0 + t // STEP_S  # config step in force
                en.set_option(EN_DEMANDMULT, multiplier[k])
                for j, idx in enumerate(leak_idx):
                    en.set_node(idx, EN_EMITTER, coeffs[j, k])
                t = en.en.ENrunH()
                if t % STEP_S == 0:
                    r = t // STEP_S
                    P[r] = [en.node(i, EN_PRESSURE) for i in p_idx]
                    A[r] = [en.node(i, EN_DEMAND) for i in a_idx]
                    L[r] = [en.node(i, EN_PRESSURE) for i in l_idx]
                    F[r] = [en.link(i, EN_FLOW) for i in f_idx]
                    # Leak outflow from the emitter law, q = C * sqrt(p): EPANET 2.2 keeps
                    # reporting a node's last emitter flow in EN_DEMAND after its
                    # coefficient is set back to 0 (the hydraulics do drop it).
                    Q[r] = [coeffs[j, k] * math.sqrt(max(en.node(i, EN_PRESSURE), 0.0)) for j, i in enumerate(leak_idx)]
                    B[r, 0] = -sum(en.node(i, EN_DEMAND) for i in reservoirs)
                    B[r, 1] = sum(en.node(i, EN_DEMAND) for i in tanks)
                    B[r, 2] = sum(en.node(i, EN_DEMAND) for i in junctions)
                    B[r, 3] = Q[r].sum() if len(leak_idx) else 0.0
                    B[r, 4] = en.node(tank_idx, EN_PRESSURE)
                    B[r, 5] = 1.0 if en.link(pump_idx, EN_STATUS) > 0 else 0.0
                if en.en.ENnextH() <= 0:
                    break
            en.en.ENcloseH()
        finally:
            en.close()

    keep = slice(k_first - k0, k_last - k0 + 1)
    index = pd.DatetimeIndex(axis[k_first : k_last + 1], name="timestamp")

    def frame(values, columns):
        return pd.DataFrame(values[keep], index=index, columns=columns)

    pressures = noisy(frame(P, sensors["pressure_sensors"]), "pressure", args.seed, args.noise_scale)
    flows = noisy(frame(F, sensors["flow_sensors"]), "flow", args.seed, args.noise_scale)
    # AMR demands in L/h, as the generator's 'Demands (L_h)' sheet.
    demands = noisy(frame(A * 1000, sensors["amrs"]), "amr", args.seed, args.noise_scale)
    levels = noisy(frame(L, sensors["level_sensors"]), "level", args.seed, args.noise_scale)
    leak_df = frame(Q, [l["pipe"] for l in leaks])
    balance = frame(B, ["supply_m3h", "tank_inflow_m3h", "consumption_m3h", "leakage_m3h", "tank_level_m", "pump_on"])
    balance["demand_multiplier"] = multiplier[k_first : k_last + 1]

    fmt = dict(date_format="%Y-%m-%d %H:%M", float_format="%.2f")
    pressures.to_csv(out / "pressures.csv", **fmt)
    flows.to_csv(out / "flows.csv", **fmt)
    demands.to_csv(out / "demands.csv", **fmt)
    levels.to_csv(out / "levels.csv", **fmt)
    leak_df.to_csv(out / "leaks.csv", date_format=fmt["date_format"], float_format="%.4f")
    balance.to_csv(out / "balance.csv", date_format=fmt["date_format"], float_format="%.4f")

    meta = {
        "config": args.config,
        "config_file": CONFIG_FILES[args.config],
        "start": str(start),
        "end": str(end),
        "steps": len(index),
        "simulated_from": str(sim_start),
        "spinup_days": spinup / pd.Timedelta(days=1),
        "warm_start": args.warm_start,
        "seed": args.seed,
        "noise_scale": args.noise_scale,
        "noise_std": NOISE,
        "demand_variation": {
            "enabled": args.demand_variation == "on",
            "season_amplitude": SEASON_AMPLITUDE,
            "season_peak_day": SEASON_PEAK_DAY,
            "daily_ar1_sigma": DAILY_SIGMA,
            "daily_ar1_phi": DAILY_PHI,
        },
        "pdd": {"required_pressure_m": 25, "minimum_pressure_m": 0, "exponent": 0.5},
        "epanet_accuracy": ACCURACY,
        "leaks": [
            {**{k: str(v) for k, v in l.items()}, "node": n, "active_in_window": bool(coeffs[j, k_first : k_last + 1].any())}
            for j, (l, n) in enumerate(zip(leaks, leak_nodes))
        ],
        "units": {"pressures": "m", "flows": "m3/h", "demands": "L/h", "levels": "m", "leaks": "m3/h", "balance": "m3/h"},
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "wntr": wntr.__version__,
            "epanet": epanet_version,
        },
        "host": platform.node(),
        "run_time_s": round(time.time() - t0, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{args.config} {start} .. {end}: {len(index)} steps in {meta['run_time_s']} s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
