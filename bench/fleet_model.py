#!/usr/bin/env python3
"""A model of the fleet storm (bench.py section `fleet`), for trying pacing
rules in seconds instead of minutes. Not a benchmark: nothing here is
measured, and the figures that count are `make bench`'s.

32 hosts of 100-300 secrets (the bench's random.Random(16) draw) decrypt
against a token bucket of 100 Decrypt/s and a burst of 10, through a model
of what a kmsfs daemon does per call: the AdaptiveLimiter (calls in flight,
halved per throttle), `RateAdapter` (AWS/RateAdapter.swift, ported as of
the commit that added this file: unpaced until the first throttle, cuts of
0.7 once per burst, growth 0.2/s then +1/s per quiet second, held cuts past
45% throttled, waits stretched by a cut) and the retry backoff (full
jitter from 50 ms, capped at 1 s). `prefetch`: 8 workers after one first
call alone; `boot`: one reader, calls one after another. Latencies 4-20 ms.

    python3 bench/fleet_model.py                 # the port as it is
    python3 bench/fleet_model.py decrease=0.8 expo=0.1 ...

prints time ÷ ideal, amplification and fairness (slowest ÷ median host),
means over 8 seeds. Knobs: the RateAdapter's (decrease, increase, accel,
steady, floor, cutSpacing, minCut, window, persist) and three explored in
issue 16 (bench/notes.md): expo (exponential growth per quiet second),
wexp/bref/wlo/whi (growth weighted by the host's backlog to that power),
ltc=1 (a loss-target controller: eta, pstar) and gt=1 (goodput tracking:
T, W, plo, phi, eps, grow, add).
"""
import heapq, random, math, sys, statistics, itertools

class RA:
    def __init__(s, P, now):
        s.P = P
        s.rate = None; s.tokens = 1.0; s.refilled = now
        s.lastCut = -1e9; s.lastThrottle = -1e9
        s.windowStart = now; s.wc = 0; s.ws = 0; s.wr = 0
        s.lastWR = None; s.lastWS = None
        s.sendsSinceCut = 0; s.thrSinceCut = 0; s.shareAtCut = None
        s.lastDecision = -1e9; s.rateBeforeCut = None; s.episodeStart = None
        s.gen = 0; s.stretch = 1.0
        s.backlog = None
        s.cuts = 0; s.held = 0

    def burst(s, r): return max(1, r * 0.1)

    def acquire(s, now):
        """returns wait (may be stretched later: we return slot & gen)"""
        P = s.P
        if s.rate is not None and now - s.lastThrottle >= P['quietReset']:
            s.rate = None
        if s.rate is not None:
            r = s.rate
            s.tokens = min(s.burst(r), s.tokens + (now - s.refilled) * r)
            s.refilled = now
            w = 0 if s.tokens >= 1 else (1 - s.tokens) / r
            s.tokens -= 1
        else:
            w = 0
        s.countSend(now + w)
        s.sendsSinceCut += 1
        return now + w, s.gen

    def restretch(s, slot, gen):
        if gen == s.gen: return None
        if slot > s.lastCut: slot = s.lastCut + (slot - s.lastCut) * s.stretch
        return slot, s.gen

    def countSend(s, t):
        s.roll(t); s.wc += 1

    def roll(s, now):
        el = now - s.windowStart
        if el < s.P['window']: return
        recent = el < 2 * s.P['window']
        s.lastWR = s.wc / el if recent else None
        s.lastWS = s.ws / el if recent else None
        s.windowStart = now; s.wc = 0; s.ws = 0; s.wr = 0

    def measured(s, now):
        s.roll(now)
        el = max(now - s.windowStart, s.P['window'] / 10)
        sending, succ = s.wc / el, s.ws / el
        if not (now - s.windowStart < s.P['window'] / 2 and s.lastWR is not None):
            return sending, succ
        return max(s.lastWR, sending), max(s.lastWS, succ)

    def throttled(s, now):
        P = s.P
        s.thrSinceCut += 1
        s.roll(now); s.wr += 1
        s.lastThrottle = now
        sending, succ = s.measured(now)
        base = min(s.rate, max(sending, P['floor'])) if s.rate is not None else max(sending, P['floor'])
        if P.get('base_rate') and s.rate is not None: base = s.rate
        spacing = max(P['minCut'], P['cutSpacing'] / base)
        if not (s.rate is None or (now - s.lastDecision >= spacing and s.sendsSinceCut >= 4)): return
        share = s.thrSinceCut / s.sendsSinceCut if s.sendsSinceCut >= 4 else None
        s.sendsSinceCut = 0; s.thrSinceCut = 0; s.lastDecision = now
        r = s.rate
        if (r is not None and share is not None and s.shareAtCut is not None and s.episodeStart is not None
                and r <= s.episodeStart / 4 and share >= P['persist'] and share >= 0.8 * s.shareAtCut):
            s.held += 1; s.shareAtCut = share
            if s.rateBeforeCut is not None:
                s.rate = max(r, s.rateBeforeCut); s.rateBeforeCut = None
            return
        s.shareAtCut = share; s.rateBeforeCut = base
        through = succ if (s.wr >= 4 and (s.rate is None or P.get('through_always', True))) else math.inf
        dec = P['decrease'] if s.rate is not None else P.get('first_decrease', P['decrease'])
        cut = max(P['floor'], min(dec * base, through))
        if s.rate is None:
            s.tokens = min(s.tokens, 1); s.refilled = now; s.episodeStart = base
        if s.rate is not None and s.rate > cut:
            s.tokens = min(s.burst(cut), s.tokens + (now - s.refilled) * s.rate); s.refilled = now
            s.stretch = s.rate / cut
        else:
            s.stretch = 1
        s.gen += 1
        s.rate = cut; s.lastCut = now; s.cuts += 1

    def success(s, now):
        P = s.P
        s.roll(now); s.ws += 1; s.wr += 1
        if s.rate is None: return
        quiet = max(0, min(now - s.lastCut - P['steady'], P['quietReset']))
        w = 1.0
        if s.backlog is not None and P.get('wexp'):
            x = min(max(s.backlog() / P['bref'], P['wlo']), P['whi'])
            w = x ** P['wexp']
        s.rate = s.rate + w * (P['increase'] + P['accel'] * quiet) / s.rate + P.get('expo', 0) * min(quiet, P.get('qcap', 3))


