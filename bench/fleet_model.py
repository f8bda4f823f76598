#!/usr/bin/env python3
"""A model of the fleet storm (bench.py section `fleet`), for trying pacing
rules in seconds instead of minutes. Not a benchmark: nothing here is
measured, and the figures that count are `make bench`'s.

32 hosts of 100-300 secrets (the bench's random.Random(16) draw) decrypt
against a token bucket of 100 Decrypt/s and a burst of 10, through a model
of what a kmsfs daemon does per call: the AdaptiveLimiter (calls in flight,
halved per throttle), `RateAdapter` (AWS/RateAdapter.swift, ported as of
the commit that added this file: unpaced until the first throttle, cuts to
0.5 once per burst, growth 0.2/s then +1/s per quiet second, held cuts past
45% throttled, waits stretched by a cut) and the retry backoff (full
jitter from 50 ms, capped at 1 s). `prefetch`: one first call alone, then
a worker more for every secret finished, up to 8; `boot`: one reader,
calls one after another. Latencies 4-20 ms.

    python3 bench/fleet_model.py                 # the port as it is
    python3 bench/fleet_model.py decrease=0.8 expo=0.1 ...
    python3 bench/fleet_model.py bucket          # loss of paced and random senders
    python3 bench/fleet_model.py phases          # where each client leaves quota unused
    python3 bench/fleet_model.py hosts=1 quota=20  # another fleet (default 32, 100/s, burst=10)

prints time ÷ ideal, amplification and fairness (slowest ÷ median host),
means over 8 seeds (`seeds=N` for more: one seed's time varies by ±0.1
in small fleets, so a difference under 0.03 at 8 seeds is noise), and below them the bench's two references, botocore's
`standard` and `adaptive` retry modes, modelled from botocore 1.43's
retries/ package on the same seeds. Knobs: the RateAdapter's (decrease,
increase, accel, steady, floor, cutSpacing, minCut, window, persist) and
rules explored in issue 16 (bench/notes.md): expo (exponential growth per quiet second),
wexp/bref/wlo/whi (growth weighted by the host's backlog to that power;
winit=1: the backlog it started with, not what is left),
ltc=1 (a loss-target controller: eta, pstar), gt=1 (goodput tracking:
T, W, plo, phi, eps, grow, add), dl=1 (pacing to a deadline the fleet
converges on: delta, c, qk, init, bmin, taumin, smax), unit=U (growth
times the rate at the last cut ÷ U, at least 1), ss=G (growth by G a
success after a first cut measured on fewer than ssmin sends, until the
next throttle), firstmin=N (no first cut before N sends), prop=K (cuts
of 1 - K × the share throttled since the last one, as DCTCP, never below
`decrease`), nothrough=1 (cuts never bounded by what got through) and
jit=J (`prefetch` starts after a random 0-J s), pw=N (`prefetch`
workers at most, 8 in kmsfs), mi=G (growth by G a success once mimin
sends in a row since the last cut went through), wtau=K (growth weighted
by the host's time left at its rate ÷ the time since its first success
plus t0, to the power K) and nopace=1 (no pacing, kmsfs's default: only
the retry backoff, from bbase doubling to bcap, or fixed between flo and
fhi seconds). Tried on 2026-12-01 (bench/notes.md, "Rules tried on
2026-12-01"): mlt=1 (a scale-free loss target: the rate times
exp(g × (pstar − throttled)) per answer, madd/rate more per success,
lin=1 for steps of constant size), probe=1 (one unpaced probe per host:
pgrow, pmin, pcap), qe/qg (growth once the successes since the last
throttle are qe times what the host's long-run throttled share makes
likely; qr takes it back at the next throttle), tk=K (a throttle costs
K pacing slots instead of a cut), cb=1 (compressed backoff: cbm times
the host's goodput, cbd seconds still after a throttle), fend/fmi
(faster growth past a share of the host's own secrets), hfloor (no cut
below that share of the host's goodput since its first throttle), rel=F
(no pacing for the last F of a host's secrets); norefs=1 leaves out the
botocore references. Tried on 2026-12-03 (bench/notes.md): ra=K (the
growth per quiet second at least K times the rate, not only `accel`
requests a second) and bfrac=1 (with wexp: the backlog's weight as the
share of the host's own secrets still to do, no `bref`).
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

    def _w(s):
        """The backlog weight (wexp, bref, wlo, whi), 1 without."""
        P = s.P
        if s.backlog is not None and P.get('wexp'):
            x = min(max(s.backlog() / (s.host['left'] if P.get('bfrac') else P['bref']), P['wlo']), P['whi'])
            return x ** P['wexp']
        return 1.0

    def released(s):
        P = s.P
        return P.get('rel') and s.host['left'] - s.host['done'] <= P['rel'] * s.host['left']

    def acquire(s, now):
        """returns wait (may be stretched later: we return slot & gen)"""
        P = s.P
        if s.released():
            s.countSend(now); return now, s.gen
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

    def probe_result(s, now, ok):
        """A probe's answer (probe=1): a success grows the paced rate by
        pgrow of itself and lets the next probe go at once; a throttle is
        not a cut, but doubles the wait before the next probe (pmin to pcap)."""
        P = s.P
        s.probing = False
        iv = getattr(s, 'probeIv', P.get('pmin', 0.5))
        s.roll(now)
        if ok:
            s.ws += 1; s.wr += 1
            s.rate = s.rate * (1 + P.get('pgrow', 0.1)) if s.rate is not None else None
            s.probeIv = max(P.get('pmin', 0.5), iv / 2); s.probeAt = now
        else:
            s.wr += 1; s.lastThrottle = now
            s.probeIv = min(P.get('pcap', 8.0), iv * 2); s.probeAt = now + s.probeIv * (0.5 + random.random())

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
        if P.get('nopace') or s.released(): return
        if P.get('qe'):
            s.runOk = 0
            s.pLong = getattr(s, 'pLong', P.get('qp0', 0.05)) * (1 - 1 / P.get('qn', 100)) + 1 / P.get('qn', 100)
            gb = getattr(s, 'gBase', None); s.gBase = None
            if P.get('qr') and gb is not None and s.rate is not None and s.rate > gb:
                # the first throttle after a run of multiplicative growth
                # takes back the growth (to at least qr of the rate reached),
                # and is not cut again
                old = s.rate
                new = max(gb, P['qr'] * old)
                s.tokens = min(s.burst(new), s.tokens + (now - s.refilled) * old); s.refilled = now
                s.stretch = old / new; s.gen += 1; s.rate = new; s.lastCut = now
                s.lastThrottle = now; s.lastDecision = now; s.sendsSinceCut = 0; s.thrSinceCut = 0
                s.roll(now); s.wr += 1
                return
        s.thrSinceCut += 1
        s.roll(now); s.wr += 1
        s.lastThrottle = now
        sending, succ = s.measured(now)
        base = min(s.rate, max(sending, P['floor'])) if s.rate is not None else max(sending, P['floor'])
        if P.get('base_rate') and s.rate is not None: base = s.rate
        spacing = max(P['minCut'], P['cutSpacing'] / base)
        if not (s.rate is None or (now - s.lastDecision >= spacing and s.sendsSinceCut >= 4)): return
        if s.rate is None and s.wc + (s.lastWR or 0) < P.get('firstmin', 0): return
        share = s.thrSinceCut / s.sendsSinceCut if s.sendsSinceCut >= 4 else None
        s.sendsSinceCut = 0; s.thrSinceCut = 0; s.lastDecision = now
        r = s.rate
        if (r is not None and share is not None and s.shareAtCut is not None and s.episodeStart is not None
                and r <= s.episodeStart / 4 and share >= P['persist'] and share >= 0.8 * s.shareAtCut):
            s.held += 1; s.shareAtCut = share
            if s.rateBeforeCut is not None:
                s.rate = max(r, s.rateBeforeCut); s.rateBeforeCut = None
            return
        s.shareAtCut = share; s.rateBeforeCut = base; s.lastBase = base
        through = succ if (s.wr >= 4 and not P.get('nothrough') and (s.rate is None or P.get('through_always', True))) else math.inf
        dec = P['decrease'] if s.rate is not None else P.get('first_decrease', P['decrease'])
        if P.get('prop') and s.rate is not None and share is not None:
            # DCTCP's cut: in proportion to the share of sends throttled
            # since the last decision, never deeper than `decrease`.
            dec = max(dec, 1 - P['prop'] * share)
        cut = max(P['floor'], min(dec * base, through))
        if P.get('hfloor') and s.rate is not None and now - s.epT >= P.get('hmin', 5.0):
            # never cut below hfloor times the host's own goodput since its
            # first throttle: a ratchet against a downward random walk
            cut = max(cut, min(s.rate, P['hfloor'] * s.epDone / (now - s.epT)))
        if s.rate is None:
            s.epT = now; s.epDone = 0
            s.tokens = min(s.tokens, 1); s.refilled = now; s.episodeStart = base
        if s.rate is not None and s.rate > cut:
            s.tokens = min(s.burst(cut), s.tokens + (now - s.refilled) * s.rate); s.refilled = now
            s.stretch = s.rate / cut
        else:
            s.stretch = 1
        s.gen += 1
        if P.get('ss'):
            # A first cut measured on fewer than `ssmin` sends knows nothing
            # of the share: grow by ss a success until the next throttle.
            s.uncertain = s.rate is None and s.wc < P.get('ssmin', 4)
        s.rate = cut; s.lastCut = now; s.cuts += 1

    def success(s, now):
        P = s.P
        s.roll(now); s.ws += 1; s.wr += 1
        if s.rate is None: return
        s.epDone = getattr(s, 'epDone', 0) + 1
        quiet = max(0, min(now - s.lastCut - P['steady'], P['quietReset']))
        w = s._w()
        if P.get('wtau') and s.backlog is not None:
            if getattr(s, 't_ep', None) is None: s.t_ep = now
            tau = s.backlog() / s.rate
            x = min(max(tau / (now - s.t_ep + P.get('t0', 5.0)), P.get('wlo', 0.1)), P.get('whi', 10))
            w = x ** P['wtau']
        if getattr(s, 'uncertain', False):
            s.rate *= 1 + P['ss']; return
        if P.get('mi') and s.thrSinceCut == 0 and s.sendsSinceCut >= P.get('mimin', 50):
            # Many sends in a row since the last cut and none throttled:
            # multiplicative growth, mi a success.
            s.rate *= 1 + P['mi']; return
        if P.get('unit'):
            w *= max(1.0, getattr(s, 'lastBase', 0) / P['unit'])
        if P.get('hw') and now - getattr(s, 'epT', now) >= P.get('hmin', 5.0):
            # growth weighted by the host's own goodput since its first
            # throttle over its rate, to the power hw: a host cut below
            # its own history grows back faster (mean reversion)
            hist = s.epDone / (now - s.epT)
            w *= min(max(hist / s.rate, 0.2), 5.0) ** P['hw']
        acc = P['accel']
        if P.get('ra'):
            # relative acceleration: per quiet second at least `ra` of the
            # rate (scale-free where the absolute step is small)
            acc = max(acc, P['ra'] * s.rate)
        s.rate = s.rate + w * (P['increase'] + acc * quiet) / s.rate + P.get('expo', 0) * min(quiet, P.get('qcap', 3))
        if P.get('qe'):
            # quiet counted in expected throttles: successes since the last
            # throttle times the host's long-run throttled share (an EWMA
            # over qn answers); past qe of them, multiplicative growth qg.
            s.runOk = getattr(s, 'runOk', 0) + 1
            pl = getattr(s, 'pLong', P.get('qp0', 0.05))
            s.pLong = pl * (1 - 1 / P.get('qn', 100))
            if s.runOk * s.pLong >= P['qe']:
                if getattr(s, 'gBase', None) is None: s.gBase = s.rate
                s.rate *= 1 + P.get('qg', 0.05)
        if P.get('fend') is not None and (P.get('fexpo') or P.get('fmi')):
            # near the end of the host's own work (a share fend of its
            # secrets done), quiet spells grow the rate faster: the fleet's
            # hosts, paced in proportion to their backlog, near their ends
            # together, so the fraction done is a clock they share.
            f = s.host['done'] / s.host['left']
            q2 = now - s.lastThrottle
            if f >= P['fend'] and q2 >= P.get('fq', 1.0):
                s.rate += P.get('fexpo', 0) * min(q2, P.get('qcap', 3))
                s.rate *= 1 + P.get('fmi', 0)


class Limiter:
    def __init__(s, mx=16): s.limit = float(mx); s.mx = mx; s.inflight = 0; s.waiters = []


class World:
    """What every simulated fleet shares: the bench's host mix (its
    random.Random(16) draw), an event queue, and the quota's token bucket."""
    def __init__(s, seed, N, quota, burst):
        s.rnd = random.Random(seed)
        hrnd = random.Random(16)
        s.counts = [hrnd.randint(100, 300) for _ in range(N)]
        s.quota, s.burst = quota, burst
        s.ev = []  # (time, seq, callback)
        s.seq = itertools.count()
        s.tokens, s.last = float(burst), 0.0
        s.stats = {'sent': 0, 'served': 0, 'failed': 0}
        s.ready = [None] * N

    def at(s, t, f): heapq.heappush(s.ev, (t, next(s.seq), f))

    def take(s, now):
        """One Decrypt at the quota: True if a token was there."""
        s.tokens = min(s.burst, s.tokens + (now - s.last) * s.quota); s.last = now
        if s.tokens >= 1: s.tokens -= 1; return True
        return False

    def run(s, limit):
        while s.ev:
            t, _, f = heapq.heappop(s.ev)
            if t > limit: break
            f(t)
        mx = max(s.ready); med = statistics.median(s.ready)
        return dict(time=mx / (sum(s.counts) / s.quota), amp=s.stats['sent'] / s.stats['served'], fair=mx / med,
                    failed=s.stats['failed'])


