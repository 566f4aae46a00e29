"""``python -m prlib.routers``: every registered router with its family and a one-line
description."""

from __future__ import annotations

import argparse
import re
import sys

from prlib.routers import FAMILIES, catalogue


def one_line(text: str, width: int = 110) -> str:
    """The first sentence of ``text``, cut to ``width`` characters."""
    first = re.split(r"(?<=[a-z)]\.)\s", text, maxsplit=1)[0]
    return first if len(first) <= width else first[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prlib.routers", description=__doc__)
    parser.add_argument("--family", choices=FAMILIES, help="only the routers of one family")
    args = parser.parse_args(argv)
    table = catalogue(args.family)
    w_name, w_fam = table["router"].str.len().max(), table["family"].str.len().max()
    print(f"{'router':{w_name}}  {'family':{w_fam}}  description")
    for row in table.itertuples():
        print(f"{row.router:{w_name}}  {row.family:{w_fam}}  {one_line(row.description)}")
    print(f"\n{len(table)} routers registered (class names for get_router / load: "
          f"{', '.join(table['class'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
