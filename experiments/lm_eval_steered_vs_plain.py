"""Steered vs plain inside lm-evaluation-harness: one multiple-choice task (log-likelihood requests) and one
short-answer task (generate_until requests), written as local JSON task files from qscope's offline
benchmark items, evaluated by the harness with `--model qscope` once plain and once steered.

    python experiments/lm_eval_steered_vs_plain.py --limit 40 --steer 6644:20@15

Prints a markdown table (the one in docs/ecosystem.md) and writes the harness' results to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def write_tasks(folder: Path, limit: int, seed: int) -> list[str]:
    """arc_easy as multiple_choice (choices scored by their log-likelihood after 'Answer:') and
    triviaqa as generate_until (exact match against any alias), `limit` items each."""
    from qscope.data.benchmarks import LETTERS, load_benchmark

    folder.mkdir(parents=True, exist_ok=True)
    arc = [{"stem": it.stem, "choices": [" " + c for c in it.choices], "gold": LETTERS.index(it.answer)}
           for it in load_benchmark("arc_easy", limit=limit, seed=seed)]
    trivia = [{"prompt": it.prompt, "answers": it.aliases or [it.answer]}
              for it in load_benchmark("triviaqa", limit=limit, seed=seed)]
    tasks = {
        "qscope_arc_easy": (arc, {"output_type": "multiple_choice", "doc_to_text": "{{stem}}",
                                  "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
                                  "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}),
        "qscope_triviaqa": (trivia, {"output_type": "generate_until", "doc_to_text": "{{prompt}}",
                                     "doc_to_target": "{{answers[0]}}",
                                     "generation_kwargs": {"until": ["\n", "."], "max_gen_toks": 16, "do_sample": False},
                                     "filter_list": [{"name": "strip", "filter": [{"function": "regex",
                                                      "regex_pattern": "^\\s*(.*?)\\s*$"}, {"function": "take_first"}]}],
                                     "metric_list": [{"metric": "exact_match", "ignore_case": True,
                                                      "ignore_punctuation": True}]}),
    }
    for name, (docs, cfg) in tasks.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", **cfg}
        (folder / f"{name}.yaml").write_text(json.dumps(spec, indent=1))
    return list(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sae", default="default")
    parser.add_argument("--steer", default="6644:20@15")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("lm_eval_steered_vs_plain"))
    args = parser.parse_args()

    import qscope.integrations.lm_eval  # noqa: F401  registers --model qscope
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = write_tasks(args.out / "tasks", args.limit, args.seed)
    manager = TaskManager(include_path=str(args.out / "tasks"))
    rows = {}
    for label, extra in (("plain", ""), (f"steered {args.steer}", f",sae={args.sae},steer={args.steer}")):
        start = time.monotonic()
        out = simple_evaluate(model="qscope", model_args=f"model={args.model}{extra}", tasks=tasks,
                              task_manager=manager, batch_size=args.batch_size)
        rows[label] = (out["results"], time.monotonic() - start)
        (args.out / f"results-{label.split()[0]}.json").write_text(json.dumps(out["results"], indent=1, default=str))
    metrics = [("qscope_arc_easy", "acc,none"), ("qscope_arc_easy", "acc_norm,none"),
               ("qscope_triviaqa", "exact_match,strip")]
    print("| run | " + " | ".join(f"{t.removeprefix('qscope_')} {m.split(',')[0]}" for t, m in metrics) + " | seconds |")
    print("|---" * (len(metrics) + 2) + "|")
    for label, (res, seconds) in rows.items():
        cells = []
        for task, metric in metrics:
            value, err = res[task][metric], res[task].get(metric.replace(",", "_stderr,"))
            cells.append(f"{value:.3f}" + (f" ± {err:.3f}" if isinstance(err, float) else ""))
        print(f"| {label} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