def simulate(P, mode="boot", seed=1, N=32, quota=100.0, burst=10, verbose=False):
    w = World(seed, N, quota, burst)
    rnd, counts, at, take, stats, ready = w.rnd, w.counts, w.at, w.take, w.stats, w.ready
    hosts = []
    for i in range(N):
        h = {'i': i, 'left': counts[i], 'next': 0, 'done': 0, 'ra': None}
        hosts.append(h)
    lat = lambda: rnd.uniform(P.get('latlo', 0.004), P.get('lathi', 0.02))

    def start_host(h, now):
        h['ra'] = (CB if P.get('cb') else MLT if P.get('mlt') else DL if P.get('dl') else GT if P.get('gt') else LTC if P.get('ltc') else RA)(P, now)
        h['ra'].backlog = (lambda h=h: h['left']) if P.get('winit') else (lambda h=h: h['left'] - h['done'])
        h['ra'].host = h
        h['lim'] = Limiter(16)
        workers = int(P.get('pw', 8)) if mode == "prefetch" else 1
        h['workers'] = workers
        if mode == "prefetch" and P.get('jit') and not h.get('jittered'):
            h['jittered'] = True
            at(now + rnd.uniform(0, P['jit']), lambda t, h=h: start_host(h, t))
            return
        if mode == "prefetch":
            # one alone first
            h['first_pending'] = True
            h['next'] = 1
            do_call(h, 0, now, lambda t, h=h: after_first(h, t, True))
            at(now + 1.0, lambda t, h=h: after_first(h, t, False))
        else:
            worker_next(h, now)

    def after_first(h, now, answered):
        if not h.get('first_pending'): return
        h['first_pending'] = False
        # The first answered: it and one more worker go on, and every secret
        # finished adds a worker (FileSystem.swift's PrefetchWorkers; `ramp=0`
        # for all at once, as before). No answer within the second: all at once.
        h['started'] = 2 if answered and P.get('ramp', 1) else h['workers']
        for _ in range(min(h['started'], h['workers'])): worker_next(h, now)

    def worker_next(h, now, finished=False):
        if finished and h.get('started', h['workers']) < h['workers'] and h['next'] < h['left']:
            h['started'] += 1
            worker_next(h, now)
        if h['next'] >= h['left']: return
        k = h['next']; h['next'] += 1
        do_call(h, k, now, lambda t, h=h: worker_next(h, t, True))

    def do_call(h, k, now, then, attempt=1):
        ra = h['ra']; lim = h['lim']
        # limiter acquire
        def got_slot(t):
            if P.get('probe') and ra.rate is not None and t >= getattr(ra, 'probeAt', 0) \
                    and not getattr(ra, 'probing', False) and ra.tokens < 1 - P.get('pthr', 0.5) * ra.rate:
                # one unpaced probe a host at a time, past the pacer
                ra.probing = True; ra.countSend(t)
                send(t, True); return
            slot, gen = ra.acquire(t)
            wait_slot(t, slot, gen)
        def wait_slot(t, slot, gen):
            def wake(t2):
                r = ra.restretch(slot, gen)
                if r is None: send(t2)
                else: wait_slot(t2, r[0], r[1])
            at(max(t, slot), wake)
        def send(t, probe=False):
            stats['sent'] += 1
            arrive = t + lat() / 2
            def at_server(t2):
                ok = take(t2)
                def resp(t3):
                    lim.inflight -= 1
                    if ok:
                        lim.limit = min(lim.mx, lim.limit + 1 / lim.limit)
                        if probe: ra.probe_result(t3, True)
                        else: ra.success(t3)
                        stats['served'] += 1
                        h['done'] += 1
                        if h['done'] == h['left']: ready[h['i']] = t3
                        release_waiters(t3)
                        then(t3)
                    else:
                        lim.limit = max(1, lim.limit / 2)
                        if probe: ra.probe_result(t3, False)
                        else: ra.throttled(t3)
                        if P.get('tk') and ra.rate is not None:
                            # a throttle costs the host tk slots of its pacing
                            ra.tokens = min(ra.burst(ra.rate), ra.tokens + max(0, t3 - ra.refilled) * ra.rate)
                            ra.refilled = max(t3, ra.refilled); ra.tokens -= P['tk']
                        release_waiters(t3)
                        d = (rnd.uniform(P['flo'], P['fhi']) if P.get('fhi') else rnd.random() * min(P.get('bcap', 1.0), P.get('bbase', 0.05) * 2 ** (min(attempt, 10) - 1)))
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
    return w.run(300)