class Limiter:
    def __init__(s, mx=16): s.limit = float(mx); s.mx = mx; s.inflight = 0; s.waiters = []


def simulate(P, mode="boot", seed=1, N=32, quota=100.0, burst=10, verbose=False):
    rnd = random.Random(seed)
    hrnd = random.Random(16)
    counts = [hrnd.randint(100, 300) for _ in range(N)]
    ev = []  # (time, seq, callback)
    seq = itertools.count()
    def at(t, f): heapq.heappush(ev, (t, next(seq), f))
    bucket = {'tokens': float(burst), 'last': 0.0}
    stats = {'sent': 0, 'served': 0}
    def take(now):
        b = bucket
        b['tokens'] = min(burst, b['tokens'] + (now - b['last']) * quota); b['last'] = now
        if b['tokens'] >= 1: b['tokens'] -= 1; return True
        return False
    ready = [None] * N
    hosts = []
    for i in range(N):
        h = {'i': i, 'left': counts[i], 'next': 0, 'done': 0, 'ra': None}
        hosts.append(h)
    lat = lambda: rnd.uniform(P.get('latlo', 0.004), P.get('lathi', 0.02))

    def start_host(h, now):
        h['ra'] = (GT if P.get('gt') else LTC if P.get('ltc') else RA)(P, now)
        h['ra'].backlog = lambda h=h: h['left'] - h['done']
        h['lim'] = Limiter(16)
        workers = 8 if mode == "prefetch" else 1
        h['workers'] = workers
        if mode == "prefetch":
            # one alone first
            h['first_pending'] = True
            h['next'] = 1
            do_call(h, 0, now, lambda t, h=h: after_first(h, t))
            at(now + 1.0, lambda t, h=h: after_first(h, t))
        else:
            worker_next(h, now)

    def after_first(h, now):
        if not h.get('first_pending'): return
        h['first_pending'] = False
        worker_next(h, now)  # the first worker continues
        for _ in range(h['workers'] - 1): worker_next(h, now)

    def worker_next(h, now):
        if h['next'] >= h['left']: return
        k = h['next']; h['next'] += 1
        do_call(h, k, now, lambda t, h=h: worker_next(h, t))

    def do_call(h, k, now, then, attempt=1):
        ra = h['ra']; lim = h['lim']
        # limiter acquire
        def got_slot(t):
            slot, gen = ra.acquire(t)
            wait_slot(t, slot, gen)
        def wait_slot(t, slot, gen):
            def wake(t2):
                r = ra.restretch(slot, gen)
                if r is None: send(t2)
                else: wait_slot(t2, r[0], r[1])
            at(max(t, slot), wake)
        def send(t):
            stats['sent'] += 1
            arrive = t + lat() / 2
            def at_server(t2):
                ok = take(t2)
                def resp(t3):
                    lim.inflight -= 1
                    if ok:
                        lim.limit = min(lim.mx, lim.limit + 1 / lim.limit)
                        ra.success(t3); stats['served'] += 1
                        h['done'] += 1
                        if h['done'] == h['left']: ready[h['i']] = t3
                        release_waiters(t3)
                        then(t3)
                    else:
                        lim.limit = max(1, lim.limit / 2)
                        ra.throttled(t3)
                        release_waiters(t3)
                        d = rnd.random() * min(1.0, 0.05 * 2 ** (min(attempt, 10) - 1))
                        at(t3 + d, lambda t4: do_call(h, k, t4, then, attempt + 1))
                at(t2 + (lat() / 2 if ok else 0.002), resp)
            at(arrive, at_server)
        def release_waiters(t):
            while lim.waiters and lim.inflight < int(lim.limit):
                f = lim.waiters.pop(0); lim.inflight += 1; at(t, f)
        if lim.inflight < int(lim.limit):
            lim.inflight += 1; got_slot(now)
        else:
            lim.waiters.append(got_slot)

    for h in hosts:
        at(rnd.uniform(0.1, 0.4) + (0 if mode == "prefetch" else 0), lambda t, h=h: start_host(h, t))
    while ev:
        t, _, f = heapq.heappop(ev)
        if t > 300: break
        f(t)
    mx = max(ready); med = statistics.median(ready)
    total = sum(counts)
    return dict(time=mx / (total / quota), amp=stats['sent'] / stats['served'], fair=mx / med)


