"""Command line: ``python -m attn {info,build,compare}``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attn")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="backends, the reasons each is or isn't usable, versions, GPU")
    sub.add_parser("build", help="build the ThunderKittens extension ahead of time and print where", add_help=False)
    sub.add_parser("compare", help="run every available backend on the workloads and print one table", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "info":
        from .info import report

        print(report())
        return 0
    if args.cmd == "build":
        from .tk_ext.build import main as build_main

        return build_main(rest)
    if args.cmd == "compare":
        from .compare import main as compare_main

        return compare_main(rest)
    return 2


if __name__ == "__main__":
    sys.exit(main())