BASE = dict(decrease=0.5, increase=0.2, accel=1.0, steady=2.0, floor=0.5, quietReset=30.0, cutSpacing=2.0,
            minCut=0.25, window=1.0, persist=0.45)

def scenario(P):
    return dict(N=int(P.get('hosts', 32)), quota=P.get('quota', 100.0), burst=int(P.get('burst', 10)))


def report(label, mode, rs, extra=""):
    print("%-40s %-8s time %.3f  amp %.3f  fair %.3f   (time %s%s)" % (label, mode,
          statistics.mean(r['time'] for r in rs), statistics.mean(r['amp'] for r in rs), statistics.mean(r['fair'] for r in rs),
          " ".join("%.2f" % r['time'] for r in rs), extra), flush=True)


def run(P, label, seeds=range(1, 6)):
    for mode in ("prefetch", "boot"):
        report(label, mode, [simulate(P, mode, seed=s, **scenario(P)) for s in seeds])

def first_cut(s, now):
    """The first throttle, as RateAdapter cuts: to `decrease` of the send
    rate, or to what got through once a few answers show it."""
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
        w = s._w()
        s.rate = s.rate * (1 + P['eta'] * P['pstar']) + w * P.get('add', 0) / s.rate + P.get('expo', 0) * min(quiet, P.get('qcap', 3))


