"""End-to-end speed of the slow application paths, each as a share of the plain forward under it.

    python bench/apps_speed.py [--texts 16] [--max-length 128] [--items 16] [--prompts 4] [--repeats 3]
                               [--paths features,footprint,uncertainty,steer] [--threads N] [--profile]

Each path is the library call its CLI command makes once the model is loaded (loading is not timed):
- features build   `qscope features build --layer 15 --n-texts N --max-length T`: `build_store` over the
  first N texts of the default mix, into a fresh store -> tokens/s;
- evals footprint  `qscope evals footprint arc_easy --layer 15 --limit N`: `run_footprint` with a
  fresh item cache -> items/s;
- uncertainty label `qscope uncertainty label arc_easy --limit N`: `run_label` (letter
  scoring) with a fresh item cache -> items/s;
- steer eval       `qscope steer eval --layer 15 -f 100 --strengths 0,20 --limit P`: `evaluate_steering`
  -> answers/s, counting every generation (the 8 neutral prompts + P prompts x 2 strengths).

The floor of each path is the plain model forward over the same tokens, batched and padded as the
path batches them, tokenised beforehand: stopped after the SAE's layer for features build and
footprint (they stop there too), the full forward with the LM head at the last position for
uncertainty label (letter scoring reads no other), and at every position for steer eval, over each
chat prompt + the answer it got (scoring an answer cannot take less than one forward over it). `share` = floor time / path time, i.e. the path's rate as a
share of the rate of its forward; 1 - share is the time spent outside the forward.

A features build also computes every feature's promoted tokens once per store (unembedding x
decoder, independent of the texts). That fixed cost is timed once (`token_effects_once_s`) and kept
out of the per-text rate: each timed build starts from a store seeded with those rows, which the
builder then skips, as it does when resuming.

The model is loaded twice, fp32 and `--dtype auto` (one copy when auto is fp32); every round runs
each path and its floor in both, interleaved, after a warm-up round, so load from other processes
hits all alike; medians are reported (every time in the JSON). `--profile` then runs each path
once more in fp32 under a sampling profiler (pyinstrument, in the `bench` extra): the share of its
time inside the model's forward, and the qscope functions the rest is spent in. Writes
bench/results/apps_speed.json (apps_speed_<paths>.json for some of the paths).

On a machine with more runnable threads than cores, use `--threads 1`: torch's worker threads
would otherwise spend their time slices waiting for each other at every op.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from machine import describe, dtype_name, print_machine  # noqa: E402
from qscope.data.benchmarks import load_benchmark, resume_order  # noqa: E402
from qscope.data.mix import mix_records  # noqa: E402
from qscope.evals.footprint import FootprintConfig, run_footprint  # noqa: E402
from qscope.features.store import build_store  # noqa: E402
from qscope.features.store.layout import SCHEMA, connect  # noqa: E402
from qscope.io import write_json  # noqa: E402
from qscope.model import load  # noqa: E402
from qscope.model.loading import pick_dtype  # noqa: E402
from qscope.provenance import record  # noqa: E402
from qscope.steer import Steering  # noqa: E402
from qscope.steer.evaluate import NEUTRAL_PROMPTS, evaluate_steering, n_generations  # noqa: E402
from qscope.uncertainty import LabelConfig, run_label  # noqa: E402

BATCH = 8  # every path's CLI default
BENCHMARK = "arc_easy"
FEATURE, STRENGTHS = 100, (0.0, 20.0)


def batches(seq: list, size: int = BATCH) -> list[list]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


class Floor:
    """The plain forward over fixed token batches: `run()` is what the path cannot go below."""

    def __init__(self, lm, encoded: list, stop_after: int | None, logits_to_keep: int = 0):
        self.lm, self.encoded, self.stop_after, self.logits_to_keep = lm, encoded, stop_after, logits_to_keep
        self.tokens = int(sum(int(enc["attention_mask"].sum()) for enc in encoded))

    @torch.no_grad()
    def run(self) -> None:
        for enc in self.encoded:
            if self.stop_after is None:
                self.lm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], use_cache=False,
                              logits_to_keep=self.logits_to_keep)
            else:
                self.lm.run_to_layers(enc["input_ids"], enc["attention_mask"], [self.stop_after])


class FeaturesBuild:
    unit = "tokens"

    def __init__(self, args, scratch: Path):
        self.texts = [(label, text) for label, text in islice(mix_records(None, 0), args.texts) if text.strip()]
        self.max_length, self.layer, self.scratch = args.max_length, args.layer, scratch
        self.command = (f"qscope features build --layer {args.layer} --n-texts {args.texts} "
                        f"--max-length {args.max_length}")
        self.template: Path | None = None  # a finished store: its token effects seed the timed builds
        self.first_finish_s: float | None = None  # the untimed first build's finish, token effects included
        self.streaming_s: dict[str, list[float]] = {}  # per dtype: start to the last text folded in
        self.finish_s: dict[str, list[float]] = {}  # per dtype: the rest (auto labels, VACUUM)

    def _fresh(self) -> Path:
        path = Path(tempfile.mkstemp(suffix=".sqlite", dir=self.scratch)[1])
        path.unlink()
        if self.template is not None:
            conn = connect(path)
            conn.executescript(SCHEMA)
            conn.execute("ATTACH DATABASE ? AS template", (str(self.template),))
            conn.execute("INSERT INTO token_effects SELECT * FROM template.token_effects")
            conn.execute("DETACH DATABASE template")
            conn.close()
        return path

    def run(self, lm, sae, label: str) -> int:
        path, start, last = self._fresh(), time.perf_counter(), [0.0]
        store = build_store(lm, sae, self.texts, path, self.layer, max_length=self.max_length, batch_size=BATCH,
                            sae_name="default", progress=lambda done, tokens: last.__setitem__(0, time.perf_counter()))
        streaming, finish = last[0] - start, time.perf_counter() - last[0]
        if self.template is None:  # the first build paid for the token effects: its store seeds the others
            self.template, self.first_finish_s = path, finish
        else:
            self.streaming_s.setdefault(label, []).append(streaming)
            self.finish_s.setdefault(label, []).append(finish)
        return store.summary()["tokens_done"]

    def token_effects_s(self) -> float:
        """The once-per-store cost the timed builds skip: the first build's finish minus a usual one."""
        return self.first_finish_s - statistics.median(self.finish_s["float32"])

    def floor(self, lm, label: str) -> Floor:
        encoded = [lm.tokenize([t for _, t in chunk], max_length=self.max_length) for chunk in batches(self.texts)]
        return Floor(lm, encoded, self.layer)


