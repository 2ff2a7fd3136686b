"""Run several mergekit configs in one process (import once): used by the parity tests.

usage: python mergekit_runner.py JOBS.json   with [{"yaml": path, "out": dir, "seed": int|null}]
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(path):
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    for job in json.load(open(path)):
        with open(job["yaml"]) as f:
            cfg = MergeConfiguration.model_validate(yaml.safe_load(f))
        opts = MergeOptions(random_seed=job.get("seed"), copy_tokenizer=False,
                            write_model_card=False, quiet=True, lazy_unpickle=False,
                            device="cpu")
        run_merge(cfg, job["out"], opts)
        print("done", job["out"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
