"""What a feature store built with the defaults reads: texts per corpus and per language, and
tokens (position 0 of each text skipped, as a store counts them), for the first N texts of the training mix and of the dashboard mix (the default of
`qscope features build`). No model runs: the tokenizer counts tokens, cut at the build's 128.

Why: a language feature gets a label naming its language only if the store holds enough texts
in that language for them to fill its strongest top contexts.

    python experiments/store_corpus.py --out docs/web/store_corpus.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from itertools import islice

from qscope.data.mix import DASHBOARD_WEIGHTS, MIX_WEIGHTS, mix_records
from qscope.data.sources import texts_by_language

MAX_LENGTH = 128  # tokens per text the build keeps (`features build --max-length`)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-texts", default="64,256,512,1500", help="Comma-separated store sizes.")
    ap.add_argument("--language", default="fr", help="Language (code of the multilingual corpus) to count.")
    ap.add_argument("--out", help="Also write the rows as JSON here.")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from qscope.model.loading import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    lang_of = {t: lang for lang, texts in texts_by_language("multilingual").items() for t in texts}
    rows = []
    for name, weights in (("mix", MIX_WEIGHTS), ("dashboard", DASHBOARD_WEIGHTS)):
        for n in (int(x) for x in args.n_texts.split(",")):
            records = list(islice(mix_records(None, 0, weights), n))
            langs = Counter(lang_of.get(t, "?") for corpus, t in records if corpus == "multilingual")
            tokens = sum(min(len(tokenizer(t)["input_ids"]), MAX_LENGTH) - 1 for _, t in records)  # position 0 skipped, as in a store
            rows.append({"corpus": name, "n_texts": n, "tokens": tokens,
                         "per_corpus": dict(Counter(c for c, _ in records).most_common()),
                         "languages": len(langs), f"{args.language}_texts": langs[args.language],
                         "languages_with_3_texts": sum(v >= 3 for v in langs.values())})
    print(f"{'corpus':<10} {'texts':>6} {'tokens':>8} {'multilingual':>12} {args.language + ' texts':>9} "
          f"{'languages (>= 3 texts)':>23}")
    for r in rows:
        print(f"{r['corpus']:<10} {r['n_texts']:>6} {r['tokens']:>8,} {r['per_corpus'].get('multilingual', 0):>12} "
              f"{r[args.language + '_texts']:>9} {r['languages']:>14} ({r['languages_with_3_texts']})")
    if args.out:
        from qscope.provenance import KEY, record

        with open(args.out, "w") as f:
            json.dump({KEY: record(seeds=0), "max_length": MAX_LENGTH, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
