"""Command line: ``python -m attn {info,build,compare}``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="backends, the reasons each is or isn't usable, versions, GPU")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        from .info import report

        print(report())
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
