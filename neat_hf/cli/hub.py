"""`neat-hub`: push NEAT adapters, rebuild their model cards, merge them into their base model, export them as LoRA.

```bash
neat-hub push ADAPTER_DIR REPO_ID [--private] [--revision BRANCH] [--commit-message MSG] [--create-pr] [--keep-card]
neat-hub card ADAPTER_DIR [--eval-results FILE_OR_DIR] [--repo-id REPO_ID] [--base-model ID] [--dataset ID]
neat-hub merge BASE ADAPTER OUT_DIR [--push-to-hub REPO_ID] [--private] [--dtype auto] [--auto-class CLASS] [--load-in-4bit]
neat-hub export-lora BASE ADAPTER OUT_DIR [--dtype auto] [--revision REV] [--server vllm] [--push-to-hub REPO_ID]
```

The Hub token comes from `HF_TOKEN` or `hf auth login` (there is no `--token` flag, so it never lands in shell history
or process lists) and is never printed. Exit status: 0 on success; 2 for bad arguments or input (a missing folder, an
adapter that does not fit its base: one line on stderr); 1 when the Hub failed (one line); any other error keeps its
traceback (`neat_hf.cli.REPORTED_ERRORS`).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from collections.abc import Sequence

from neat_hf.cli import REPORTED_ERRORS, exit_status
from neat_hf.cli.hints import option_strings, unknown_option_hints
from neat_hf.errors import NeatError
from neat_hf.cli.model_source import looks_like_path

logger = logging.getLogger("neat_hf.hub")

#: `--dtype` of `merge` and `export-lora`: "auto" keeps the checkpoint's dtype.
DTYPES = ["auto", "float32", "bfloat16", "float16"]

#: One example per command, shown by `neat-hub --help` and by each command's `--help`.
EXAMPLES = {
    "push": "neat-hub push neat-output my-user/tiny-neat --private",
    "card": "neat-hub card neat-output --eval-results results/",
    "merge": "neat-hub merge neat-output/base_model neat-output merged/",
    "export-lora": "neat-hub export-lora neat-output/base_model neat-output neat-lora/ --server vllm",
}


def _examples(*commands: str) -> str:
    return "example" + ("s" if len(commands) > 1 else "") + ":\n" + "\n".join(f"  {EXAMPLES[c]}" for c in commands)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neat-hub",
        description="Share NEAT adapters on the Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`.",
        epilog=_examples(*EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{push,card,merge,export-lora}")

    push = sub.add_parser("push", epilog=_examples("push"), formatter_class=argparse.RawDescriptionHelpFormatter, help="Push an adapter folder (adapter files + model card) in one commit.")
    push.add_argument("adapter_dir", help="Folder written by NeatModel.save_pretrained (or a NeatTrainer output dir).")
    push.add_argument("repo_id", help="Hub repo, 'namespace/name' or 'name'; created if missing.")
    push.add_argument("--private", action="store_true", help="Create the repo as private (if it does not exist).")
    push.add_argument("--revision", help="Branch to push to; created from main if missing.")
    push.add_argument("--commit-message", help="Commit message (default: 'Upload NEAT adapter').")
    push.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    push.add_argument("--keep-card", action="store_true", help="Upload the folder's README.md as is (no rebuild).")
    push.add_argument(
        "--delete-conflicting",
        action="store_true",
        help="Delete, in the same commit, files of the repo that contradict an adapter repo (pickles such as an old "
        "adapter_model.bin, full-model weights such as model.safetensors); without it they are only listed.",
    )
    _card_options(push)

    card = sub.add_parser("card", epilog=_examples("card"), formatter_class=argparse.RawDescriptionHelpFormatter, help="(Re)build README.md of an adapter folder, e.g. after evaluation.")
    card.add_argument("adapter_dir", help="Adapter folder (adapter_config.json + adapter_model.safetensors).")
    card.add_argument(
        "--eval-results",
        help="lm-eval results JSON (results_<date>.json from `lm_eval --output_path`) or a folder holding them; "
        "added to the card's model-index, replacing earlier scores of the same task and metric.",
    )
    card.add_argument("--repo-id", help="Hub repo the adapter lives in, for the loading snippets.")
    card.add_argument("--drop-eval-results", action="store_true", help="Forget the evaluation results of the old card.")
    _card_options(card)

    model_output = [_adapter_on_base_options(), _push_output_options()]
    merge = sub.add_parser(
        "merge", parents=model_output, epilog=_examples("merge"), formatter_class=argparse.RawDescriptionHelpFormatter, help="Merge an adapter into its base model and save (or push) the full model."
    )
    merge.add_argument("out_dir", help="Output folder (must not exist or be empty, unless --overwrite).")
    merge.add_argument("--base-revision", help="Hub revision of the base model.")
    merge.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="dtype to load and save the base in (default: the checkpoint's).",
    )
    merge.add_argument("--overwrite", action="store_true", help="Replace a non-empty OUT_DIR.")
    quantized = merge.add_argument_group(
        "quantized base", "Load the base as the adapter was trained on it (bitsandbytes, neat-hf[bnb]); the merged model "
        "is the dequantized base plus the adapter, in full precision."
    )
    quantized.add_argument("--load-in-4bit", action="store_true", help="Load the base in 4 bit.")
    quantized.add_argument("--load-in-8bit", action="store_true", help="Load the base in 8 bit (LLM.int8).")
    quantized.add_argument("--bnb-4bit-quant-type", choices=["nf4", "fp4"], help="4-bit data type (default: bitsandbytes').")
    quantized.add_argument("--bnb-4bit-compute-dtype", choices=DTYPES[1:], help="Compute dtype of the 4-bit layers.")
    quantized.add_argument("--bnb-4bit-use-double-quant", action="store_true", help="Double quantization.")

    export = sub.add_parser(
        "export-lora",
        parents=model_output,
        epilog=_examples("export-lora"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="Write a NEAT adapter as an exact LoRA adapter (for vLLM, SGLang, TGI) for the base it will be served on.",
    )
    export.add_argument("out_dir", help="LoRA adapter folder to write (new, empty, or an earlier export).")
    export.add_argument("--revision", help="Hub revision of BASE the export is exact for.")
    export.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="dtype the base is served in (default: its stored dtype); the export is exact for that dtype.",
    )
    export.add_argument(
        "--server", choices=["vllm", "sglang"], help="Fail (instead of warning) if this server would refuse the export."
    )
    return parser


def _adapter_on_base_options() -> argparse.ArgumentParser:
    """The arguments of `merge` and `export-lora` that name a NEAT adapter and the base it applies to (the commands
    add OUT_DIR after them)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("base", help="Base model folder or Hub id.")
    parent.add_argument("adapter", help="NEAT adapter folder or Hub repo id.")
    parent.add_argument("--adapter-revision", help="Hub revision of the adapter.")
    parent.add_argument("--auto-class", help="transformers class for the base (default: from the adapter's task_type).")
    return parent


