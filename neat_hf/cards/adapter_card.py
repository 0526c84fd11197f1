"""Model cards for NEAT adapters: `ModelCardData` + `EvalResult` rendered through `ModelCard.from_template`.

The card's YAML says `library_name: peft` and `base_model: <id>`, which is how the Hub lists the repo as an adapter of
its base; tags are `neat`, `peanut`, `peft` and `base_model:adapter:<id>`. The body explains NEAT in two sentences,
lists the NEAT hyperparameters and parameter count, the training setup (when known), how to load the adapter with
neat-hf and with stock PEFT, evaluation results (also written as `model-index`) and framework versions.

`NeatModel.save_pretrained` writes the card of every adapter it saves (as PEFT does), once per save, with what the
caller knows beyond the files: a run keeps that in one [`CardFacts`] (`NeatTrainer` owns one per run), so what one step
adds (evaluation results, scores before training) is never erased by a later write. `neat_hf.hub` uploads the card
written here; `neat-hub card` and `neat-lm-eval --update_card` rebuild it. Everything else a card shows comes from
files in the adapter folder, so `neat-hub card ADAPTER_DIR` can rebuild it at any time:

* `adapter_config.json` and `adapter_model.safetensors` (hyperparameters; parameter count from the safetensors header),
* `training_info.json` (optional, see `neat_hf.training_info`, which scrubs it of credentials), with the tracker run
  shown as a badge and tag (as TRL's cards show them),
* `training_curve.png` (optional, drawn by NeatTrainer: loss per step), when `training_info.json` names it,
* the existing `README.md`, whose `model-index` is kept when the card is rebuilt without new evaluation results, and
  whose tags are kept (so a rebuild of an unchanged folder writes the same card).

The tables are formatted by `neat_hf.cards.rows`; lm-eval output becomes `EvalResult`s in
`neat_hf.eval_harness.results`. Tokens never reach a card: nothing here reads one, and training info is scrubbed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from neat_hf.cards.rows import cell, eval_rows, fmt_number, hyperparameter_rows, training_rows
from neat_hf.config import read_adapter_config, with_neat_only_settings
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME, TRAINING_CURVE_NAME
from neat_hf.errors import AdapterLoadError, NeatError
from neat_hf.io import atomic_write_text, count_adapter_parameters
from neat_hf.hub.download import is_hub_id
from neat_hf.quantization import quantization_settings
from neat_hf.task_types import model_class_for, pipeline_tag_for
from neat_hf.training_info import describes_other_weights, load_training_info, sanitize_training_info, save_training_info

if TYPE_CHECKING:
    from neat_hf.config import NeatConfig

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).parent / "templates" / "adapter_card.md"
NEAT_TAGS = ("neat", "peanut", "peft")
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"

#: training_info key -> (badge image, alt text) of each tracker, the badges of TRL's `lm_model_card.md`.
TRACKER_BADGES = {
    "wandb_url": ("https://raw.githubusercontent.com/wandb/assets/main/wandb-github-badge-28.svg", "Visualize in Weights & Biases"),
    "trackio_url": ("https://raw.githubusercontent.com/gradio-app/trackio/refs/heads/main/trackio/assets/badge.png", "Visualize in Trackio"),
    "comet_url": ("https://raw.githubusercontent.com/comet-ml/comet-examples/master/logo/comet_badge.png", "Visualize in Comet"),
}
# A link target that cannot break out of Markdown `(...)`, an HTML attribute or a YAML tag.
_TRACKER_URL = re.compile(r"^https?://[^\s()<>\[\]\"'`]+$")


def tracker_badges(info: Mapping[str, Any]) -> dict[str, tuple[str, str, str]]:
    """`{training_info key: (run address, badge image, alt text)}` for each tracker run recorded in `info`.

    An address that is not a plain http(s) URL is left out, with a warning: it would be written into the card's
    Markdown and its tags.
    """
    badges = {}
    for key, (image, alt) in TRACKER_BADGES.items():
        url = info.get(key)
        if url is None:
            continue
        if not isinstance(url, str) or not _TRACKER_URL.match(url):
            logger.warning("Not linking training_info[%r] = %r from the card: it is not a plain http(s) URL.", key, url)
            continue
        badges[key] = (url, image, alt)
    return badges


def framework_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of the packages a card lists (missing ones left out)."""
    names = ["neat-hf", "peft", "transformers", "torch", "huggingface_hub", "safetensors", *extra]
    out = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def merge_eval_results(old: Iterable[EvalResult] | None, new: Iterable[EvalResult] | None) -> list[EvalResult]:
    """`old` with every result that `new` measures again replaced; results of other tasks/metrics kept."""

    def key(r: EvalResult) -> tuple:
        return (*r.unique_identifier, r.dataset_name, r.metric_type, r.metric_config)

    new = list(new or [])
    replaced = {key(r) for r in new}
    return [r for r in (old or []) if key(r) not in replaced] + new