class Footprint:
    unit = "items"

    def __init__(self, args, scratch: Path):
        self.items = load_benchmark(BENCHMARK, limit=args.items, seed=0)
        self.layer, self.scratch = args.layer, scratch
        self.command = f"qscope evals footprint {BENCHMARK} --layer {args.layer} --limit {args.items}"

    def run(self, lm, sae, label: str) -> int:
        cfg = FootprintConfig(layer=self.layer)
        run_footprint(lm, [sae], {BENCHMARK: self.items}, cfg, cache=Path(tempfile.mkdtemp(dir=self.scratch)))
        return len(self.items)

    def floor(self, lm, label: str) -> Floor:
        order = resume_order(list(range(len(self.items))), self.items, BATCH)
        with lm.left_truncation():
            encoded = [lm.tokenize([self.items[j].prompt for j in chunk], max_length=FootprintConfig.max_length)
                       for chunk in batches(order)]
        return Floor(lm, encoded, self.layer)


class UncertaintyLabel:
    unit = "items"

    def __init__(self, args, scratch: Path):
        self.items = load_benchmark(BENCHMARK, limit=args.items, seed=0)
        self.scratch = scratch
        self.command = f"qscope uncertainty label {BENCHMARK} --limit {args.items}"

    def run(self, lm, sae, label: str) -> int:
        run_label(lm, self.items, LabelConfig(), BENCHMARK, cache=Path(tempfile.mkdtemp(dir=self.scratch)))
        return len(self.items)

    def floor(self, lm, label: str) -> Floor:
        order = sorted(range(len(self.items)), key=lambda j: len(self.items[j].prompt))
        with lm.left_truncation():
            encoded = [lm.tokenize([self.items[j].prompt for j in chunk], max_length=LabelConfig.max_length,
                                   padding_side="left") for chunk in batches(order)]
        return Floor(lm, encoded, None, logits_to_keep=1)  # letter scoring reads the head at the last position only


