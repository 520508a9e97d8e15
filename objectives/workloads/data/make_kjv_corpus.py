"""Regenerate `kjv.txt.xz`, the `tiny-lm` corpus (run by hand; csearch never runs this).

Source: the whole King James Version of the Bible (1611; its copyright has expired, it
is in the public domain), as shipped by Debian's `bible-kjv-text` package and printed by
the `bible` program of Debian's `bible-kjv` package (the package's own code is GPL-2+,
but no part of it is shipped here, only the Bible's text):

    apt-get install bible-kjv        # or: apt-get download bible-kjv bible-kjv-text
    python objectives/workloads/data/make_kjv_corpus.py [path/to/bible]

One verse per line, in canonical order, without verse references; 31,102 lines,
4,137,850 characters (one token per character for `tiny-lm`).
"""

import lzma
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).with_name("kjv.txt.xz")


def main() -> None:
    args = sys.argv[1:] or ["bible"]
    if len(args) == 1 and Path(args[0]).is_dir():  # an extracted bible-kjv-text package
        args = ["bible", "-p", args[0]]
    out = subprocess.run([*args, "-f", "-l0", "Genesis 1:1-Revelation 22:21"], check=True,
                         capture_output=True, text=True).stdout
    verses = [re.sub(r"^\S+?\d+:\d+ ", "", line).strip() for line in out.splitlines()]
    text = "\n".join(v for v in verses if v) + "\n"
    OUT.write_bytes(lzma.compress(text.encode("ascii"), preset=9 | lzma.PRESET_EXTREME))
    print(f"{OUT}: {len(text)} characters, {OUT.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
