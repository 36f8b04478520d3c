"""The in-memory half of a build: per-feature running statistics, top contexts and interval
samples, folded in one text at a time and saved to / restored from the store file, so a resumed
build continues from exactly the state an uninterrupted one would have."""

from __future__ import annotations

import json
import sqlite3
from typing import Callable

import numpy as np
import torch

from .layout import BINS_PER_INTERVAL, HIST_EDGES, LEFT, N_INTERVALS, RIGHT, SAMPLES_PER_INTERVAL, WIDTH

M31 = (1 << 31) - 1


def sample_keys(text: int, pos: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """Deterministic pseudo-random keys in [0, 2^31) per (text, position, feature): the random
    priorities of bottom-k reservoir sampling, identical whether a build was resumed or not."""
    x = (feat * 0x9E3779B1 + pos * 0x85EBCA77 + text * 0xC2B2AE3D) & M31
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & M31
    x = ((x ^ (x >> 12)) * 0x297A2D39) & M31
    return x ^ (x >> 15)



class BestSlots:
    """The best `n` candidates per row by score, in fixed slots (a vectorised min-heap: a new
    candidate replaces the row's weakest slot). Slots are saved as they are, so a resumed build
    continues from exactly the state an uninterrupted one would have."""

    def __init__(self, rows: int, n: int, score_dtype: torch.dtype, empty):
        self.score = torch.full((rows, n), empty, dtype=score_dtype)
        self.text = torch.full((rows, n), -1, dtype=torch.long)
        self.pos = torch.zeros(rows, n, dtype=torch.long)
        self.act = torch.zeros(rows, n)
        self.win = torch.zeros(rows, n, WIDTH, dtype=torch.float16)
        self.dirty = torch.zeros(rows, dtype=torch.bool)

    def offer(self, rows, score, text: int, pos, act, win_fn: Callable) -> None:
        """Offer one candidate per (distinct) row; windows are only built for the winners."""
        weakest, slot = self.score[rows].min(dim=1)
        win = score > weakest
        if not win.any():
            return
        rows, slot, pos = rows[win], slot[win], pos[win]
        self.score[rows, slot] = score[win]
        self.text[rows, slot] = text
        self.pos[rows, slot] = pos
        self.act[rows, slot] = act[win]
        self.win[rows, slot] = win_fn(rows, pos)
        self.dirty[rows] = True

    def restore(self, entries: list[tuple]) -> None:
        """Put back saved slots: (row, slot, score, text, pos, act, start, acts bytes) each."""
        if not entries:
            return
        row, slot, score, text, pos, act, start, blobs = zip(*entries)
        row, slot = torch.tensor(row), torch.tensor(slot)
        self.score[row, slot] = torch.tensor(score, dtype=self.score.dtype)
        self.text[row, slot], self.pos[row, slot] = torch.tensor(text), torch.tensor(pos)
        self.act[row, slot] = torch.tensor(act, dtype=torch.float32)
        win = np.zeros((len(entries), WIDTH), dtype=np.float16)
        for i, (p, st, blob) in enumerate(zip(pos, start, blobs)):
            acts = np.frombuffer(blob, dtype=np.float16)
            off = st - (p - LEFT)
            win[i, off:off + len(acts)] = acts
        self.win[row, slot] = torch.from_numpy(win)

    def saved(self, rows: list[int], lengths: list[int]):
        """(row, slot, score, text, pos, act, start, acts bytes) of the filled slots of `rows`."""
        if not rows:
            return
        idx = torch.tensor(rows)
        text, pos, act, score = (t[idx].tolist() for t in (self.text, self.pos, self.act, self.score))
        win = self.win[idx].numpy()
        for i, row in enumerate(rows):
            for slot, t in enumerate(text[i]):
                if t < 0:
                    continue
                p = pos[i][slot]
                start, stop = max(p - LEFT, 0), min(p + RIGHT + 1, lengths[t])
                off = start - (p - LEFT)
                yield row, slot, score[i][slot], t, p, act[i][slot], start, win[i, slot, off:off + stop - start].tobytes()


class FeatureAccumulator:
    """Per-feature running statistics, top contexts and interval samples over streamed texts."""

    def __init__(self, d_sae: int, top_n: int):
        self.d_sae = d_sae
        self.fires = torch.zeros(d_sae, dtype=torch.long)
        self.text_fires = torch.zeros(d_sae, dtype=torch.long)
        self.sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max = torch.zeros(d_sae)
        self.hist = torch.zeros(d_sae, len(HIST_EDGES) - 1, dtype=torch.long)
        self.stats_dirty = torch.zeros(d_sae, dtype=torch.bool)
        self.top = BestSlots(d_sae, top_n, torch.float32, 0.0)
        self.samples = BestSlots(d_sae * N_INTERVALS, SAMPLES_PER_INTERVAL, torch.long, torch.iinfo(torch.long).min)
        self.edges = torch.from_numpy(HIST_EDGES[1:-1]).float()
        self.lengths: list[int] = []

    def update(self, text: int, codes) -> int:
        """Fold one text's codes in; returns the number of tokens counted (position 0 skipped)."""
        n_tok = len(codes.tokens)
        self.lengths.append(n_tok)
        start = 1 if n_tok > 1 else 0
        values, indices = codes.values[start:], codes.indices[start:]
        positions = torch.arange(start, n_tok).unsqueeze(1).expand_as(indices)
        on = values > 0
        v, f, p = values[on], indices[on], positions[on]
        if len(v) == 0:
            return n_tok - start
        # Running statistics and histogram.
        self.fires.index_add_(0, f, torch.ones_like(f))
        self.sum.index_add_(0, f, v.double())
        self.max.scatter_reduce_(0, f, v, "amax")
        bins = torch.bucketize(v, self.edges, right=True)
        self.hist.view(-1).index_add_(0, f * self.hist.shape[1] + bins, torch.ones_like(f))
        feats = f.unique()
        self.text_fires[feats] += 1
        self.stats_dirty[feats] = True

        dense = torch.zeros(n_tok, self.d_sae)
        dense[start:].scatter_(1, indices, values)

        def windows(feat, pos):  # (n, WIDTH) activations of `feat` around `pos`
            idx = pos.unsqueeze(1) + torch.arange(-LEFT, RIGHT + 1)
            ok = (idx >= 0) & (idx < n_tok)
            return torch.where(ok, dense[idx.clamp(0, n_tok - 1), feat.unsqueeze(1)], 0.0).half()

        # Top contexts: each feature's maximum over this text (its first position on ties).
        fmax = torch.zeros(self.d_sae).scatter_reduce_(0, f, v, "amax")
        at_max = v == fmax[f]
        first = torch.full((self.d_sae,), n_tok, dtype=torch.long).scatter_reduce_(0, f[at_max], p[at_max], "amin")
        self.top.offer(feats, fmax[feats], text, first[feats], fmax[feats], windows)

        # Interval samples: bottom-k by a deterministic random key = a uniform reservoir sample,
        # in one pass; at most one firing per text per (feature, interval).
        rows = f * N_INTERVALS + bins // BINS_PER_INTERVAL
        comp = sample_keys(text, p, f) * (1 << 20) + p  # unique per (row, text): ties impossible
        best = torch.full((self.samples.score.shape[0],), torch.iinfo(torch.long).max, dtype=torch.long)
        best.scatter_reduce_(0, rows, comp, "amin")
        pick = comp == best[rows]
        self.samples.offer(rows[pick], -comp[pick], text, p[pick], v[pick],
                           lambda r, pos: windows(r // N_INTERVALS, pos))
        return n_tok - start

    # -- persistence
    def save(self, conn: sqlite3.Connection, texts: list[tuple], meta: dict) -> None:
        """Write everything changed since the last save plus the progress counters, in ONE transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?)", texts)
            feats = self.stats_dirty.nonzero().flatten().tolist()
            conn.executemany("INSERT OR REPLACE INTO feature_stats VALUES (?, ?, ?, ?, ?, ?)", [
                (f, int(self.fires[f]), int(self.text_fires[f]), float(self.sum[f]), float(self.max[f]),
                 self.hist[f].numpy().tobytes()) for f in feats])
            rows = self.top.dirty.nonzero().flatten().tolist()
            conn.executemany("DELETE FROM top_examples WHERE feature=?", [(r,) for r in rows])
            conn.executemany("INSERT INTO top_examples VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(r, s, a, t, p, st, b) for r, s, _, t, p, a, st, b in self.top.saved(rows, self.lengths)])
            rows = self.samples.dirty.nonzero().flatten().tolist()
            conn.executemany("DELETE FROM interval_examples WHERE feature=? AND interval=?",
                             [divmod(r, N_INTERVALS) for r in rows])
            conn.executemany("INSERT INTO interval_examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                (*divmod(r, N_INTERVALS), s, -sc, a, t, p, st, b)
                for r, s, sc, t, p, a, st, b in self.samples.saved(rows, self.lengths)])
            conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.stats_dirty[:] = False
        self.top.dirty[:] = False
        self.samples.dirty[:] = False

    def load(self, conn: sqlite3.Connection) -> None:
        """Rebuild the in-memory state from the last committed checkpoint."""
        self.lengths = [n for (n,) in conn.execute("SELECT n_tokens FROM texts ORDER BY idx")]
        rows = conn.execute("SELECT * FROM feature_stats").fetchall()
        if rows:
            f, fires, text_fires, sums, maxes, hists = zip(*rows)
            f = torch.tensor(f)
            self.fires[f], self.text_fires[f] = torch.tensor(fires), torch.tensor(text_fires)
            self.sum[f], self.max[f] = torch.tensor(sums, dtype=torch.float64), torch.tensor(maxes, dtype=torch.float32)
            self.hist[f] = torch.from_numpy(np.frombuffer(b"".join(hists), dtype=np.int64).reshape(len(rows), -1).copy())
        self.top.restore([(f, slot, act, text, pos, act, start, blob) for f, slot, act, text, pos, start, blob
                          in conn.execute("SELECT * FROM top_examples")])
        self.samples.restore([(f * N_INTERVALS + i, slot, -key, text, pos, act, start, blob)
                              for f, i, slot, key, act, text, pos, start, blob
                              in conn.execute("SELECT * FROM interval_examples")])

