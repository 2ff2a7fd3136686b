"""``wsviz zoo build|path|table|clean``: the built-in demo model zoo."""

from __future__ import annotations

import shutil
import time


def register(sub) -> None:
    p = sub.add_parser(
        "zoo",
        help="build / locate the built-in demo model zoo and print its merging table",
        description="The demo zoo: a small Llama (LlamaForCausalLM, 4 blocks) over 8x8-digit "
        "tokens, pre-trained once and fine-tuned on 7 tasks (built offline from "
        "scikit-learn's bundled digits in about a minute, then cached); every model directory "
        "is a plain HF Llama checkpoint that mergekit merges. "
        "Location: $WSVIZ_ZOO_DIR, else <cache>/zoo/<version> (<cache>: $WSVIZ_CACHE_DIR, "
        "else $XDG_CACHE_HOME/wsviz, else ~/.cache/wsviz).",
    )
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    b = zsub.add_parser("build", help="build the zoo (no-op when already built)")
    b.add_argument("--force", action="store_true", help="rebuild even if it exists")
    b.add_argument("--dir", default=None, help="zoo directory (default: the cache location)")
    b.add_argument("--quiet", action="store_true", help="no progress messages")
    zsub.add_parser("path", help="print the zoo directory (does not build)")
    t = zsub.add_parser("table", help="measure and print the merging table (builds if needed)")
    t.add_argument("--dir", default=None, help="zoo directory (default: the cache location)")
    zsub.add_parser("clean", help="delete cached zoos of other versions (keeps the current one)")
    for q in zsub.choices.values():
        q.set_defaults(func=run)
    p.set_defaults(func=run)


def run(args) -> int:
    from wsviz.zoo import default_zoo_dir, ensure_zoo

    cmd = args.zoo_command
    if cmd == "path":
        print(default_zoo_dir())
        return 0
    if cmd == "clean":
        from wsviz.zoo import stale_zoo_dirs

        stale = stale_zoo_dirs()
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
            print(f"removed {d}")
        print(f"{len(stale)} stale zoo version(s) removed; current: {default_zoo_dir()}")
        return 0
    if cmd == "build":
        t0 = time.perf_counter()
        zoo = ensure_zoo(args.dir, force=args.force, progress=not args.quiet)
        took = time.perf_counter() - t0
        print(f"zoo {zoo.version} at {zoo.root} ({len(zoo.tasks)} tasks: "
              f"{', '.join(zoo.tasks)}; {took:.1f} s)")
        acc = zoo.manifest["test_accuracy"]
        for t in zoo.tasks:
            print(f"  {t:8s} pre-trained {100 * acc['pretrained'][t]:5.1f} %   "
                  f"fine-tuned {100 * acc['finetuned'][t]:5.1f} %")
        return 0
    from wsviz.zoo.table import format_table, measure_table

    zoo = ensure_zoo(args.dir)
    table, _ = measure_table(zoo, progress=True)
    print(format_table(table))
    print("\naccuracy in % on the held-out test split (597 images); λ and density tuned on "
          "the train split")
    return 0