class MLT(RA):
    """Scale-free loss target (issue 16 item 4, fleet-search): per answer
    rate *= exp(g (p* - x)), x = 1 for a throttle, 0 for a success, so the
    fleet settles where a share p* of calls is throttled; `madd` adds an
    AIMD pin (madd / rate a success, so shares converge), `mspace` spaces
    decreases (at most one per mspace sends' time), winit/wexp weight the
    growth by the backlog."""
    def _set(s, now, new):
        old = s.rate
        if new < old:
            s.tokens = min(s.burst(new), s.tokens + (now - s.refilled) * old); s.refilled = now
            s.stretch = old / new; s.gen += 1; s.lastCut = now
        s.rate = new
    def throttled(s, now):
        P = s.P
        s.roll(now); s.wr += 1
        s.lastThrottle = now
        if s.rate is None:
            s.first_cut(now); s.lastDec = now
            return
        if now - getattr(s, 'lastDec', -1e9) < P.get('mspace', 0) / s.rate: return
        s.lastDec = now
        if P.get('lin'):
            # constant steps per answer: exponential in time, G (p* - x) a second in log
            s._set(now, max(P['floor'], s.rate * P.get('dmin', 0.5), s.rate - P['g'] * (1 - P['pstar'])))
        else:
            s._set(now, max(P['floor'], s.rate * math.exp(-P['g'] * (1 - P['pstar']))))
    def success(s, now):
        P = s.P
        s.roll(now); s.ws += 1; s.wr += 1
        if s.rate is None: return
        w = s._w()
        quiet = max(0, now - s.lastThrottle - P['steady'])
        if P.get('lin'):
            r = s.rate + P['g'] * P['pstar']
        else:
            r = s.rate * math.exp(P['g'] * P['pstar'] * (w if P.get('wmul') else 1))
        r += w * P.get('madd', 0) / s.rate
        r += P.get('expo', 0) * min(quiet, P.get('qcap', 3))
        s.rate = r


