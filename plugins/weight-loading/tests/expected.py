#!/usr/bin/env python3
"""Independent ground truth for the weight-loading service on the mine's CSVs.

Written from the rules in plugins/weight-loading/README.md, not from the
service's code: it reads the two CSVs with Python's csv module and prints,
as JSON, what the service must report per (truck, shift), per site shift,
its KPIs and its counters, under the default config.

Usage: expected.py StdShiftLoadsDumpsFuel.train.csv SfdShiftFueltrucksAllUpdatedFin.csv
"""
import csv
import json
import sys
from collections import defaultdict
from datetime import datetime, timedelta

# Default calibration (manifest [config]).
RATED = 290.0
TARGET = 290.0
BAND = 5.0
OVERLOAD_PCT = 110.0
MIN_PAYLOAD, MAX_PAYLOAD, SENTINEL = 0.0, 400.0, 65000.0
MAX_DURATION, MAX_CYCLE = 14400.0, 43200.0
MIN_SPAN = 1800.0  # seconds; shorter spans give no tonnes-per-hour
MAX_LITRES, MAX_FUEL_QUEUE = 10000.0, 600.0
# A cycle holding more than this outside its seven stages spans a stop, not
# a haul: flagged, its durations kept out of the means (README).
MAX_UNACCOUNTED = 3600.0
# Split records: times and durations are whole seconds (two roundings); the
# dump and loader scales agree within 1 t on one load.
TIME_TOL, WEIGHT_TOL = 2.0, 1.0

LOW = TARGET * (1 - BAND / 100)
HIGH = TARGET * (1 + BAND / 100)
LIMIT = RATED * OVERLOAD_PCT / 100

# Message field <- CSV column (the message schema); these define the record's content.
FIELDS = [
    ("truck", "Truck"), ("loader", "Excav_x"), ("shift", "ShiftId_x"), ("load_location", "LoadLocation"),
    ("dump_location", "DumpLocation"), ("dump_unit", "DumpLocationUnit"), ("payload_t", "Tons_x"),
    ("dump_payload_t", "Tons_y"), ("assign_time", "AssignTimestamp_x"), ("arrive_time", "ArriveTimestamp_x"),
    ("full_time", "FullTimestamp"), ("dump_arrive_time", "ArriveTimestamp_y"), ("empty_time", "EmptyTimestamp"),
    ("queue_s", "QueueTime_x"), ("spot_s", "SpotTime_x"), ("loading_s", "LoadingTime"),
    ("empty_travel_s", "EmptyTravelDuration"), ("full_travel_s", "FullTravelDuration"),
    ("dump_queue_s", "QueueTime_y"), ("dumping_s", "DumpingTime"), ("empty_dist_m", "Dist_empty(m)"),
    ("full_dist_m", "Dist_full(m)"),
]
DURATION_COLUMNS = [("queue_s", "QueueTime_x"), ("spot_s", "SpotTime_x"), ("loading_s", "LoadingTime"),
                    ("empty_travel_s", "EmptyTravelDuration"), ("full_travel_s", "FullTravelDuration"),
                    ("dump_queue_s", "QueueTime_y"), ("dumping_s", "DumpingTime")]


def ts(s):
    return datetime.strptime(s, "%Y-%m-%d %H:%M:%S")


def us_minutes(s):
    """`M/D/YYYY H:MM` -> datetime."""
    return datetime.strptime(s, "%m/%d/%Y %H:%M")


def new_ts():
    return {"cycles": 0, "tonnes": 0.0, "ratio_sum": 0.0, "under": 0, "ok": 0, "over": 0, "overload": 0,
            "queue_total": 0.0, "queue_n": 0, "start": None, "end": None, "refuels": 0, "litres": 0.0,
            "rejected": defaultdict(int), "flagged": defaultdict(int)}


def opt_ts(r, col):
    return ts(r[col]) if r[col] else None


def opt_num(r, col):
    return float(r[col]) if r[col] else None


def consistency(r):
    """(failed checks, checks made): the README's five self-consistency checks
    of a haul-cycle record, each made only when its cells are filled."""
    full = ts(r["FullTimestamp"])
    dump, empty = opt_ts(r, "ArriveTimestamp_y"), opt_ts(r, "EmptyTimestamp")
    arrive = opt_ts(r, "ArriveTimestamp_x")
    results = []
    if dump or empty:
        seq = [full] + [t for t in (dump, empty) if t]
        results.append(all(a <= b for a, b in zip(seq, seq[1:])))

    def fits(cols, a, b):
        vals = [opt_num(r, c) for c in cols]
        if None in vals or a is None or b is None:
            return None
        return sum(vals) <= (b - a).total_seconds() + TIME_TOL
    for ok in (fits(["FullTravelDuration"], full, dump),
               fits(["QueueTime_y", "DumpingTime"], dump, empty),
               fits(["QueueTime_x", "SpotTime_x", "LoadingTime"], arrive, full)):
        if ok is not None:
            results.append(ok)
    w = opt_num(r, "Tons_y")
    if w is not None:
        results.append(abs(w - float(r["Tons_x"])) <= WEIGHT_TOL)
    return (sum(1 for ok in results if not ok), len(results))