@dataclass
class CardFacts:
    """What a run knows about its adapter beyond the saved files: training setup, evaluation results, card fields.

    One object per run owns them (`NeatTrainer.neat_card`); each step adds to it ([`add`]) and every card of the run
    is written from all of it ([`card_arguments`], given to `NeatModel.save_pretrained(model_card=...)` or
    [`write_model_card`]), so a later write (a checkpoint, a push) carries what an earlier step added.
    """

    training_info: dict[str, Any] = field(default_factory=dict)
    eval_results: list[EvalResult] = field(default_factory=list)
    card_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Bumped by every change, so an owner can tell whether a card it wrote is still current.
    version: int = 0

    def add(
        self,
        *,
        training_info: Mapping[str, Any] | None = None,
        eval_results: Iterable[EvalResult] | None = None,
        **card_kwargs: Any,
    ) -> None:
        """Add facts: `training_info` keys replace earlier values, `eval_results` replace the same task and metric
        ([`merge_eval_results`]), `tags` join earlier tags, other card fields (`repo_id`, `base_model`, `datasets`,
        `license`, `language`, `model_name`, ...) replace them unless `None`."""
        before = (dict(self.training_info), list(self.eval_results), dict(self.card_kwargs))
        if training_info:
            self.training_info.update(training_info)
        if eval_results:
            self.eval_results = merge_eval_results(self.eval_results, eval_results)
        for key, value in card_kwargs.items():
            if value is None:
                continue
            if key == "tags":
                value = list(dict.fromkeys([*self.card_kwargs.get("tags", []), *([value] if isinstance(value, str) else value)]))
            self.card_kwargs[key] = value
        if (self.training_info, self.eval_results, self.card_kwargs) != before:
            self.version += 1

    def card_arguments(self) -> dict[str, Any]:
        """Keyword arguments of [`write_model_card`] (and `save_pretrained(model_card=...)`) for these facts."""
        return {"training_info": dict(self.training_info), "eval_results": list(self.eval_results), **self.card_kwargs}