class SteerEval:
    unit = "answers"

    def __init__(self, args, scratch: Path):
        self.prompts = NEUTRAL_PROMPTS[:args.prompts]
        self.answers: dict[str, dict[str, list[str]]] = {}
        self.command = (f"qscope steer eval --layer {args.layer} -f {FEATURE} "
                        f"--strengths {','.join(f'{s:g}' for s in STRENGTHS)} --limit {args.prompts}")

    def run(self, lm, sae, label: str) -> int:
        self.answers[label] = {}  # an empty cache: nothing is reused, the answers are kept for the floor
        evaluate_steering(lm, lambda s: Steering.add(sae, {FEATURE: s}), self.prompts, STRENGTHS,
                          target_feature=FEATURE, sae=sae, baseline_prompt=[], cache=self.answers[label])
        return n_generations(len(self.prompts), len(STRENGTHS), baseline=0)

    def floor(self, lm, label: str) -> Floor:
        """One forward over every (chat prompt + answer) of the last run in `label`."""
        texts = []
        for key, outputs in self.answers[label].items():
            prompts = NEUTRAL_PROMPTS if key.startswith("neutral") else self.prompts
            texts += [lm.chat_prompt(p) + o for p, o in zip(prompts, outputs)]
        return Floor(lm, [lm.tokenize(chunk, max_length=None) for chunk in batches(texts)], None)


PATHS = {"features": FeaturesBuild, "footprint": Footprint, "uncertainty": UncertaintyLabel, "steer": SteerEval}


