"""Regenerate `minilm_sentences.json` (run by hand; csearch never runs this).

Source: the King James Version of the Bible (1611, public domain), as shipped by
Debian's `bible-kjv-text` package and printed by its `bible` program
(`apt-get install bible-kjv`). Books: Genesis, Proverbs, Ecclesiastes, Luke, Acts.

Selection, deterministic: every verse that is one or more complete sentences (starts
with a capital letter, ends with `.`, `?` or `!`) of 8 to 40 words, de-duplicated,
ordered by the BLAKE2b hash of its text; the first 320 are the held-out fidelity set,
the next 640 the recovery-training set (disjoint).

    cd objectives/workloads/data && python make_minilm_sentences.py > minilm_sentences.json
"""

import hashlib
import json
import re
import subprocess

BOOKS = ["Genesis", "Proverbs", "Ecclesiastes", "Luke", "Acts"]
N_EVAL, N_TRAIN = 320, 640


def verses(book: str) -> list[str]:
    out = subprocess.run(["bible", "-l0", f"{book} 1:1-{book} 50:200"], check=True,
                         capture_output=True, text=True).stdout
    return [m.group(1).strip() for m in re.finditer(r"^\s+\d+ (.+)$", out, re.M)]


def main() -> None:
    seen: set[str] = set()
    pool = []
    for book in BOOKS:
        for v in verses(book):
            v = re.sub(r"\s+", " ", v)
            if v in seen or not v[0].isupper() or v[-1] not in ".?!":
                continue
            if not 8 <= len(v.split()) <= 40:
                continue
            seen.add(v)
            pool.append(v)
    pool.sort(key=lambda s: hashlib.blake2b(s.encode(), digest_size=8).hexdigest())
    print(json.dumps({
        "source": "King James Version of the Bible (1611, public domain), books "
                  + ", ".join(BOOKS) + "; text from Debian's bible-kjv-text package",
        "selection": "complete-sentence verses of 8-40 words, ordered by BLAKE2b hash; "
                     f"first {N_EVAL} = eval, next {N_TRAIN} = train",
        "eval": pool[:N_EVAL],
        "train": pool[N_EVAL:N_EVAL + N_TRAIN],
    }, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
