"""Seeded fuzzing of safetensors headers and recipes through the CLI (in-process).

Every case checks the CLI contract: never a traceback; a user error exits 2 with one line on
stderr and nothing under the output name (nor a temp entry beside it); the inputs stay
byte-for-byte the same. A mutation that makes the file or recipe invalid must be an error —
for headers the reference ``safetensors`` library is the oracle of validity; recipe
mutations are built invalid on purpose (non-finite numbers, wrong container types, bad
bytes) or may stay valid (then the merge must succeed and write the output).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.contract import leftovers, run_cli, snapshot

N_HEADER = 240
N_RECIPE = 240


def _model(dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(16, 8, generator=g)}
    for i in range(2):
        sd[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(12, 8, generator=g)
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(8, 8, generator=g)
        sd[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(8, generator=g)
    return {k: v.to(dtype) for k, v in sd.items()}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """fp32 and bf16 single-file models: base and two fine-tunes each."""
    root = tmp_path_factory.mktemp("fuzz_models")
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        name = str(dt).split(".")[-1]
        paths = []
        for i in range(3):
            p = root / f"{name}_{i}.safetensors"
            save_file(_model(dt, i), p, metadata={"format": "pt"})
            paths.append(p)
        out[name] = paths
    return root, out


def _split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header, data: bytes, pad: bool = True) -> bytes:
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


JUNK = [None, True, -1, 0, 3.5, float("nan"), 1e300, "x", "F32", [], [1], {}, {"a": 1},
        [[1, 2]], 2**70, -2**70]
CODES = ["F32", "BF16", "F16", "F64", "I8", "U8", "BOOL", "I64", "F8_E4M3", "C64", "U32", "x"]


def mutate_header(raw: bytes, rng: random.Random) -> bytes:
    header, data = _split(raw)
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    e = header[name]
    kind = rng.randrange(17)
    if kind == 0:
        e["dtype"] = rng.choice(CODES + JUNK)
    elif kind == 1:
        i = rng.randrange(len(e["shape"]) + 1)
        shape = list(e["shape"])
        if i < len(shape):
            shape[i] = rng.choice([-shape[i], shape[i] + 1, shape[i] * 2, 0, float(shape[i]),
                                   str(shape[i]), True, 2**62])
        else:
            shape.append(rng.choice([1, 2, 0]))
        e["shape"] = rng.choice([shape, shape[::-1], shape[:-1]])
    elif kind == 2:
        b, end = e["data_offsets"]
        d = rng.choice([1, 2, 4, 8, 64, -1, -4])
        e["data_offsets"] = rng.choice([[b + d, end + d], [b, end + d], [b + d, end], [end, b],
                                        [b, end, end], [b], [float(b), end], [-b - 1, end]])
    elif kind == 3:
        other = header[rng.choice(names)]
        e["data_offsets"] = list(other["data_offsets"])  # overlap / alias another tensor
    elif kind == 4:
        header[name] = rng.choice(JUNK)
    elif kind == 5:
        del e[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == 6:
        e[rng.choice(["extra", "offsets", "DTYPE"])] = rng.choice(JUNK)
    elif kind == 7:
        header["__metadata__"] = rng.choice([{"format": rng.choice(JUNK)}, [], "pt", None,
                                             {"a": {"b": "c"}}, {"format": "np"}])
    elif kind == 8:
        header[name + rng.choice(["", ".x", "_copy"])] = dict(e)  # a second name, same bytes
    elif kind == 9:
        header = rng.choice([[header], "header", 7, None])
    elif kind == 10:
        header[rng.choice(["", "a" * 300, "é", "x\ny"])] = header.pop(name)  # rename
    raw2 = _join(header, data, pad=rng.random() < 0.8) if kind <= 10 else raw
    if kind == 11:  # truncate anywhere
        raw2 = raw[: rng.randrange(len(raw))]
    elif kind == 12:  # the length prefix
        (n,) = struct.unpack("<Q", raw[:8])
        raw2 = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, n + 8, 2**63, len(raw),
                                             2**64 - 1])) + raw[8:]
    elif kind == 13:  # flip bytes inside the header
        (n,) = struct.unpack("<Q", raw[:8])
        b = bytearray(raw)
        for _ in range(rng.randrange(1, 4)):
            b[8 + rng.randrange(n)] = rng.randrange(256)
        raw2 = bytes(b)
    elif kind == 14:  # append bytes
        raw2 = raw + bytes(rng.randrange(1, 64))
    elif kind == 15:  # non-UTF-8 / non-JSON header bytes of the same length
        (n,) = struct.unpack("<Q", raw[:8])
        raw2 = raw[:8] + bytes(rng.choice([0xff, 0xc3, 0x00, 0x7b]) for _ in range(n)) + \
            raw[8 + n:]
    elif kind == 16:  # flip bytes in the data (a valid file with other, maybe NaN, values)
        b = bytearray(raw)
        (n,) = struct.unpack("<Q", raw[:8])
        for _ in range(rng.randrange(1, 16)):
            b[8 + n + rng.randrange(len(raw) - 8 - n)] = rng.randrange(256)
        raw2 = bytes(b)
    return raw2


def reference_ok(path: Path) -> bool:
    """Does the reference implementation load every tensor of ``path``?"""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                f.get_tensor(k)
    except Exception:  # noqa: BLE001 - any refusal means "invalid"
        return False
    return True


def check_contract(res, out: Path, before: dict, inputs, must_fail: bool, case: str) -> int:
    rc, _, err = res
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, f"{case}: traceback\n{err[-3000:]}"
    assert rc in (0, 2), f"{case}: exit {rc}\n{err[-2000:]}"
    if must_fail:
        assert rc == 2, f"{case}: an invalid input was accepted"
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("wsviz"), f"{case}: {err!r}"
        assert not out.exists(), f"{case}: output written on error"
    else:
        assert out.is_dir(), f"{case}: exit 0 without output"
    assert leftovers(out.parent) == [], f"{case}: temp entries left"
    assert snapshot(*inputs) == before, f"{case}: an input changed"
    return rc


def test_fuzz_safetensors_headers(zoo, tmp_path):
    rng = random.Random(20261124)
    _, models = zoo
    work = tmp_path / "w"
    counts = {"invalid": 0, "valid": 0, "exit0": 0}
    for i in range(N_HEADER):
        dt = rng.choice(sorted(models))
        base, ft0, ft1 = models[dt]
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        victim = work / f"ft_{i}.safetensors"
        victim.write_bytes(mutate_header(ft0.read_bytes(), rng))
        valid = reference_ok(victim)
        counts["valid" if valid else "invalid"] += 1
        out = work / "out"
        if i % 2:
            argv = ["prune", victim, "--method", "magnitude", "--sparsity", "0.5", "-o", out,
                    "--no-progress"]
            inputs = [victim]
        else:
            recipe = work / "r.json"
            recipe.write_text(json.dumps({"method": "ties", "base": str(base),
                                          "params": {"lambda": 1.0}, "models": [
                {"model": str(victim), "params": {"weight": 1.0, "density": 0.5}},
                {"model": str(ft1), "params": {"weight": 0.5, "density": 0.5}}]}))
            argv = ["merge", recipe, "-o", out, "--no-progress"]
            inputs = [victim, base, ft1, recipe]
        before = snapshot(*inputs)
        rc = check_contract(run_cli(argv), out, before, inputs, must_fail=not valid,
                            case=f"header case {i} ({dt}, {argv[0]})")
        counts["exit0"] += rc == 0
    assert counts["invalid"] > N_HEADER // 2 and counts["exit0"] > 0, counts


def _recipe(models) -> dict:
    base, ft0, ft1 = (str(p) for p in models)
    return {"method": "ties", "base": base, "params": {"lambda": 1.0}, "dtype": "float32",
            "models": [{"model": ft0, "params": {"weight": 1.0, "density": 0.5}},
                       {"model": ft1, "params": {"weight": 0.5, "density": [0.3, 0.7]}}]}


def _paths(d, prefix=()):
    """Every (path, value) in a nested dict/list."""
    yield prefix, d
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _paths(v, (*prefix, i))


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


NON_FINITE = [float("nan"), float("inf"), -float("inf")]
WRONG = ["abc", [1, 2], {"a": 1}, True, [], "1e999", 2**80, [[0.5]], 7]


def _to_yaml(d: dict) -> str:
    """The recipe as a mergekit YAML (key names mapped, anything else carried over)."""
    import yaml

    names = {"method": "merge_method", "base": "base_model", "params": "parameters"}
    y = {names.get(k, k): v for k, v in d.items()}
    if isinstance(y.get("models"), list):
        y["models"] = [{("parameters" if k == "params" else k): v for k, v in m.items()}
                       if isinstance(m, dict) else m for m in y["models"]]
    return yaml.safe_dump(y, allow_unicode=True)


def mutate_recipe(rng: random.Random, models) -> tuple[bytes, str, bool]:
    """(file bytes, suffix, must_fail)."""
    d = _recipe(models)
    suffix = rng.choice([".json", ".yml"])
    kind = rng.randrange(9)
    must_fail = True
    numbers = [p for p, v in _paths(d) if isinstance(v, float)]
    if kind == 0:  # a non-finite number anywhere a number is
        _set(d, rng.choice(numbers), rng.choice(NON_FINITE))
    elif kind == 1:  # a non-finite knot in a gradient / in a filter value
        _set(d, rng.choice(numbers), rng.choice([
            [0.5, rng.choice(NON_FINITE)],
            [{"filter": "mlp", "value": rng.choice(NON_FINITE)}, {"value": 0.5}]]))
    elif kind == 2:  # the wrong container / type for a structural field
        key = rng.choice(["models", "params", "method", "base", "dtype", "seed", "extra"])
        d[key] = rng.choice([v for v in WRONG if not (key == "seed" and isinstance(v, int)
                                                      and not isinstance(v, bool)
                                                      and v < 2**64)])
    elif kind == 3:  # a wrong type inside a model entry
        m = rng.choice(d["models"])
        m[rng.choice(["model", "params"])] = rng.choice(WRONG)
    elif kind == 4:  # out-of-range or mistyped parameter values
        p = rng.choice(numbers)
        if p[-1] == "density" or (len(p) > 1 and p[-2] == "density"):
            v = rng.choice([0.0, -0.5, 1.5, "half", True, None])
        else:
            v = rng.choice(["one", True, None, {"x": 1}, []])
        _set(d, p, v)
    elif kind == 5:  # unknown keys
        target = rng.choice([d, d["params"], d["models"][0], d["models"][0]["params"]])
        target[rng.choice(["lamda", "dennsity", "extra_key", "weights"])] = 1.0
    elif kind == 6:  # harmless changes: must still merge
        must_fail = False
        p = rng.choice(numbers)
        _set(d, p, round(rng.uniform(0.2, 0.9), 3) if "density" in p else
             round(rng.uniform(-1.0, 2.0), 3))
    text = json.dumps(d, allow_nan=True) if suffix == ".json" else _to_yaml(d)
    raw = text.encode()
    if kind == 7:  # byte-level damage
        b = bytearray(raw)
        choice = rng.randrange(4)
        if choice == 0:  # truncated: may even stay a valid recipe (YAML lines)
            b = b[: rng.randrange(1, len(b))]
            must_fail = False
        elif choice == 1:
            b[rng.randrange(len(b))] = 0xff
        elif choice == 2:
            b = b"\xef\xbb\xbf\xff\xfe" + b
        else:
            b = b"!!python/object/apply:os.system ['touch PWNED']\n" + b
        raw = bytes(b)
    elif kind == 8:  # deep nesting / alias bombs
        raw = (b"[" * 50_000 + b"]" * 50_000) if suffix == ".json" else (
            b"a: &a [" + b"1," * 80 + b"1]\nb: &b [" + b"*a," * 80 + b"*a]\nc: &c [" +
            b"*b," * 80 + b"*b]\nmerge_method: ties\nmodels: [*c]\n")
    return raw, suffix, must_fail


def _merge_case(run, work: Path, i: int, raw: bytes, suffix: str, models, must_fail: bool):
    """``wsviz merge`` of the recipe bytes ``raw`` written under the fresh folder ``work``
    (``run``: in-process or a real process), checked against the contract; the result."""
    work.mkdir()
    recipe = work / f"r{i}{suffix}"
    recipe.write_bytes(raw)
    out = work / "out"
    inputs = [*models, recipe]
    before = snapshot(*inputs)
    res = run(["merge", recipe, "-o", out, "--no-progress"])
    check_contract(res, out, before, inputs, must_fail,
                   f"recipe case {i} ({suffix}): {raw[:300]!r}")
    return res


def test_fuzz_recipes(zoo, tmp_path):
    rng = random.Random(7)
    root, models = zoo
    work = tmp_path / "w"
    counts = {"exit0": 0, "exit2": 0}
    for i in range(N_RECIPE):
        dt = rng.choice(sorted(models))
        raw, suffix, must_fail = mutate_recipe(rng, models[dt])
        shutil.rmtree(work, ignore_errors=True)
        rc = _merge_case(run_cli, work, i, raw, suffix, models[dt], must_fail)[0]
        counts["exit0" if rc == 0 else "exit2"] += 1
        assert not (work / "PWNED").exists() and not Path("PWNED").exists()
    assert counts["exit0"] > 10 and counts["exit2"] > N_RECIPE // 2, counts


def _run_process(argv) -> tuple[int, str, str]:
    """``wsviz ARGV`` in a real process (``python -m wsviz.cli``)."""
    import os
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "wsviz.cli", *map(str, argv)], env=env,
                       capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def test_in_process_cases_match_real_processes(zoo, tmp_path):
    """The fuzz cases run in-process (``run_cli``); three also run as real ``wsviz``
    processes — the first invalid and the first valid recipe mutation (JSON / YAML), and a
    damaged header — with the same exit status, the same error line and the same contract."""
    rng = random.Random(7)
    _, models = zoo
    picked: dict[tuple, tuple] = {}
    for i in range(60):
        dt = rng.choice(sorted(models))
        raw, suffix, must_fail = mutate_recipe(rng, models[dt])
        key = (True, ".json") if must_fail else (False, ".yml")
        if (must_fail, suffix) == key:
            picked.setdefault(key, (i, dt, raw, suffix, must_fail))
    hdr = mutate_header(models["float32"][1].read_bytes(), random.Random(3))
    assert len(picked) == 2
    for i, dt, raw, suffix, must_fail in picked.values():
        results = []
        for how, run in (("in-process", run_cli), ("process", _run_process)):
            work = tmp_path / f"{how}_{i}"
            res = _merge_case(run, work, i, raw, suffix, models[dt], must_fail)
            results.append((res[0], res[2].replace(str(work), "WORK")))
        assert results[0] == results[1], (i, results)
    for how, run in (("in-process", run_cli), ("process", _run_process)):
        victim = tmp_path / f"h_{how}.safetensors"
        victim.write_bytes(hdr)
        out = tmp_path / f"h_{how}_out"
        res = run(["prune", victim, "--method", "magnitude", "--sparsity", "0.5", "-o", out,
                   "--no-progress"])
        check_contract(res, out, snapshot(victim), [victim], not reference_ok(victim), how)


# -- CLI output sanitisation -----------------------------------------------------------------
N_NAMES = 40
HOSTILE = ["\x1b]0;pwned\x07", "\x1b[2J", "\x1b[1A\x1b[2K", "\r", "\n", "\t", "\x00", "\x07",
           "\x7f", "\x9b", "\x85", "\u202e", "\u2066", "\u2028", "\x1bP+q\x1b\\", "\b\b\b"]
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                 "\ud800-\udfff]")


def _hostile_name(rng: random.Random, i: int) -> str:
    parts = [f"model.layers.{i % 2}"]
    for _ in range(rng.randrange(1, 4)):
        parts.append(rng.choice(HOSTILE) + rng.choice(["mlp", "q", "wsviz: error: fake", ""]))
    return ".".join(parts) + rng.choice([".weight", ".bias", ""])


def test_fuzz_cli_output_is_sanitised(tmp_path):
    """Seeded names full of terminal controls: `info --tensors` (stdout), `analyze` of a
    mismatching pair and `merge` of it (one-line errors on stderr) print every control
    character escaped; the escaped name appears where the name is listed."""
    from wsviz.textsafe import escape_controls

    rng = random.Random(20261207)
    names = list(dict.fromkeys(_hostile_name(rng, i) for i in range(N_NAMES)))
    base = tmp_path / "base.safetensors"
    save_file({n: torch.randn(4, 4, generator=torch.Generator().manual_seed(i))
               for i, n in enumerate(names)}, base)
    ft = tmp_path / "ft.safetensors"
    odd = rng.sample(names, 5)
    save_file({n: torch.randn(4, 5 if n in odd else 4) for n in names}, ft)
    rc, out, err = run_cli(["info", base, "--tensors"])
    assert rc == 0, err
    assert not RAW.search(out.replace("\n", "").replace("\t", "")), out
    for n in names:
        assert escape_controls(n) in out, n
    assert not any(ln.startswith("wsviz: error") for ln in out.splitlines())
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"method": "task_arithmetic", "base": str(base),
                                  "params": {"lambda": 1.0, "weight": 1.0},
                                  "models": [str(ft)]}))
    for argv, want in ((["analyze", base, ft, "-o", tmp_path / "t.csv", "--quiet",
                         "--no-cache"], 2), (["merge", recipe, "-o", tmp_path / "o",
                                             "--no-progress"], 2), (["info", base, ft], 1)):
        rc, out, err = run_cli(argv)
        assert rc == want, (argv[0], rc, err)
        assert "Traceback" not in err, err
        for text in (out, err):
            assert not RAW.search(text.replace("\n", "").replace("\t", "")), (argv[0], text)
        lines = [ln for ln in err.splitlines() if ln.startswith("wsviz")]
        if rc == 2:  # the error names a hostile tensor, escaped
            assert len(lines) == 1, (argv[0], err)
            assert re.search(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[rnt])", lines[0]), lines[0]
