#!/usr/bin/env python3
"""Offline localisation check for leak-detection's pipe matching, on cached simulated seeds.

For every abrupt 2019 leak of the given seeds, takes its true onset, re-implements the
service's calibration (2018-01-01..01-28, labelled 2018 leaks taken out; AMR flow balance;
per-sensor pressure regression on [c, c², level, pump, pump²]) in numpy, and matches the
pressure residual change 12 h and 24 h after the onset (against the 24 h before it) to every
pipe's signature, sensors alone (w 0) and with their residual correlation learnt from hourly,
6-hourly or daily calibration residuals at weight w. Prints, per variant, the share of leaks
whose best pipe is within 300 m (BattLeDIM's pipe distance), the median distance and the
mean confidence. It isolates the matching from the detector's lifecycle; use tuning seeds
only (it reads the ground truth).

Usage: locate_study.py SEEDS (comma-separated, e.g. 2020,2021,2022,2023; cached by
`cargo xtask eval leak --set tuning` in /var/tmp/outpost-data/battledim).
"""
import json
import sys
import numpy as np, pandas as pd
from scipy.sparse.csgraph import dijkstra
from scipy.sparse import coo_matrix

C = '/var/tmp/outpost-data/battledim'
M = json.load(open(f'{C}/leak-model.json'))
sensors = M['sensors']
S = np.array(M['sensitivity'])  # nodes x sensors
n1 = np.array(M['pipes']['n1']); n2 = np.array(M['pipes']['n2']); L = np.array(M['pipes']['length_m'])
pipes = M['pipes']['ids']; pidx = {p: i for i, p in enumerate(pipes)}
SIG = (S[n1] + S[n2]) / 2  # pipes x sensors
nn = len(M['nodes']['ids'])
g = coo_matrix((np.r_[L, L], (np.r_[n1, n2], np.r_[n2, n1])), shape=(nn, nn)).tocsr()
D = dijkstra(g, directed=False)

def pdist(a, b):
    if a == b: return 0.0
    d = min(D[n1[a], n1[b]], D[n1[a], n2[b]], D[n2[a], n1[b]], D[n2[a], n2[b]])
    return d + L[a] / 2 + L[b] / 2

def hourly(d):
    out = {}
    for f in ['pressures', 'flows', 'demands', 'levels', 'leaks']:
        x = pd.read_csv(f'{d}/{f}.csv', index_col=0, parse_dates=True)
        out[f] = x
    return out

def prep(raw, correct_leaks=False):
    P = raw['pressures'][sensors].copy(); F = raw['flows'].copy(); lk = raw['leaks']
    if correct_leaks:
        F['p227'] = F['p227'] - lk.sum(axis=1)
        for p in lk.columns:
            q = lk[p].values
            if q.any():
                P = P - np.outer(q, SIG[pidx[p]])
    hp = P.resample('h').mean(); hf = F.resample('h').mean()
    lv = raw['levels']['T1']
    lmean = lv.resample('h').mean()
    lend = lv.resample('h').apply(lambda s: s.iloc[-2:].mean())
    amr = raw['demands'].resample('h').mean() / 1000.0
    return hp, hf, lmean, lend, amr

def lstsq(X, y, ridge=1e-6):
    mu = X.mean(0); sd = X.std(0); sd[sd < 1e-12] = 1
    Z = (X - mu) / sd; ym = y.mean()
    A = Z.T @ Z + ridge * len(y) * np.eye(Z.shape[1]); b = np.linalg.solve(A, Z.T @ (y - ym))
    return lambda Xn: ym + ((Xn - mu) / sd) @ b

def features(c, l, pu):
    return np.c_[c, c * c, l, pu, pu * pu]