def build_model_card(
    adapter_config: NeatConfig | Mapping[str, Any],
    *,
    repo_id: str | None = None,
    base_model: str | None = None,
    model_name: str | None = None,
    num_adapter_parameters: int | None = None,
    num_base_parameters: int | None = None,
    training_info: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    datasets: str | Sequence[str] | None = None,
    license: str | None = None,
    language: str | Sequence[str] | None = None,
    pipeline_tag: str | None = None,
    tags: Sequence[str] | None = None,
    merged: bool = False,
    training_curve: str | None = None,
) -> ModelCard:
    """Render the model card of a NEAT adapter (or, with `merged=True`, of a base model with the adapter merged in).

    Args:
        adapter_config (`NeatConfig` or `dict`):
            The adapter's config (`adapter_config.json` contents).
        repo_id (`str`, *optional*):
            Where the adapter lives on the Hub; used in the loading snippets and as the `model-index` name.
        base_model (`str`, *optional*):
            Hub id of the base model. Defaults to the config's `base_model_name_or_path` when that is a Hub id (a
            local path is never written into the metadata).
        model_name (`str`, *optional*):
            Title and `model-index` name. Defaults to `repo_id`.
        num_adapter_parameters (`int`, *optional*):
            Parameters stored in the adapter file.
        num_base_parameters (`int`, *optional*):
            Parameters of the base model, for the trainable share.
        training_info (`dict`, *optional*):
            Training setup (see the module docstring for keys); scrubbed of credentials.
        eval_results (`list[EvalResult]`, *optional*):
            Written as `model-index` and as a table (see `neat_hf.eval_harness.results.eval_results_from_lm_eval`).
        datasets, license, language, pipeline_tag (*optional*):
            Card metadata. `datasets` defaults to `training_info["dataset"]` when that is a Hub id, `license` to
            `training_info["license"]`, `pipeline_tag` to the one implied by `task_type` / `auto_mapping`.
        tags (`list[str]`, *optional*):
            Extra tags, added after `neat`, `peanut`, `peft` and `base_model:adapter:<base>`.
        merged (`bool`, *optional*, defaults to `False`):
            Card for `neat-hub merge` output: `library_name: transformers`, no adapter tags.
        training_curve (`str`, *optional*):
            Relative path of the loss-curve image next to the card (`training_curve.png`), shown under the training
            setup. Tracker runs in `training_info` (`trackio_url`, `wandb_url`, `comet_url`) are shown as badges, and
            a Trackio run also as the tags `trackio` and `trackio:<url>`, which the Hub uses for its Training Metrics
            tab (as TRL's cards do).

    Returns:
        `huggingface_hub.ModelCard`

    Raises:
        NeatError: invalid `training_info` or `eval_results`.
    """
    config = ({**adapter_config.to_dict(), **adapter_config.neat_only_settings()} if hasattr(adapter_config, "to_dict")
              else dict(adapter_config))
    info = sanitize_training_info(training_info or {})
    config_base = config.get("base_model_name_or_path")
    base_id = base_model if base_model is not None else (config_base if is_hub_id(config_base) else None)
    if base_id is not None and not is_hub_id(base_id):
        raise NeatError(f"base_model must be a Hub model id like 'org/name', got {base_id!r}.")
    if datasets is None and info.get("dataset") is not None:
        candidates = info["dataset"] if isinstance(info["dataset"], list) else [info["dataset"]]
        hub_datasets = [d for d in candidates if is_hub_id(d)]
        datasets = hub_datasets or None
    license = license if license is not None else info.get("license")
    pipeline_tag = pipeline_tag if pipeline_tag is not None else pipeline_tag_for(config)

    all_tags = ["neat", "peanut", "merged-adapter"] if merged else list(NEAT_TAGS)
    if base_id is not None and not merged:
        all_tags.append(f"base_model:adapter:{base_id}")
    badges = {} if merged else tracker_badges(info)
    trackio = badges.get("trackio_url")
    caller_tags = [t for t in (tags or []) if not (trackio and str(t).startswith("trackio:"))]  # one run, one tag
    all_tags += ["trackio", f"trackio:{trackio[0]}"] if trackio else []
    all_tags += [t for t in caller_tags if t not in all_tags]
    if eval_results:
        if not all(isinstance(r, EvalResult) for r in eval_results):
            raise NeatError("eval_results must be huggingface_hub.EvalResult objects (see neat_hf.eval_harness.results.eval_results_from_lm_eval).")
    name = model_name or repo_id or (f"{base_id.split('/')[-1]}-neat" if base_id else "neat-adapter")
    card_data = ModelCardData(
        base_model=base_id,
        library_name="transformers" if merged else "peft",
        tags=all_tags,
        datasets=list(datasets) if isinstance(datasets, (list, tuple)) else datasets,
        license=license,
        language=language,
        pipeline_tag=pipeline_tag,
        model_name=name if eval_results else None,
        eval_results=list(eval_results) if eval_results else None,
    )

    versions = dict(info.get("framework_versions") or {}) or framework_versions(
        [p for p, used in (("deepspeed", info.get("deepspeed_stage")), ("lm_eval", eval_results)) if used]
    )
    local_base = config_base if isinstance(config_base, str) and not is_hub_id(config_base) else None
    # Paths a training run recorded (training_info `base_model_path`, `adapter_path`): relative ones only, so that no
    # private absolute path reaches a card that may be pushed.
    recorded = {key: info[key] for key in ("base_model_path", "adapter_path")
                if isinstance(info.get(key), str) and info[key] and not os.path.isabs(info[key])}
    if base_id:
        base_model_link = f"[`{base_id}`](https://huggingface.co/{base_id})"
    elif local_base:
        base_model_link = f"a local base model (`{cell(os.path.basename(local_base.rstrip('/')))}`)"
    else:
        base_model_link = "its base model"
    eval_note = "Evaluation results (also in the `model-index` metadata)."
    if eval_results and any(r.source_name == "lm-evaluation-harness" for r in eval_results):
        limit = _limit(eval_results)
        subset = f", on the first {fmt_number(limit)} examples of each task (`limit`)" if limit else ""
        eval_note = f"Scores from [lm-evaluation-harness]({LM_EVAL_URL}){subset}; also in the `model-index` metadata."
    card = ModelCard.from_template(
        card_data,
        template_path=os.fspath(TEMPLATE_PATH),
        title=name,
        merged=merged,
        base_model_link=base_model_link,
        base_model_ref=base_id or recorded.get("base_model_path") or "BASE_MODEL_ID_OR_PATH",
        repo_ref=repo_id or recorded.get("adapter_path") or "PATH_OR_REPO_ID",
        model_class=model_class_for(config),
        act_fn=config.get("act_fn"),
        peft_compatible=config.get("act_fn") != "sin",
        hyperparameters=hyperparameter_rows(config, num_adapter_parameters, num_base_parameters),
        training_rows=training_rows(info),
        tracker_badges=list(badges.values()),
        local_tracker=any(urlparse(url).hostname in ("127.0.0.1", "localhost") for url, _, _ in badges.values()),
        training_curve=None if merged else training_curve,
        eval_rows=eval_rows(eval_results or []),
        eval_note=eval_note,
        versions=sorted(versions.items()),
    )
    # Jinja leaves runs of blank lines where optional sections are skipped; Markdown needs at most one.
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)).rstrip("\n") + "\n")