BASE = dict(decrease=0.7, increase=0.2, accel=1.0, steady=2.0, floor=0.5, quietReset=30.0, cutSpacing=2.0,
            minCut=0.25, window=1.0, persist=0.45)

def run(P, label, seeds=range(1, 6)):
    for mode in ("prefetch", "boot"):
        rs = [simulate(P, mode, seed=s) for s in seeds]
        print("%-40s %-8s time %.3f  amp %.3f  fair %.3f   (time %s)" % (label, mode,
              statistics.mean(r['time'] for r in rs), statistics.mean(r['amp'] for r in rs), statistics.mean(r['fair'] for r in rs),
              " ".join("%.2f" % r['time'] for r in rs)), flush=True)

def first_cut(s, now):
    """The first throttle, as RateAdapter cuts: to 0.7 of the send rate, or
    to what got through once a few answers show it."""
    P = s.P
    sending, succ = s.measured(now)
    base = max(sending, P['floor'])
    through = succ if s.wr >= 4 else math.inf
    s.rate = max(P['floor'], min(P['decrease'] * base, through))
    s.tokens = min(s.tokens, 1); s.refilled = now; s.lastCut = now; s.gen += 1; s.stretch = 1


RA.first_cut = first_cut


class LTC(RA):
    """Loss-target: per response r *= (1 + eta (p* - x)); first throttle as RA; quiet growth."""
    def throttled(s, now):
        P = s.P
        s.roll(now); s.wr += 1
        s.lastThrottle = now
        if s.rate is None:
            s.first_cut(now)
            return
        old = s.rate
        new = max(P['floor'], old * (1 - P['eta'] * (1 - P['pstar'])))
        s.tokens = min(s.burst(new), s.tokens + (now - s.refilled) * old); s.refilled = now
        s.stretch = old / new; s.gen += 1; s.rate = new; s.lastCut = now

    def success(s, now):
        P = s.P
        s.roll(now); s.ws += 1; s.wr += 1
        if s.rate is None: return
        quiet = max(0, now - s.lastThrottle - P['steady'])
        w = 1.0
        if s.backlog is not None and P.get('wexp'):
            x = min(max(s.backlog() / P['bref'], P['wlo']), P['whi'])
            w = x ** P['wexp']
        s.rate = s.rate * (1 + P['eta'] * P['pstar']) + w * P.get('add', 0) / s.rate + P.get('expo', 0) * min(quiet, P.get('qcap', 3))