class CB(RA):
    """Compressed backoff (fleet-search): paced at cbm times the host's own
    goodput (an EWMA over cbw seconds), and after each throttle the pacer
    is blocked for a fixed cbd seconds (divided by the backlog weight when
    wexp is set; at most cbk slots of the host's goodput when cbk is set).
    A fixed block makes a host's throughput (1-p) R / (1 + p R d), which
    saturates at 1/(p d) whatever R: shares equal out without a learned
    state, and a host can jump to R when throttles stop."""
    def __init__(s, P, now):
        super().__init__(P, now)
        s.good = None; s.gt = now; s.blockUntil = -1e9
    def _slot(s, now):
        if s.rate is None: return now
        t = max(now, s.blockUntil)
        s.tokens = min(s.burst(s.rate), s.tokens + max(0.0, t - s.refilled) * s.rate)
        s.refilled = max(t, s.refilled)
        w = 0 if s.tokens >= 1 else (1 - s.tokens) / s.rate
        s.tokens -= 1
        return t + w
    def acquire(s, now):
        slot = s._slot(now)
        s.countSend(slot); s.sendsSinceCut += 1
        return slot, s.gen
    def restretch(s, slot, gen):
        if gen == s.gen: return None
        return s._slot(slot), s.gen
    def _good(s, now, inc):
        P = s.P
        tau = P.get('cbw', 2.0)
        if s.good is None: s.good = 0.0; s.gt = now
        dt = now - s.gt
        s.good *= math.exp(-dt / tau); s.gt = now
        s.good += inc / tau
    def _update(s, now):
        P = s.P
        # the EWMA needs a few time constants before it measures; until then keep the first cut's rate
        if now - s.pacedSince < P.get('cbw', 2.0): return
        s.rate = max(P['floor'], P.get('cbm', 2.0) * s.good)
    def throttled(s, now):
        P = s.P
        s.roll(now); s.wr += 1
        s.lastThrottle = now
        if s.rate is None:
            s.first_cut(now); s.pacedSince = now; s._good(now, 0)
            s.rate *= P.get('cbm0', 1.0)
            return
        s._good(now, 0)
        d = P.get('cbd', 6.0) / s._w()
        if P.get('cbk'): d = min(d, P['cbk'] / max(s.good, P['floor']))
        s.blockUntil = max(s.blockUntil, now + d * (random.random() * 2 if P.get('cbj') else 1))
        s.tokens = min(s.tokens, 0.0); s.refilled = max(s.refilled, s.blockUntil)
        s.gen += 1
        s._update(now)
    def success(s, now):
        s.roll(now); s.ws += 1; s.wr += 1
        if s.rate is None: return
        s._good(now, 1)
        s._update(now)