def _push_output_options() -> argparse.ArgumentParser:
    """`--push-to-hub` / `--private` of the commands that write a model folder (see `_push_output`)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--push-to-hub", metavar="REPO_ID", help="Also push OUT_DIR to this repo.")
    parent.add_argument("--private", action="store_true", help="Create the pushed repo as private.")
    return parent


def _push_output(args: argparse.Namespace, out: str, commit_message: str) -> None:
    """Push the folder `merge` / `export-lora` wrote, when `--push-to-hub` asks for it, and print the commit URL."""
    if args.push_to_hub:
        from neat_hf.hub.push import push_folder  # lazy: the Hub client, only to push

        info = push_folder(out, args.push_to_hub, private=True if args.private else None, commit_message=commit_message)
        print(info.commit_url)


def _card_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", help="Hub id of the base model for the card (default: from adapter_config).")
    parser.add_argument("--dataset", action="append", dest="datasets", help="Hub dataset id (repeatable).")
    parser.add_argument("--license", help="License for the card metadata, e.g. apache-2.0.")
    parser.add_argument("--tag", action="append", dest="tags", help="Extra card tag (repeatable).")


def _card_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"base_model": args.base_model, "datasets": args.datasets, "license": args.license, "tags": args.tags}
    return {k: v for k, v in kwargs.items() if v is not None}


def _run(args: argparse.Namespace) -> int:
    if args.command in ("merge", "export-lora"):
        _check_sources(args)
    # lazy: transformers, peft and the Hub client load after the arguments are checked
    from neat_hf.cards.adapter_card import write_model_card
    from neat_hf.eval_harness.results import eval_results_from_lm_eval  # lazy, as above
    from neat_hf.export.merged import export_merged  # lazy, as above
    from neat_hf.export.saved_adapter import export_lora  # lazy, as above
    from neat_hf.hub.commit import push_adapter_folder  # lazy, as above

    if args.command == "push":
        info = push_adapter_folder(
            args.adapter_dir,
            args.repo_id,
            private=True if args.private else None,
            revision=args.revision,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            keep_card=args.keep_card,
            delete_conflicting=args.delete_conflicting,
            **_card_kwargs(args),
        )
        print(info.pr_url or info.commit_url)
        return 0
    if args.command == "card":
        results = eval_results_from_lm_eval(args.eval_results) if args.eval_results else None
        path = write_model_card(
            args.adapter_dir,
            repo_id=args.repo_id,
            eval_results=results,
            keep_eval_results=not args.drop_eval_results,
            **_card_kwargs(args),
        )
        print(path)
        return 0
    if args.command == "merge":
        out = export_merged(
            args.base,
            args.adapter,
            args.out_dir,
            adapter_revision=args.adapter_revision,
            base_revision=args.base_revision,
            dtype=args.dtype,
            auto_class=args.auto_class,
            overwrite=args.overwrite,
            repo_id=args.push_to_hub,
            quantization={
                "load_in_4bit": args.load_in_4bit,
                "load_in_8bit": args.load_in_8bit,
                "bnb_4bit_quant_type": args.bnb_4bit_quant_type,
                "bnb_4bit_compute_dtype": args.bnb_4bit_compute_dtype,
                "bnb_4bit_use_double_quant": args.bnb_4bit_use_double_quant or None,
            },
        )
        print(out)
        _push_output(args, out, "Upload model merged with a NEAT adapter")
        return 0
    if args.command == "export-lora":
        out = export_lora(
            args.base,
            args.adapter,
            args.out_dir,
            dtype=args.dtype,
            revision=args.revision,
            adapter_revision=args.adapter_revision,
            auto_class=args.auto_class,
            server=args.server,
            repo_id=args.push_to_hub,
        )
        print(out)
        _push_output(args, out, "Upload LoRA exported from a NEAT adapter")
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # argparse restricts the choices


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parse_args`, with the closest known option suggested for each unrecognized one (argparse names them only)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        hints = unknown_option_hints(unknown, option_strings(parser, command))
        command.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; {'; '.join(hints)}" if hints else ""))
    return args


def _check_sources(args: argparse.Namespace) -> None:
    """Name a BASE or ADAPTER that is a missing local path at once, instead of asking the Hub for it (with retries).

    Missing local path: path-like (`./x`, `/x`, `~/x`, `a/b/c`), or close to an entry of its folder (a typo of a
    folder that exists), or an ADAPTER without a namespace (adapter repos are `namespace/name`). Other names are Hub ids.
    """
    for label, name in (("BASE", args.base), ("ADAPTER", args.adapter)):
        path = os.path.expanduser(name)
        if os.path.exists(path):
            continue
        parent = os.path.dirname(path) or "."
        siblings = os.listdir(parent) if os.path.isdir(parent) else []
        close = difflib.get_close_matches(os.path.basename(path), siblings, n=1, cutoff=0.75)
        if looks_like_path(name) or close or (label == "ADAPTER" and "/" not in name):
            hint = f" Did you mean {os.path.join(os.path.dirname(name), close[0])!r}?" if close else ""
            raise NeatError(f"{label} {name!r}: no such local folder (looked in {os.path.abspath(path)!r}).{hint} "
                            "A Hub repo id has the form 'namespace/name'.")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `neat-hub`; returns the exit status (tests call `main([...])`)."""
    parser = make_parser()
    args = _parse(parser, argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("neat_hf")
    package_logger.addHandler(handler)
    previous_level = package_logger.level
    package_logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return _run(args)
    except REPORTED_ERRORS as err:
        print(f"neat-hub {args.command}: error: {err}", file=sys.stderr)
        return exit_status(err)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