def calibrate(hist):
    raw = hourly(hist)
    t0, t1 = '2018-01-01', '2018-01-28 23:59'
    for k in raw: raw[k] = raw[k].loc[t0:t1]
    hp, hf, lm, le, amr = prep(raw, True)
    q = (hf['p227'] + hf['p235']).values
    dl = le.diff().values
    X = np.c_[amr.values, dl]
    ok = ~np.isnan(dl)
    fin = lstsq(X[ok], q[ok])
    c = fin(np.c_[amr.values, np.zeros(len(amr))])
    pm = []
    res = []
    for s in sensors:
        Xp = features(c, lm.values, hf['PUMP_1'].values); y = hp[s].values
        f = lstsq(Xp, y); pm.append(f); res.append(y - f(Xp))
    res = np.array(res).T
    return fin, pm, res

def residuals(ev, fin, pm):
    raw = hourly(ev)
    hp, hf, lm, le, amr = prep(raw)
    q = (hf['p227'] + hf['p235']).values
    dl = le.diff().values
    e = q - fin(np.c_[amr.values, dl])
    c = fin(np.c_[amr.values, np.zeros(len(amr))])
    r = np.array([hp[s].values - pm[k](features(c, lm.values, hf['PUMP_1'].values)) for k, s in enumerate(sensors)]).T
    lk = raw['leaks'].resample('h').mean()
    return hp.index, e, r, lk

def whitener(sig, corr, w, floor=0.05):
    s = np.maximum(sig, floor)
    Cm = w * corr + (1 - w) * np.eye(len(s))
    np.fill_diagonal(Cm, 1.0)
    return np.linalg.cholesky(Cm * np.outer(s, s))

def locate(dr, de, Lc):
    y = np.linalg.solve(Lc, dr); Sw = np.linalg.solve(Lc, SIG.T).T  # pipes x sensors
    tau = max(0.5 * abs(de), 1.0)
    ds = de / tau**2 + Sw @ y; ss = 1 / tau**2 + (Sw**2).sum(1)
    q = np.maximum(ds / ss, 0)
    err = ((q - de) / tau)**2 + ((y[None, :] - q[:, None] * Sw)**2).sum(1)
    null = (y**2).sum() + (de / tau)**2
    return err, null

def main():
    seeds = [int(x) for x in sys.argv[1].split(',')]
    rows=[]
    for seed in seeds:
        fin, pm, cres = calibrate(f'{C}/historical-seed{seed}')
        sig = cres.std(0, ddof=6)
        corrs = {'h1': np.corrcoef(cres.T)}
        for k in [6, 24]:
            n = len(cres)//k*k
            m = cres[:n].reshape(-1, k, cres.shape[1]).mean(1)
            corrs[f'h{k}'] = np.corrcoef(m.T)
        idx, e, r, lk = residuals(f'{C}/evaluation-seed{seed}', fin, pm)
        for p in lk.columns:
            on = np.flatnonzero(lk[p].values > 0)
            if len(on) == 0 or on[0] < 30: continue
            o = on[0]
            if lk[p].values[o+1:o+13].mean() < 2: continue  # abrupt only
            for post in [12, 24]:
                dr = r[o+1:o+1+post].mean(0) - r[o-24:o].mean(0); de = np.nanmean(e[o+1:o+1+post]) - np.nanmean(e[o-24:o])
                for cn, cm in corrs.items():
                    for w in [0, 0.5, 0.8, 0.9, 0.95]:
                        if w == 0 and cn != 'h1': continue
                        Lc = whitener(sig, cm, w)
                        err, null = locate(dr, de, Lc)
                        b = int(np.argmin(err))
                        rows.append(dict(seed=seed, leak=p, post=post, v=f'{cn}_w{w}', dist=pdist(b, pidx[p]), conf=1-err[b]/null))
    df = pd.DataFrame(rows); df['ok'] = df.dist <= 300
    print(df.groupby(['post','v']).agg(n=('ok','size'), ok=('ok','mean'), med=('dist','median'), conf=('conf','mean')).round(3))


if __name__ == '__main__':
    main()