class DL(RA):
    """Pace to a deadline shared by the fleet (tried in issue 16, not kept):
    rate = backlog / (D - now), so that hosts finish together. A throttle
    moves D later by delta / backlog (at most smax of what is left); D comes
    earlier by c (plus qk per quiet second past `steady`) each second. Every
    host sees the same share throttled, and a host that is ahead of the
    others sends faster and draws more throttles, so the deadlines converge;
    at equilibrium the share throttled is c (D - now) / delta."""
    def b(s): return max(s.backlog(), s.P['bmin'])
    def cur(s, now):
        dt = now - s.last
        if dt > 0:
            q = max(0.0, now - s.lastThrottle - s.P['steady'])
            s.D -= (s.P['c'] + s.P.get('qk', 0) * q) * dt; s.last = now
        tau = max(s.D - now, s.P['taumin'])
        s.rate = max(s.P['floor'], s.b() / tau)
    def acquire(s, now):
        if getattr(s, 'D', None) is not None: s.cur(now)
        return RA.acquire(s, now)
    def throttled(s, now):
        P = s.P
        s.roll(now); s.wr += 1
        s.lastThrottle = now
        if getattr(s, 'D', None) is None:
            s.first_cut(now)
            s.D = now + s.b() / (s.rate * s.P.get('init', 1.0)); s.last = now
            return
        s.cur(now)
        old = s.rate
        tau = max(s.D - now, P['taumin'])
        s.D = now + tau + min(P['delta'] / s.b(), tau * P['smax'])
        s.cur(now)
        new = s.rate
        s.tokens = min(s.burst(new), s.tokens + (now - s.refilled) * old); s.refilled = now
        s.stretch = old / new if new < old else 1; s.gen += 1; s.lastCut = now
    def success(s, now):
        s.roll(now); s.ws += 1; s.wr += 1
        if getattr(s, 'D', None) is not None: s.cur(now)


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
                w = s._w()
                s.rate = s.rate * (1 + P['grow'] * (1 if X == 0 else 0.3)) + P.get('add', 0) * w
        elif p > P['phi']:
            s.rate = max(P['floor'], min(s.rate, G / span * (1 + P['eps'])))
        else:
            w = s._w()
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


# ---- the references: botocore's retry modes, as fleet_client.py runs them ----
# One host = one boto3 client making its Decrypts one after another. Both modes
# retry a throttle up to 3 attempts after rand() * 2^(attempt-1) s
# (retries/standard.py, throttling base scale 1), out of a retry quota of 500
# that a retry costs 5 of and a success gives back 1 (or 5 after a retry); a
# call that fails is made again 1 s later (fleet_client.py's RETRY_MS).
# `adaptive` adds retries/adaptive.py's client rate limiter: a CUBIC rate
# (scale 0.4, beta 0.7) capped at twice the measured send rate (RateClocker:
# half-second buckets, smoothing 0.8) and a token bucket of at least 0.5/s.

