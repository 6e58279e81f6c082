"""Regression gate: compare the newest stored run with an earlier one of the same GPU.

    python bench/gate.py [--results bench/results] [--run RUN] [--against RUN] [--threshold 0.10]

Exits 1 when any median is slower than the threshold, 2 when runs of different GPUs (or
none) would be compared. See attn/regress.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attn.regress import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
