"""``wsviz fisher MODEL --data FILE -o fisher.safetensors``: a model's diagonal Fisher from data,
for Fisher-weighted merging (``method: fisher`` with ``extra: {fisher: {MODEL: FILE}}``)."""

from __future__ import annotations

from pathlib import Path

from wsviz.errors import WsvizError


def register(sub) -> None:
    p = sub.add_parser(
        "fisher",
        help="compute a model's diagonal Fisher from data (for the fisher merge method)",
        description="Compute the diagonal Fisher F = mean over examples of the squared "
        "per-example gradient of log p(y|x) (Matena & Raffel) of a causal LM in MODEL (an HF "
        "directory) on --data: a UTF-8 text file (cut into windows of --seq-len tokens, one "
        "example each, tokenised with MODEL's tokenizer) or token ids saved as a [N, T] "
        "integer tensor (.pt / .safetensors, key input_ids). Writes a safetensors file with "
        "MODEL's parameter names; reference it from a fisher recipe as "
        "extra: {fisher: {MODEL: FILE}}. With --demo, writes one Fisher per demo-zoo task "
        "(its training images through its head) and a ready fisher recipe into -o DIR.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="HF model directory (causal LM)")
    p.add_argument("--data", type=Path, help="text file, or token ids (.pt / .safetensors)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output .safetensors (a directory with --demo)")
    p.add_argument("--demo", action="store_true", help="Fishers of every demo-zoo task model")
    p.add_argument("--labels", default="sample", choices=["sample", "empirical", "expected"],
                   help="y drawn from the model (default, the paper's estimator), the data's "
                   "own next tokens (empirical Fisher), or the exact expectation over classes "
                   "(classification only: the demo)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per example (text data)")
    p.add_argument("--max-examples", type=int, default=256, help="examples used at most")
    p.add_argument("--batch-size", type=int, default=4,
                   help="examples per vmapped gradient call (memory ≈ this × parameters)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled labels")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cpu)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.set_defaults(func=run)


def _save(tensors: dict, out: Path, metadata: dict, force: bool, inputs=()) -> None:
    """Atomic safetensors write (:func:`wsviz.io.outputs.atomic_write`); refuses to overwrite
    unless forced, and refuses an output that is, contains or lies inside an input."""
    from safetensors.torch import save_file

    from wsviz.io.outputs import atomic_write, check_output

    check_output(out, inputs, force=force, kind="file", hint="pass --force to overwrite it")
    atomic_write(out, lambda p: save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, p,
        metadata={k: str(v) for k, v in metadata.items()}), force=force)


def load_token_data(path: Path, model_dir: Path, seq_len: int):
    """``[N, T]`` int64 token ids from a text file (windows of ``seq_len`` tokens of
    ``model_dir``'s tokenizer) or from a saved tensor. Raises WsvizError naming the file."""
    import torch

    from wsviz.eval.perplexity import read_text

    if not path.is_file():
        raise WsvizError(f"--data {path}: no such file")
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors"):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            try:
                obj = torch.load(path, weights_only=True, map_location="cpu")
            except Exception as e:  # noqa: BLE001
                raise WsvizError(f"--data {path}: cannot read token ids ({e})") from None
        if isinstance(obj, dict):
            obj = obj.get("input_ids")
        if not isinstance(obj, torch.Tensor) or obj.dim() != 2 or obj.is_floating_point():
            raise WsvizError(f"--data {path}: expected an integer [N, T] tensor of token ids "
                             "(or a dict with 'input_ids')")
        return obj.long()
    from transformers import AutoTokenizer

    text = read_text(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise WsvizError(f"{model_dir}: no usable tokenizer for --data {path} ({e}); give "
                         "token ids (.pt) instead") from None
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    n = len(ids) // seq_len
    if n == 0:
        raise WsvizError(f"--data {path}: {len(ids)} tokens, fewer than --seq-len {seq_len}")
    return ids[: n * seq_len].view(n, seq_len)


def run(args) -> int:
    import torch

    if args.demo:
        return _run_demo(args)
    if not args.model or args.data is None:
        raise WsvizError("give MODEL and --data FILE (or --demo)")
    if args.output.suffix != ".safetensors":
        raise WsvizError(f"-o {args.output}: write the Fisher to a .safetensors file")
    from wsviz.io.outputs import check_output

    check_output(args.output, [args.model, args.data], force=args.force, kind="file",
                 hint="pass --force to overwrite it")
    if args.labels == "expected":
        raise WsvizError("--labels expected sums over every class; for a language model use "
                         "sample or empirical")
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise WsvizError(f"{model_dir}: MODEL must be an HF model directory")
    ids = load_token_data(args.data, model_dir, args.seq_len)
    from transformers import AutoModelForCausalLM

    from wsviz.compute.fisher import module_fisher

    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True,
                                                     dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise WsvizError(f"{model_dir}: cannot load a causal LM ({type(e).__name__}: {e})"
                         ) from None
    dev = torch.device(args.device) if args.device else torch.device("cpu")
    model = model.to(dev)
    ids = ids[: args.max_examples]
    batches = [ids[i:i + args.batch_size].to(dev) for i in range(0, len(ids), args.batch_size)]
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    fisher = module_fisher(model, batches, labels=args.labels, generator=gen,
                           chunk=args.batch_size)
    _save(fisher, args.output, {"wsviz": "diagonal_fisher", "labels": args.labels,
                                "examples": len(ids), "model": model_dir, "data": args.data},
          args.force, inputs=[model_dir, args.data])
    total = sum(float(v.sum()) for v in fisher.values())
    print(f"diagonal Fisher of {len(fisher)} tensors of {model_dir} on {len(ids)} examples "
          f"(labels: {args.labels}; sum {total:.4g}) -> {args.output}")
    print(f"  use it: extra: {{fisher: {{{model_dir}: {args.output}}}}} in a fisher recipe")
    return 0


def _run_demo(args) -> int:
    """Fishers of every demo-zoo task model, and a fisher recipe merging them."""
    from wsviz.io.outputs import atomic_write, check_output, write_marker
    from wsviz.recipes import Recipe
    from wsviz.zoo import ensure_zoo

    out: Path = args.output
    zoo = ensure_zoo()
    zoo_files = zoo.modelset().files()
    check_output(out, zoo_files, force=args.force, hint="pass --force to overwrite it")
    ev = zoo.evaluator(device=args.device)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out)  # a folder wsviz wrote: a later --force may write into it again
    except OSError as e:
        raise WsvizError(f"cannot write {out}: {e.strerror or e}; choose another path") from None
    files = {}
    for task in zoo.tasks:
        f = ev.fisher(zoo.weights(task), task, labels=args.labels, seed=args.seed,
                      max_examples=args.max_examples)
        path = out / f"{task}.safetensors"
        _save(f, path, {"wsviz": "diagonal_fisher", "labels": args.labels, "task": task},
              force=True, inputs=zoo_files)
        files[task] = str(path.resolve())
        print(f"  {task}: Fisher of {len(f)} tensors -> {path}")
    recipe = Recipe("fisher", models=list(files), extra={"fisher": files})
    atomic_write(out / "fisher_recipe.json", lambda p: p.write_text(recipe.to_json()))
    print(f"recipe over the zoo's task models: {out / 'fisher_recipe.json'} "
          f"(try: wsviz evaluate --demo {out / 'fisher_recipe.json'})")
    return 0