class Cubic:
    def __init__(s, now): s.wmax = 0.0; s.k = 0.0; s.last = now
    def zero(s): s.k = (s.wmax * 0.3 / 0.4) ** (1/3)
    def ok(s, now): return 0.4 * (now - s.last - s.k) ** 3 + s.wmax
    def err(s, rate, now): s.wmax = rate; s.zero(); s.last = now; return rate * 0.7

class Clocker:
    def __init__(s, now): s.m = 0.0; s.lastb = math.floor(now); s.c = 0
    def record(s, now):
        b = math.floor(now * 2) / 2; s.c += 1
        if b > s.lastb:
            cur = s.c / (b - s.lastb); s.m = cur * 0.8 + s.m * 0.2; s.c = 0; s.lastb = b
        return s.m

class TB:
    def __init__(s, now): s.fill = None; s.cap = 0; s.cur = 0; s.last = None; s.set(1, now)
    def refill(s, now):
        if s.last is None: s.last = now; return
        s.cur = min(s.cap, s.cur + (now - s.last) * s.fill); s.last = now
    def set(s, v, now):
        s.refill(now); s.fill = max(v, 0.5); s.cap = v if v >= 1 else 1; s.cur = min(s.cur, s.cap)
    def acquire(s, now):
        """returns time when token acquired (simplified: no re-wait on rate change)"""
        s.refill(now)
        if s.cur >= 1: s.cur -= 1; return now
        w = (1 - s.cur) / s.fill
        s.cur -= 1  # borrow (fill continues)
        return now + w

def simulate_boto(mode, seed=1, N=32, quota=100.0, burst=10, retry_ms=1.0, latlo=0.004, lathi=0.02):
    w = World(seed, N, quota, burst)
    rnd, counts, at, take, stats, ready = w.rnd, w.counts, w.at, w.take, w.stats, w.ready
    lat = lambda: rnd.uniform(latlo, lathi)
    def start(i, now):
        h = dict(i=i, left=counts[i], done=0, quota=500, enabled=False, cubic=Cubic(now), clk=Clocker(now), tb=TB(now))
        call(h, now, 1)
    def call(h, now, attempt):
        t = now
        if mode == 'adaptive' and h['enabled']:
            t = h['tb'].acquire(now)
        def send(t1):
            stats['sent'] += 1
            def srv(t2):
                ok = take(t2)
                def resp(t3):
                    if mode == 'adaptive':
                        m = h['clk'].record(t3)
                        if ok: nr = h['cubic'].ok(t3)
                        else:
                            rate = m if not h['enabled'] else min(m, h['tb'].fill)
                            nr = h['cubic'].err(rate, t3); h['enabled'] = True
                        h['tb'].set(min(nr, 2 * m), t3)
                    if ok:
                        stats['served'] += 1; h['done'] += 1
                        h['quota'] = min(500, h['quota'] + (1 if attempt == 1 else 5))
                        if h['done'] == h['left']: ready[h['i']] = t3; return
                        call(h, t3, 1)
                    else:
                        if attempt < 3 and h['quota'] >= 5:
                            h['quota'] -= 5
                            d = rnd.random() * min(2 ** (attempt - 1), 20)
                            at(t3 + d, lambda t4: call(h, t4, attempt + 1))
                        else:
                            stats['failed'] += 1
                            at(t3 + retry_ms, lambda t4: call(h, t4, 1))
                at(t2 + (lat() / 2 if ok else 0.002), resp)
            at(t1 + lat() / 2, srv)
        at(t, send)
    for i in range(N):
        at(rnd.uniform(0.0, 0.05), lambda t, i=i: start(i, t))
    return w.run(400)


def run_boto(P, seeds):
    for mode in ("standard", "adaptive"):
        rs = [simulate_boto(mode, seed=s, **scenario(P)) for s in seeds]
        report("botocore " + mode, "", rs, "; %.0f failed calls" % statistics.mean(r['failed'] for r in rs))


def bucket_table():
    """The share of calls a token bucket of 100/s and a burst of 10 throttles,
    and how much of its quota it serves, for calls arriving at random (Poisson)
    and for 32 paced senders (each evenly spaced, +-10%), at a total rate of
    lam/s: pacing, not luck, is what lets a fleet fill the quota without loss."""
    for lam in (95, 100, 105, 110, 120):
        row = []
        for kind in ("poisson", "paced"):
            r = random.Random(1); ts = []
            if kind == "poisson":
                t = 0.0
                while t < 1000: t += r.expovariate(lam); ts.append(t)
            else:
                for _ in range(32):
                    p = 32 / lam; t = r.random() * p
                    while t < 1000: ts.append(t); t += p * r.uniform(0.9, 1.1)
                ts.sort()
            tok, last, x = 10.0, 0.0, 0
            for t in ts:
                tok = min(10.0, tok + (t - last) * 100); last = t
                if tok >= 1: tok -= 1
                else: x += 1
            row.append("%s: %4.1f%% throttled, %5.1f%% of the quota served" % (kind, 100 * x / len(ts), (len(ts) - x) / 1000.0))
        print("%3d/s  %s   %s" % (lam, row[0], row[1]))