class GT(RA):
    """Goodput tracking: decisions once per interval over a sliding window."""
    def __init__(s, P, now):
        super().__init__(P, now)
        s.events = []   # (t, kind) kind: 's' sent, 'o' ok, 'x' throttled
        s.nextDecision = None

    def acquire(s, now):
        slot, gen = super().acquire(now)
        s.events.append((slot, 's'))
        return slot, gen

    def decide(s, now):
        P = s.P
        W = P['W']
        while s.events and s.events[0][0] < now - W: s.events.pop(0)
        S = sum(1 for t, k in s.events if k == 's'); G = sum(1 for t, k in s.events if k == 'o'); X = sum(1 for t, k in s.events if k == 'x')
        span = min(W, now - s.pacedSince) if s.pacedSince is not None else W
        span = max(span, 0.5)
        p = X / max(S, 1)
        sending = S / span
        old = s.rate
        if X == 0 or p < P['plo']:
            if sending >= 0.7 * s.rate:
                w = 1.0
                if s.backlog is not None and P.get('wexp'):
                    x = min(max(s.backlog() / P['bref'], P['wlo']), P['whi']); w = x ** P['wexp']
                s.rate = s.rate * (1 + P['grow'] * (1 if X == 0 else 0.3)) + P.get('add', 0) * w
        elif p > P['phi']:
            s.rate = max(P['floor'], min(s.rate, G / span * (1 + P['eps'])))
        else:
            w = 1.0
            if s.backlog is not None and P.get('wexp'):
                x = min(max(s.backlog() / P['bref'], P['wlo']), P['whi']); w = x ** P['wexp']
            s.rate = s.rate + P.get('add', 0) * w
        if s.rate < old:
            s.tokens = min(s.burst(s.rate), s.tokens + (now - s.refilled) * old); s.refilled = now
            s.stretch = old / s.rate; s.gen += 1; s.lastCut = now

    def tick(s, now):
        if s.rate is None: return
        if s.nextDecision is None: s.nextDecision = now + s.P['T']
        if now >= s.nextDecision:
            s.decide(now); s.nextDecision = now + s.P['T']

    def throttled(s, now):
        P = s.P
        s.roll(now); s.wr += 1
        s.lastThrottle = now
        s.events.append((now, 'x'))
        if s.rate is None:
            s.first_cut(now)
            s.pacedSince = now
            s.nextDecision = now + P['T']
            return
        s.tick(now)

    def success(s, now):
        s.roll(now); s.ws += 1; s.wr += 1
        s.events.append((now, 'o'))
        s.tick(now)


def main(argv):
    P = dict(BASE)
    for arg in argv:
        k, _, v = arg.partition("=")
        if k not in P and k not in ("expo", "qcap", "wexp", "bref", "wlo", "whi", "ltc", "gt", "eta", "pstar",
                                    "add", "T", "W", "plo", "phi", "eps", "grow", "base_rate", "through_always",
                                    "first_decrease", "latlo", "lathi"):
            raise SystemExit("fleet_model: unknown knob %s" % k)
        P[k] = float(v)
    given = set(a.partition("=")[0] for a in argv)
    for k, v in (("ltc", dict(eta=0.4, pstar=0.03, steady=1.0, expo=0.3)),
                 ("gt", dict(T=1.0, W=4.0, plo=0.02, phi=0.08, eps=0.03, grow=0.25, add=0.1))):
        if P.get(k):
            for kk, vv in v.items():
                if kk not in given:
                    P[kk] = vv
    run(P, " ".join(argv) or "RateAdapter as ported", seeds=range(1, 9))


if __name__ == "__main__":
    main(sys.argv[1:])