def profile(path, lm, sae, top: int = 5) -> dict:
    """Where one run of `path` spends its time (pyinstrument, sampling every 5 ms): the share inside
    the model's forward, and the rest by the innermost qscope function it was spent in (library
    calls it makes included), as shares of the run."""
    from collections import Counter

    from pyinstrument import Profiler

    profiler = Profiler(interval=0.005)
    profiler.start()
    path.run(lm, sae, "profile")
    profiler.stop()
    root = profiler.last_session.root_frame()
    code = inspect.unwrap(type(lm.model).forward).__code__
    forward, outside = 0.0, Counter()

    def walk(frame, owner: str) -> None:
        nonlocal forward
        if frame.file_path == code.co_filename and frame.line_no == code.co_firstlineno:
            forward += frame.time
            return
        if "/qscope/" in (frame.file_path or ""):
            owner = f"{Path(frame.file_path).parent.name}/{Path(frame.file_path).name}:{frame.function}"
        outside[owner] += frame.time - sum(child.time for child in frame.children)
        for child in frame.children:
            walk(child, owner)

    walk(root, "bench")
    return {"seconds": root.time, "forward_share": forward / root.time,
            "outside_forward": [{"function": name, "share": t / root.time}
                                for name, t in outside.most_common(top) if t > 0]}


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=16, help="features build: texts (of the default mix)")
    ap.add_argument("--max-length", type=int, default=128, help="features build: tokens per text")
    ap.add_argument("--items", type=int, default=16, help="footprint and uncertainty label: arc_easy items")
    ap.add_argument("--prompts", type=int, default=4, help="steer eval: prompts (answers: 8 neutral + 2 per prompt)")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default=",".join(PATHS), help=f"any of {','.join(PATHS)}")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    ap.add_argument("--profile", action="store_true",
                    help="also run each path once more in fp32 under a sampling profiler (pyinstrument) and "
                         "say where its time goes")
    ap.add_argument("--out", help="JSON report (default bench/results/apps_speed.json, or apps_speed_<paths>.json "
                                  "for some of the paths)")
    args = ap.parse_args()
    names = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in names if p not in PATHS]
    if unknown:
        raise SystemExit(f"--paths: unknown {unknown[0]!r} (any of {', '.join(PATHS)})")
    suffix = "" if set(names) == set(PATHS) else "_" + "-".join(names)
    out = Path(args.out) if args.out else ROOT / "results" / f"apps_speed{suffix}.json"

    if args.threads:
        torch.set_num_threads(args.threads)
    machine = describe("cpu")
    print_machine(machine)
    load_start = os.getloadavg()
    auto = dtype_name(pick_dtype("auto", torch.device("cpu")))
    dtypes = ["float32"] + ([auto] if auto != "float32" else [])
    models = {dt: load("default", "default", args.layer, device="cpu", dtype=dt) for dt in dtypes}
    with tempfile.TemporaryDirectory() as scratch:
        paths = {name: PATHS[name](args, Path(scratch)) for name in names}
        runs = {(name, dt): [] for name in names for dt in dtypes}
        floors_s = {(name, dt): [] for name in names for dt in dtypes}
        units, floors = {}, {}
        for round_ in range(args.repeats + 1):
            for name, path in paths.items():
                for dt, (lm, saes) in models.items():
                    sae = saes[args.layer]
                    seconds, units[name] = timed(lambda: path.run(lm, sae, dt))
                    if not round_:  # warm-up: build the floor's batches from what the path did
                        floors[name, dt] = path.floor(lm, dt)
                        print(f"  {name} {dt}: warm-up {seconds:.1f} s", file=sys.stderr, flush=True)
                        continue
                    floor_s = timed(floors[name, dt].run)[0]
                    print(f"  {name} {dt}: {seconds:.1f} s, floor {floor_s:.1f} s", file=sys.stderr, flush=True)
                    runs[name, dt].append(seconds)
                    floors_s[name, dt].append(floor_s)
            print(f"round {round_}/{args.repeats} done (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        lm, saes = models["float32"]
        profiles = {name: profile(path, lm, saes[args.layer]) for name, path in paths.items()} if args.profile else {}

    rows = []
    for name, path in paths.items():
        for dt in dtypes:
            run_s, floor_s = statistics.median(runs[name, dt]), statistics.median(floors_s[name, dt])
            row = {"path": name, "command": path.command, "dtype": dt, "unit": path.unit, "units": units[name],
                   "floor_tokens": floors[name, dt].tokens, "median_s": run_s, "rate": units[name] / run_s,
                   "floor_median_s": floor_s, "floor_rate": units[name] / floor_s, "share_of_floor": floor_s / run_s,
                   "speedup_vs_fp32": statistics.median(runs[name, "float32"]) / run_s,
                   "times_s": [round(t, 4) for t in runs[name, dt]],
                   "floor_times_s": [round(t, 4) for t in floors_s[name, dt]]}
            if isinstance(path, FeaturesBuild):
                streaming, finish = statistics.median(path.streaming_s[dt]), statistics.median(path.finish_s[dt])
                row.update(streaming_s=streaming, finish_s=finish, streaming_share_of_floor=floor_s / streaming,
                           token_effects_once_s=path.token_effects_s())
            rows.append(row)
    load_end = os.getloadavg()
    print(f"\nmedians of {args.repeats} interleaved rounds; load average {load_start[0]:.1f} at start, "
          f"{load_end[0]:.1f} at end, on {machine['cores']} cores: absolute rates are the neighbours'; read the ratios")
    head = (f"{'path':<12} {'dtype':<9} {'work':>12} {'path s':>8} {'rate':>14} {'floor s':>8} {'of floor':>9} "
            f"{'vs fp32':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['path']:<12} {r['dtype']:<9} {str(r['units']) + ' ' + r['unit']:>12} {r['median_s']:8.2f} "
              f"{r['rate']:8.1f} {r['unit'][:5] + '/s':<5} {r['floor_median_s']:8.2f} {r['share_of_floor']:9.0%} "
              f"{r['speedup_vs_fp32']:7.2f}x")
    for name, prof in profiles.items():
        print(f"profile {name} (fp32, {prof['seconds']:.1f} s): forward {prof['forward_share']:.0%}; "
              "outside it: " + ", ".join(f"{t['function']} {t['share']:.0%}" for t in prof["outside_forward"]))
    for r in rows:
        if "streaming_s" in r:
            print(f"features build, {r['dtype']}: streaming the texts {r['streaming_s']:.2f} s "
                  f"({r['streaming_share_of_floor']:.0%} of it the floor), auto labels + VACUUM {r['finish_s']:.2f} s; "
                  f"token effects once per store {r['token_effects_once_s']:.1f} s (not in the rate)")
    write_json(out, {"bench": "apps_speed", "args": vars(args), "dtypes": dtypes, "machine": machine,
                          "load_average_start_end": [list(load_start), list(load_end)], "rows": rows,
                          "profiles": profiles},
               provenance=record(seeds={"mix": 0, "benchmark_sample": 0}))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