def phases_table(P, seeds):
    """Where each client leaves quota unused (`phases`): seconds of quota
    not served in the first 5 s (the start), the last 8 s (the tail) and
    between, means over the seeds. The time above the ideal is their sum."""
    orig = World.take
    for label, fn in (("kmsfs prefetch", lambda s: simulate(P, "prefetch", seed=s, **scenario(P))),
                      ("kmsfs, read at boot", lambda s: simulate(P, "boot", seed=s, **scenario(P))),
                      ("botocore standard", lambda s: simulate_boto("standard", seed=s, **scenario(P))),
                      ("botocore adaptive", lambda s: simulate_boto("adaptive", seed=s, **scenario(P)))):
        lost = [0.0, 0.0, 0.0]
        times = []
        for seed in seeds:
            served = []

            def take(w, now, served=served):
                ok = orig(w, now)
                if ok:
                    served.append(now)
                return ok
            World.take = take
            try:
                r = fn(seed)
            finally:
                World.take = orig
            quota = scenario(P)["quota"]
            bins = [0] * (int(max(served)) + 1)
            for t in served:
                bins[int(t)] += 1
            unused = [max(0.0, quota - b) / quota for b in bins[:-1]]   # the last second is partial
            lost[0] += sum(unused[:5])
            lost[1] += sum(unused[5:-8])
            lost[2] += sum(unused[-8:]) if len(unused) > 13 else 0
            times.append(r["time"])
        n = float(len(seeds))
        print("%-22s time %.3f   quota unused: start %.2f s, middle %.2f s, tail %.2f s" % (
            label, statistics.mean(times), lost[0] / n, lost[1] / n, lost[2] / n), flush=True)


def main(argv):
    if argv == ["bucket"]:
        return bucket_table()
    if argv[:1] == ["phases"]:
        P = dict(BASE)
        P.update({a.partition("=")[0]: float(a.partition("=")[2]) for a in argv[1:]})
        return phases_table(P, range(1, 1 + int(P.pop("seeds", 8))))
    P = dict(BASE)
    for arg in argv:
        k, _, v = arg.partition("=")
        if k not in P and k not in ("ramp", "burst", "hosts", "quota", "dl", "delta", "c", "bmin", "taumin", "smax", "qk", "init", "expo", "qcap", "wexp", "bref", "wlo", "whi", "ltc", "gt", "eta", "pstar",
                                    "add", "T", "W", "plo", "phi", "eps", "grow", "base_rate", "through_always",
                                    "first_decrease", "latlo", "lathi", "unit", "ss", "ssmin", "firstmin", "prop", "nothrough", "jit", "seeds", "pw", "mi", "mimin", "winit", "wtau", "t0", "nopace", "bcap", "bbase", "flo", "fhi", "mlt", "g", "madd", "mspace", "wmul", "norefs", "lin", "dmin", "tk", "cb", "cbd", "cbm", "cbw", "cbk", "cbm0", "cbj", "fend", "fexpo", "fmi", "fq", "hfloor", "hmin", "rel", "probe", "pthr", "pgrow", "pmin", "pcap", "qe", "qg", "qn", "qp0", "qr", "hw", "ra", "bfrac"):
            raise SystemExit("fleet_model: unknown knob %s" % k)
        P[k] = float(v)
    given = set(a.partition("=")[0] for a in argv)
    for k, v in (("dl", dict(delta=150, c=0.1, bmin=3, taumin=0.5, smax=0.5)),
                 ("ltc", dict(eta=0.4, pstar=0.03, steady=1.0, expo=0.3)),
                 ("mlt", dict(g=0.5, pstar=0.08, steady=2.0)),
                 ("gt", dict(T=1.0, W=4.0, plo=0.02, phi=0.08, eps=0.03, grow=0.25, add=0.1))):
        if P.get(k):
            for kk, vv in v.items():
                if kk not in given:
                    P[kk] = vv
    seeds = range(1, 1 + int(P.pop("seeds", 8)))
    run(P, " ".join(argv) or "RateAdapter as ported", seeds=seeds)
    if not P.get('norefs'): run_boto(P, seeds)


if __name__ == "__main__":
    main(sys.argv[1:])