def _limit(results: Sequence[EvalResult] | None) -> Any:
    for r in results or []:
        if r.dataset_args and r.dataset_args.get("limit") is not None:
            return r.dataset_args["limit"]
    return None


def existing_card_facts(card_path: str | os.PathLike) -> tuple[list[EvalResult], list[str]]:
    """The `model-index` results and the tags of an existing card, which a rebuild keeps (a trainer's `neat-hf` tag,
    a `--tag` given earlier); tags naming a base model (`base_model:...`) are left to the rebuild. Empty if the file
    is missing or does not parse."""
    if not Path(card_path).is_file():
        return [], []
    try:
        card = ModelCard.load(card_path, ignore_metadata_errors=True)
    except Exception as err:  # a hand-edited README with broken YAML must not block a rebuild
        logger.warning(
            "Could not parse the existing card %s (%s); its evaluation results and tags are not kept.", card_path, err
        )
        return [], []
    tags = [t for t in (card.data.tags or []) if isinstance(t, str) and not t.startswith("base_model:")]
    return list(card.data.eval_results or []), tags


def write_model_card(
    save_directory: str | os.PathLike,
    *,
    model: Any = None,
    repo_id: str | None = None,
    training_info: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult] | None = None,
    keep_eval_results: bool = True,
    config: NeatConfig | None = None,
    **card_kwargs: Any,
) -> Path:
    """Write `README.md` for the adapter saved in `save_directory`, then its `training_info.json` (both atomically).

    Call it after `save_pretrained(save_directory)`: the card is built from the files there, so it always describes
    what is saved. `training_info.json` goes last, stamped for the weights it describes (the save protocol:
    `neat_hf.io.check_saved_together`); the record and the card's evaluation results of *other* weights (an earlier
    adapter saved into the folder) are dropped, not carried over.

    Args:
        save_directory (`str` or `os.PathLike`):
            Folder holding `adapter_config.json` and `adapter_model.safetensors`.
        model ([`NeatModel`], *optional*):
            The live model, to count the base model's parameters (stored in `training_info.json` as
            `base_model_parameters`, so later rebuilds keep the trainable share).
        repo_id (`str`, *optional*):
            Hub repo the adapter is (or will be) pushed to; used in the loading snippets.
        training_info (`dict`, *optional*):
            Training setup; merged over an existing `training_info.json` and written back.
        eval_results (`list[EvalResult]`, *optional*):
            New evaluation results; merged with the ones of the existing card (same task and metric replaced).
        keep_eval_results (`bool`, *optional*, defaults to `True`):
            Keep the existing card's `model-index`; set False for a freshly trained adapter.
        config ([`NeatConfig`], *optional*):
            The config being saved; `save_pretrained` passes it because it writes `adapter_config.json` last (after
            the card). Read from the folder when not given.
        card_kwargs:
            Passed to [`build_model_card`] (`base_model`, `datasets`, `license`, `language`, `pipeline_tag`, `tags`,
            `model_name`).

    Returns:
        `pathlib.Path` of the written README.md.

    Raises:
        AdapterLoadError: the folder lacks adapter_config.json / adapter_model.safetensors or they are invalid.
        NeatError: invalid `training_info` / `eval_results`.
    """
    directory = Path(save_directory)
    config_path, weights_path = directory / ADAPTER_CONFIG_NAME, directory / ADAPTER_WEIGHTS_NAME
    for path in (weights_path,) if config is not None else (config_path, weights_path):
        if not path.is_file():
            raise AdapterLoadError(
                f"No {path.name} in {os.fspath(directory)!r}; write the adapter with save_pretrained() before its card."
            )
    if config is None:
        config = read_adapter_config(config_path)  # validates every field
    num_adapter = count_adapter_parameters(weights_path)

    same_weights = not describes_other_weights(directory)  # else the record and card results are another save's
    stored = (load_training_info(directory) or {}) if same_weights else {}
    info = with_neat_only_settings(stored, config.neat_only_settings())
    if training_info:
        info.update(sanitize_training_info(training_info))
    if model is not None:
        num_base = _base_parameter_count(model, num_adapter)
        if num_base is not None:
            info["base_model_parameters"] = num_base
        # A 4-/8-bit base is part of how the adapter was trained (outputs on another copy of the base differ);
        # recorded here, not in adapter_config.json, whose unknown keys make stock PEFT warn.
        quantization = quantization_settings(model)
        if quantization:
            info["base_model_quantization"] = quantization

    card_path = directory / MODEL_CARD_NAME
    kept, kept_tags = existing_card_facts(card_path) if same_weights else ([], [])
    results = merge_eval_results(kept if keep_eval_results else [], eval_results)
    if kept_tags:  # the same card rebuilt gives the same bytes: a retried push then makes no commit
        card_kwargs["tags"] = kept_tags + [t for t in card_kwargs.get("tags") or [] if t not in kept_tags]
    # Only the curve that the record of these weights names: a stale image of an earlier save is not shown.
    curve = TRAINING_CURVE_NAME if info.get("training_curve") == TRAINING_CURVE_NAME else None
    card = build_model_card(
        config,
        repo_id=repo_id,
        num_adapter_parameters=num_adapter,
        num_base_parameters=info.get("base_model_parameters"),
        training_info=info,
        eval_results=results,
        training_curve=curve if curve and (directory / curve).is_file() else None,
        **card_kwargs,
    )
    atomic_write_text(card_path, str(card))
    save_training_info(directory, info)  # last: it stamps the weights that the card and the record describe
    return card_path


def _base_parameter_count(model: Any, num_adapter: int) -> int | None:
    """Parameters of the base model = all parameters of the wrapped model minus the adapter's (and minus the trained
    copies of `modules_to_save`, which the adapter file holds)."""
    try:
        _, total = model.get_nb_trainable_parameters()
    except AttributeError:
        try:
            total = sum(p.numel() for p in model.parameters())
        except AttributeError:
            return None
    base = int(total) - int(num_adapter)
    return base if base > 0 else None