def payload_reason(p):
    if p == 0:
        return "zero_payload"
    if p >= SENTINEL:
        return "sentinel_payload"
    if p <= MIN_PAYLOAD or p > MAX_PAYLOAD:
        return "implausible_payload"
    return None


def time_jump(r):
    """A cycle whose times lie further than MAX_CYCLE from its full time."""
    full = ts(r["FullTimestamp"])
    for col in ("AssignTimestamp_x", "ArriveTimestamp_x", "ArriveTimestamp_y", "EmptyTimestamp"):
        t = opt_ts(r, col)
        if t is not None and abs((t - full).total_seconds()) > MAX_CYCLE:
            return "time_jump"
    return None


def main(cycles_csv, fuel_csv):
    with open(cycles_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(fuel_csv, newline="") as f:
        fuel_rows = list(csv.DictReader(f))

    per = defaultdict(new_ts)            # (truck, shift) -> aggregates
    loaders = defaultdict(lambda: {"cycles": 0, "ratio_sum": 0.0, "under": 0, "overload": 0, "queue_total": 0.0, "queue_n": 0})
    counters = defaultdict(int)

    # Cycles, each truck in completion order (empty time, then file order).
    by_truck = defaultdict(list)
    for i, r in enumerate(rows):
        by_truck[r["Truck"]].append((r["EmptyTimestamp"], i, r))
    for truck, items in by_truck.items():
        items.sort(key=lambda x: (x[0], x[1]))
        # Redeliveries out first: the same (shift, full, content) again.
        seen = set()
        fresh = []
        for _, _, r in items:
            key = (r["ShiftId_x"], r["FullTimestamp"], tuple(r[c] for _, c in FIELDS))
            if key in seen:
                counters["redelivered"] += 1
                continue
            seen.add(key)
            fresh.append(r)
        # Split records: of the records of one load (same full time) with a
        # usable payload, the most consistent one is the cycle; arrival order
        # plays no part.
        winner = {}
        for r in fresh:
            full = ts(r["FullTimestamp"])
            if payload_reason(float(r["Tons_x"])) or time_jump(r):
                continue
            c = consistency(r)
            # Then the earlier dump: a load is dumped once, the next dump is
            # the next load's. Absent times sort last.
            far = datetime.max
            key = (c[0], -c[1], opt_ts(r, "ArriveTimestamp_y") or far, opt_ts(r, "EmptyTimestamp") or far)
            best = winner.get(full)
            if best is not None and key == best[0] and best[1] is not r:
                raise SystemExit(f"tie between split records of {truck} at {full}: the data needs the service's fingerprint tie-break")
            if best is None or key < best[0]:
                winner[full] = (key, r)
        last_empty = None
        for r in fresh:
            shift, full, empty = r["ShiftId_x"], ts(r["FullTimestamp"]), ts(r["EmptyTimestamp"])
            p = float(r["Tons_x"])
            reason = time_jump(r) or payload_reason(p)
            if reason is None and winner[full][1] is not r:
                reason = "duplicate"
            elif reason is None and last_empty is not None and empty < last_empty:
                reason = "out_of_order"
            agg = per[(truck, shift)]
            if reason:
                agg["rejected"][reason] += 1
                counters["rejected_" + reason] += 1
                continue
            last_empty = empty if last_empty is None else max(last_empty, empty)
            counters["cycles_accepted"] += 1
            agg["cycles"] += 1
            agg["tonnes"] += p
            agg["ratio_sum"] += p / RATED
            cls = "overload" if p > LIMIT else "over" if p > HIGH else "under" if p < LOW else "ok"
            agg[cls] += 1
            parts = [float(r[col]) for _, col in DURATION_COLUMNS]
            total = (empty - ts(r["AssignTimestamp_x"])).total_seconds()
            flagged = (all(0 <= v <= MAX_DURATION for v in parts) and total - sum(parts) > MAX_UNACCOUNTED)
            if flagged:
                agg["flagged"]["unaccounted_time"] += 1
                counters["flagged_unaccounted_time"] += 1
            for name, col in DURATION_COLUMNS:
                v = float(r[col])
                if not (0 <= v <= MAX_DURATION):
                    counters["dropped_" + name] += 1
                    continue
                if name == "queue_s" and not flagged:
                    agg["queue_total"] += v
                    agg["queue_n"] += 1
                    ld = loaders[r["Excav_x"]]
                    ld["queue_total"] += v
                    ld["queue_n"] += 1
            cycle_s = (empty - ts(r["AssignTimestamp_x"])).total_seconds()
            if not (0 <= cycle_s <= MAX_CYCLE):
                counters["dropped_cycle_s"] += 1
            times = [ts(r[c]) for c in ("AssignTimestamp_x", "ArriveTimestamp_x", "FullTimestamp",
                                         "ArriveTimestamp_y", "EmptyTimestamp")]
            start = min(times[0], times[1], times[2])
            if flagged:
                # Hauling began with the empty travel, not at the assignment
                # that preceded a stop.
                began = max(times[0], times[1] - timedelta(seconds=float(r["EmptyTravelDuration"])))
                start = min(began, times[1], times[2])
            end = max(times[2], times[3], times[4])
            agg["start"] = start if agg["start"] is None else min(agg["start"], start)
            agg["end"] = end if agg["end"] is None else max(agg["end"], end)
            ld = loaders[r["Excav_x"]]
            ld["cycles"] += 1
            ld["ratio_sum"] += p / RATED
            if cls == "under":
                ld["under"] += 1
            if cls == "overload":
                ld["overload"] += 1

    # Refuels: an identical record is a redelivery; same truck and start with
    # other content is a duplicate.
    fuel_seen = set()
    fuel_accepted = set()
    # Handled in the order they are sent: by end time, then file order.
    fuel_rows = [r for _, _, r in sorted((us_minutes(r["EndTimestamp"]), i, r) for i, r in enumerate(fuel_rows))]
    for r in fuel_rows:
        truck, shift = r["Equipment"], r["ShiftId"]
        start, end = us_minutes(r["StartTimestamp"]), us_minutes(r["EndTimestamp"])
        content = (r["Eqtype"], r["Fuel00"], r["Queue(min)"], end)
        if (truck, shift, start, content) in fuel_seen:
            counters["redelivered"] += 1
            continue
        fuel_seen.add((truck, shift, start, content))
        litres = float(r["Fuel00"])
        reason = None
        if end < start:
            reason = "fuel_time_order"
        elif not (0 < litres <= MAX_LITRES):
            reason = "fuel_implausible_litres"
        elif (truck, start) in fuel_accepted:
            reason = "fuel_duplicate"
        agg = per[(truck, shift)]
        if reason:
            agg["rejected"][reason] += 1
            counters["rejected_" + reason] += 1
            continue
        fuel_accepted.add((truck, start))
        counters["refuels_accepted"] += 1
        agg["refuels"] += 1
        agg["litres"] += litres
        q = float(r["Queue(min)"])
        if not (0 <= q <= MAX_FUEL_QUEUE):
            counters["dropped_fuel_queue_min"] += 1

    def span_h(a):
        return (a["end"] - a["start"]).total_seconds() / 3600 if a["cycles"] else None

    def rate(tonnes, h):
        return tonnes / h if h is not None and h * 3600 >= MIN_SPAN and h > 0 else None

    def payload_junk(a):
        return sum(a["rejected"].get(k, 0) for k in ("zero_payload", "sentinel_payload", "implausible_payload"))

    truck_shift = {}
    site = defaultdict(lambda: {"cycles": 0, "tonnes": 0.0, "queue_total": 0.0, "queue_n": 0, "under": 0, "overload": 0,
                                "refuels": 0, "litres": 0.0, "rejected": defaultdict(int), "start": None, "end": None,
                                "trucks": 0, "trucks_working": 0, "trucks_rejected_only": [],
                                "flagged": defaultdict(int)})
    for (truck, shift), a in per.items():
        h = span_h(a)
        truck_shift[f"{truck}|{shift}"] = {
            "cycles": a["cycles"], "tonnes": a["tonnes"],
            "mean_payload_t": a["tonnes"] / a["cycles"] if a["cycles"] else None,
            "queue_s_total": a["queue_total"], "queue_s_mean": a["queue_total"] / a["queue_n"] if a["queue_n"] else None,
            "under": a["under"], "ok": a["ok"], "over": a["over"], "overload": a["overload"],
            "span_h": h, "tonnes_per_hour": rate(a["tonnes"], h),
            "refuels": a["refuels"], "litres": a["litres"], "rejected": dict(a["rejected"]),
            "flagged": dict(a["flagged"]),
        }
        s = site[shift]
        cycle_rejections = sum(n for k, n in a["rejected"].items() if not k.startswith("fuel_"))
        if a["cycles"]:
            s["trucks_working"] += 1
        elif cycle_rejections:
            s["trucks_rejected_only"].append(truck)
        for k, n in a["flagged"].items():
            s["flagged"][k] += n
        s["trucks"] += 1
        for k in ("cycles", "tonnes", "queue_total", "queue_n", "under", "overload", "refuels", "litres"):
            s[k] += a[k]
        for k, n in a["rejected"].items():
            s["rejected"][k] += n
        if a["cycles"]:
            s["start"] = a["start"] if s["start"] is None else min(s["start"], a["start"])
            s["end"] = a["end"] if s["end"] is None else max(s["end"], a["end"])
    site_shift = {}
    for shift, s in site.items():
        h = (s["end"] - s["start"]).total_seconds() / 3600 if s["cycles"] else None
        site_shift[shift] = {
            "trucks": s["trucks"], "cycles": s["cycles"], "tonnes": s["tonnes"],
            "mean_payload_t": s["tonnes"] / s["cycles"] if s["cycles"] else None,
            "queue_s_total": s["queue_total"], "queue_s_mean": s["queue_total"] / s["queue_n"] if s["queue_n"] else None,
            "span_h": h, "tonnes_per_hour": rate(s["tonnes"], h),
            "overload_share": s["overload"] / s["cycles"] if s["cycles"] else None,
            "underload_share": s["under"] / s["cycles"] if s["cycles"] else None,
            "refuels": s["refuels"], "litres": s["litres"], "rejected": dict(s["rejected"]),
            "trucks_working": s["trucks_working"], "trucks_rejected_only": sorted(s["trucks_rejected_only"]),
            "flagged": dict(s["flagged"]),
        }

    # KPIs over every shift.
    kpi = {}
    # Tonnes per hour: truck-shifts spanning >= MIN_SPAN. Fuel: shifts with
    # cycle records, litres scaled by the share of weighed cycles.
    trucks = defaultdict(lambda: {"rate_tonnes": 0.0, "hours": 0.0, "ratio_sum": 0.0, "cycles": 0,
                                  "f_litres": 0.0, "f_tonnes": 0.0, "f_ok": 0, "f_junk": 0})
    for (truck, shift), a in per.items():
        t = trucks[truck]
        h = span_h(a)
        if rate(a["tonnes"], h) is not None:
            t["rate_tonnes"] += a["tonnes"]
            t["hours"] += h
        t["ratio_sum"] += a["ratio_sum"]
        t["cycles"] += a["cycles"]
        if a["cycles"] + payload_junk(a) > 0:
            t["f_litres"] += a["litres"]
            t["f_tonnes"] += a["tonnes"]
            t["f_ok"] += a["cycles"]
            t["f_junk"] += payload_junk(a)
    fuel_l = fuel_t = 0.0
    for truck, t in trucks.items():
        if t["hours"] > 0:
            kpi[f"tonnes_per_hour/{truck}"] = t["rate_tonnes"] / t["hours"]
        if t["cycles"]:
            kpi[f"payload_ratio/{truck}"] = t["ratio_sum"] / t["cycles"]
        if t["f_litres"] > 0 and t["f_tonnes"] > 0:
            litres = t["f_litres"] * t["f_ok"] / (t["f_ok"] + t["f_junk"])
            kpi[f"fuel_per_tonne/{truck}"] = litres / t["f_tonnes"]
            fuel_l += litres
            fuel_t += t["f_tonnes"]
    for loader, ld in loaders.items():
        if ld["queue_n"]:
            kpi[f"loader_queue_s/{loader}"] = ld["queue_total"] / ld["queue_n"]
        if ld["cycles"]:
            kpi[f"overload_share/{loader}"] = ld["overload"] / ld["cycles"]
            kpi[f"underload_share/{loader}"] = ld["under"] / ld["cycles"]
            kpi[f"payload_ratio/{loader}"] = ld["ratio_sum"] / ld["cycles"]
    rated = [s for s in site_shift.values() if s["tonnes_per_hour"] is not None]
    kpi["tonnes_per_hour"] = sum(s["tonnes"] for s in rated) / sum(s["span_h"] for s in rated)
    total_cycles = sum(s["cycles"] for s in site_shift.values())
    kpi["payload_ratio"] = sum(t["ratio_sum"] for t in trucks.values()) / total_cycles
    kpi["overload_share"] = sum(a["overload"] for a in per.values()) / total_cycles
    kpi["underload_share"] = sum(a["under"] for a in per.values()) / total_cycles
    kpi["loader_queue_s"] = sum(a["queue_total"] for a in per.values()) / sum(a["queue_n"] for a in per.values())
    kpi["fuel_per_tonne"] = fuel_l / fuel_t
    rejected_cycles = sum(n for a in per.values() for k, n in a["rejected"].items() if not k.startswith("fuel_"))
    kpi["rejected_share"] = rejected_cycles / (rejected_cycles + total_cycles)

    json.dump({"truck_shift": truck_shift, "site_shift": site_shift, "kpi": kpi, "counters": dict(counters)},
              sys.stdout, indent=None, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
