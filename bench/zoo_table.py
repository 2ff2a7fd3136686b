"""Measure the demo zoo's merging table (the one README.md shows), FusionBench style.

    python bench/zoo_table.py [--build-time]

Builds the zoo if needed (cached), then prints per-task test accuracy (%) of the pre-trained
encoder, the individual fine-tunes, simple averaging, task arithmetic (λ tuned on the train
split) and TIES (density, λ tuned on the train split), plus the average and the normalized
average (merged / individual). ``--build-time`` also times a fresh build into a temporary
directory (the target is <= 60 s on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build-time", action="store_true", help="time a fresh build as well")
    args = ap.parse_args()

    from wsviz.zoo import ensure_zoo
    from wsviz.zoo.table import format_table, measure_table

    zoo = ensure_zoo()
    print(f"zoo {zoo.version} at {zoo.root}; recorded build time "
          f"{zoo.manifest['build_seconds']:.1f} s")
    if args.build_time:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            fresh = ensure_zoo(Path(d) / "zoo", progress=False)
            took = time.perf_counter() - t0
            same = fresh.fingerprints == zoo.fingerprints
        print(f"fresh build: {took:.1f} s (target <= 60 s on 2 cores); "
              f"identical fingerprints: {same}")
    t0 = time.perf_counter()
    table, chosen = measure_table(zoo, progress=True)
    print(format_table(table))
    print(f"\nchosen on the train split: {chosen}; measured in {time.perf_counter() - t0:.1f} s")
    ind = table.set_index("method")["avg"]
    gap = ind["Individual (fine-tuned)"] - ind["Simple averaging"]
    for m in ("Task arithmetic", "TIES-merging"):
        print(f"{m}: recovers {100 * (ind[m] - ind['Simple averaging']) / gap:.0f} % of the "
              "averaging -> individual gap")


if __name__ == "__main__":
    main()
