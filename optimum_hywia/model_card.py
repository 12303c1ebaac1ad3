"""Model cards (README.md) for HyWIA checkpoints, built from the files in the checkpoint folder.

`write_model_card(folder)` reads `hywia_report.json`, `hywia_config.json` and `config.json`, and, when present,
`hywia_evaluation.json` (written by `optimum-cli hywia evaluate`) and `recovery_log.json` (LoRA recovery), and writes
a README.md with YAML metadata the Hub renders: base model, library, pipeline tag, tags and the base model's licence.
Calling it again after an evaluation or a recovery refreshes the card and keeps the base model and licence.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .architectures import auto_class_for, pipeline_task_for
from .configuration import CONFIG_NAME

REPORT_NAME = "hywia_report.json"
EVALUATION_NAME = "hywia_evaluation.json"
RECOVERY_LOG_NAME = "recovery_log.json"
MODEL_CARD_NAME = "README.md"
TAGS = ("pruned", "hywia", "optimum", "structured-pruning")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where the pruned model came from, as the card shows it.

    Args:
        base_model: Hub id of the base model, or `None` when it was loaded from a local folder or file.
        license: the base model's licence identifier (e.g. `"apache-2.0"`), when known.
        name: a short human-readable name of the base model for the card's text.
    """

    base_model: str | None = None
    license: str | None = None
    name: str | None = None


def describe_source(name_or_path: str | os.PathLike | None, gguf_file: str | None = None) -> ModelSource:
    """The card's source fields for a model loaded from `name_or_path` (a Hub id or a local folder), offline.

    The licence comes from the local folder's README metadata, the Hub cache's copy of the README (never the
    network), or the GGUF file's `general.license` field.
    """
    if not name_or_path:
        return ModelSource()
    text = str(name_or_path)
    local = Path(text).expanduser()
    if local.exists():
        license_ = _gguf_license(local / gguf_file) if gguf_file else None
        license_ = license_ or _card_license(local / MODEL_CARD_NAME)
        name = gguf_file or local.name
        return ModelSource(None, license_, name)
    if not _REPO_ID.match(text):
        return ModelSource(None, None, text)
    license_ = None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(text, MODEL_CARD_NAME)
        if isinstance(cached, str):
            license_ = _card_license(Path(cached))
    except Exception:  # a broken cache never stops a save
        license_ = None
    if gguf_file and license_ is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(text, gguf_file)
            license_ = _gguf_license(Path(cached)) if isinstance(cached, str) else None
        except Exception:
            license_ = None
    return ModelSource(text, license_, text)


def build_model_card(
    folder: str | os.PathLike, source: ModelSource | None = None, name: str | None = None
) -> ModelCard:
    """The model card of the HyWIA checkpoint in `folder`.

    `source`: the base model; `None` keeps what an existing README.md in `folder` says (base model, licence).
    `name`: the model's name (or Hub id) in the title and loading examples (default: the folder's name).
    """
    folder = Path(folder)
    name = name or folder.name
    report = _read_json(folder / REPORT_NAME, required=True)
    hywia_config = _read_json(folder / CONFIG_NAME, required=True)
    model_config = _read_json(folder / "config.json", required=True)
    evaluation = _read_json(folder / EVALUATION_NAME)
    recovery = _read_json(folder / RECOVERY_LOG_NAME)
    if source is None:
        source = source_from_card(folder / MODEL_CARD_NAME)

    model_type = model_config.get("model_type")
    auto_class, task = _task(model_config)
    tags = [
        *TAGS,
        *([model_type] if model_type else []),
        *(["lora-recovered"] if recovery and recovery.get("config", {}).get("method", "lora") == "lora" else []),
    ]
    data = ModelCardData(
        base_model=source.base_model,
        library_name="transformers",
        pipeline_tag=task,
        license=source.license,
        tags=tags,
    )
    per_layer = bool(model_config.get("hywia_linear_shapes"))
    sections = [
        _title_section(name, report, source, per_layer) + _compensation_sentence(hywia_config),
        _size_section(report),
        _layers_section(report),
        _evaluation_section(evaluation),
        _recovery_section(recovery),
        _usage_section(name, per_layer, bool(model_config.get("auto_map")), auto_class, task),
        _config_section(hywia_config),
    ]
    body = "\n\n".join(section for section in sections if section)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def write_model_card(folder: str | os.PathLike, source: ModelSource | None = None, name: str | None = None) -> Path:
    """Write (or refresh) `folder/README.md` (see `build_model_card`); returns its path."""
    card = build_model_card(folder, source, name)
    path = Path(folder) / MODEL_CARD_NAME
    path.write_text(str(card), encoding="utf-8")
    return path


def push_checkpoint_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a HyWIA checkpoint folder to the Hub (creating the repo if needed); returns the commit URL.

    The model card is refreshed first so that its loading examples name `repo_id`. `token=None` uses the usual
    places (`HF_TOKEN`, `huggingface-cli login`); the token is never printed or logged.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not _REPO_ID.match(repo_id or ""):
        raise ValueError(f"{repo_id!r} is not a Hub repo id; pass one like 'your-name/model-name'.")
    if not (folder / REPORT_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} is not a HyWIA checkpoint ({REPORT_NAME} is missing); save one with HyWIAPruner.save_pretrained "
            "or `optimum-cli hywia prune` first."
        )
    write_model_card(folder, name=repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    report = _read_json(folder / REPORT_NAME, required=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or f"Upload HyWIA-pruned model ({report['achieved_ratio']:.0%} removed)",
        ignore_patterns=[".*", "**/.*"],
    )
    return str(getattr(commit, "commit_url", commit))


# ---------------------------------------------------------------------------------------------------------- sections


def _title_section(name: str, report: dict, source: ModelSource, per_layer: bool) -> str:
    if source.base_model:
        origin = f"[`{source.base_model}`](https://huggingface.co/{source.base_model})"
    elif source.name:
        origin = f"`{source.name}` (a local checkpoint)"
    else:
        origin = "a local checkpoint"
    layout = (
        "widths differ per layer (one global ranking)"
        if report["layout"] == "per_layer"
        else "every pruned layer keeps the same widths"
    )
    return (
        f"# {name.split('/')[-1]}\n\n"
        f"A structurally pruned version of {origin}: **{report['achieved_ratio']:.1%}** of the decoder layers' "
        f"attention and MLP parameters were removed with "
        f"optimum-hywia (importance `{report['importance']}`, "
        f"layout `{report['layout']}`: {layout}). Pruned heads and channels are removed physically, so the model is "
        f"smaller and faster, not masked."
        + (
            f" The groups removed are those `{report['selection']}` selects: compensated, its selection stayed closer "
            f"to the dense model on held-out calibration text than `{report['importance']}`'s own (`selection` in "
            "`hywia_report.json`)."
            if report.get("selection") and report["selection"] != report["importance"]
            else ""
        )
        + (
            "\n\nThe pruned widths are more than a vanilla config can describe: the checkpoint ships a small fixed "
            "modeling file (`modeling_hywia.py`), see *How to load*."
            if per_layer
            else "\n\nThe config is a vanilla transformers config: the checkpoint loads without any extra code."
        )
    )


def _compensation_sentence(hywia_config: dict) -> str:
    """What compensation did (no training), appended to the title section."""
    reconstruction = hywia_config.get("reconstruction")
    if reconstruction == "bias":
        return "\n\nNo training: the removed channels' mean contribution moved into the biases (FLAP's compensation)."
    if reconstruction != "least_squares":
        return ""
    reselected = hywia_config.get("reconstruction_reselect") or hywia_config.get("importance") == "slimgpt"
    return (
        "\n\nNo training: layer by layer on calibration text, "
        + (
            "structured OBS re-chose which groups of each layer go (each layer keeping its count), and "
            if reselected
            else ""
        )
        + "the projections that read the pruned widths were refit by least squares to reproduce the dense layers' "
        "outputs."
    )


def _size_section(report: dict) -> str:
    rows = [
        ("All parameters", report["params_before"], report["params_after"]),
        ("Decoder-layer attention + MLP parameters", report["decoder_params_before"], report["decoder_params_after"]),
    ]
    lines = ["## Size", "", "| | before | after | removed |", "|---|---:|---:|---:|"]
    for name, before, after in rows:
        lines.append(f"| {name} | {before:,} | {after:,} | {1 - after / before:.1%} |")
    lines.append("")
    steps = len(report.get("steps") or [])
    gradually = f", removed gradually in {steps} re-scored steps" if steps > 1 else ""
    lines.append(
        f"Requested pruning ratio: {report['pruning_ratio']:.0%}{gradually}; pruned layers: {_ranges(report)}."
    )
    return "\n".join(lines)


def _layers_section(report: dict) -> str:
    layers = report.get("layers") or []
    if not layers:
        return ""
    keys = [key for key in layers[0]["before"] if isinstance(layers[0]["before"][key], int)]
    header = " | ".join(_WIDTH_NAMES.get(key, key) for key in keys)
    lines = [
        "## Per-layer widths",
        "",
        f"| layer | {header} | parameters |",
        "|---:|" + "---:|" * (len(keys) + 1),
    ]
    for layer in layers:
        cells = [_change(layer["before"].get(key), layer["after"].get(key)) for key in keys]
        params = _change(layer.get("params_before"), layer.get("params_after"), thousands=True)
        lines.append(f"| {layer['layer']} | {' | '.join(cells)} | {params} |")
    return "\n".join(lines)


def _evaluation_section(evaluation: dict | None) -> str:
    if not evaluation:
        return ""
    lines = ["## Evaluation", ""]
    perplexity = evaluation.get("perplexity") or {}
    if perplexity:
        lines += ["| perplexity | value | sequence length | windows |", "|---|---:|---:|---:|"]
        for dataset, result in perplexity.items():
            lines.append(
                f"| {dataset} | {result['perplexity']:.2f} | {result.get('sequence_length', '')} | "
                f"{result.get('windows', '')}{', spread' if result.get('spread') else ''} |"
            )
        lines.append("")
    zero_shot = evaluation.get("zero_shot") or {}
    if zero_shot:
        limit = evaluation.get("zero_shot_limit")
        scope = f"the first {limit} validation items per task" if limit else "the full validation splits"
        lines += [
            f"Zero-shot accuracy (lm-evaluation-harness task definitions, {scope}):",
            "",
            "| task | acc | acc_norm | n |",
            "|---|---:|---:|---:|",
        ]
        for task, result in zero_shot.items():
            cells = [_percent(result.get("acc")), _percent(result.get("acc_norm")), str(result.get("n", ""))]
            name = f"**{task}**" if task == "average" else task
            lines.append(f"| {name} | {' | '.join(cells)} |")
        lines.append("")
    if evaluation.get("command"):
        lines.append(f"Measured with `{evaluation['command']}`.")
    return "\n".join(lines).rstrip()


def _recovery_section(recovery: dict | None) -> str:
    if not recovery:
        return ""
    config = recovery.get("config", {})
    initial, final = recovery.get("initial_loss"), recovery.get("final_loss")
    loss = f" Training loss {initial:.3f} → {final:.3f}." if initial is not None and final is not None else ""
    if config.get("objective") == "distillation":
        teacher = f"`{recovery['teacher']}`" if recovery.get("teacher") else "the dense model"
        weight = config.get("distillation_weight", 1.0)
        mix = f", mixed {weight:g} : {1 - weight:g} with the LM loss" if weight < 1 else ""
        objective = f"distilled from {teacher} (KL, temperature {config.get('temperature', 1.0):g}{mix}); "
    else:
        objective = ""
    schedule = config.get("lr_scheduler")
    warmup = config.get("warmup_steps") or 0
    rate = f"{config.get('learning_rate')}" + (
        f" ({schedule}{f', {warmup} warm-up steps' if warmup else ''})" if schedule else ""
    )
    batches = (
        f"{recovery.get('steps')} steps of {config.get('batch_size')}×{config.get('gradient_accumulation_steps', 1)} "
        f"sequences of {config.get('sequence_length')} tokens, {recovery.get('data_format')} data"
    )
    if config.get("method") == "full":
        return (
            "## Recovery fine-tuning\n\n"
            f"After pruning, every weight of the model was fine-tuned ({objective}learning rate {rate}, "
            f"{batches}).{loss}"
        )
    return (
        "## LoRA recovery\n\n"
        f"After pruning, the model was fine-tuned with LoRA ({objective}rank {config.get('rank')}, alpha "
        f"{config.get('alpha')}, learning rate {rate}, {batches}, "
        f"targets {', '.join(f'`{m}`' for m in recovery.get('target_modules', []))}); the adapters were merged into "
        f"the weights, so this is a plain checkpoint.{loss}"
    )


def _usage_section(name: str, per_layer: bool, remote: bool, auto_class: str, task: str) -> str:
    repo = name if "/" in name else f"<user>/{name}"
    flag = ", trust_remote_code=True" if remote else ""
    code = (
        "```python\n"
        f"from transformers import {auto_class}, AutoTokenizer, pipeline\n\n"
        f'model = {auto_class}.from_pretrained("{repo}"{flag})\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")\n'
        f'pipe = pipeline("{task}", model="{repo}"{flag})\n'
        "```"
    )
    if per_layer:
        code += (
            "\n\nWithout remote code, with this package's own copy of the (fixed) modeling file:\n\n"
            "```python\n"
            "from optimum_hywia import load_pruned_model  # pip install optimum-hywia\n\n"
            f'model = load_pruned_model("{repo}")\n'
            "```"
        )
    elif not remote:
        code += "\n\n`optimum_hywia.load_pruned_model` loads it too."
    return f"## How to load\n\n{code}"


def _task(model_config: dict) -> tuple[str, str]:
    """(auto class, pipeline task) of the checkpoint's architecture; causal LM when unknown."""
    architectures = model_config.get("architectures") or [None]
    auto_class = auto_class_for(architectures[0], model_config.get("auto_map"))
    return auto_class, pipeline_task_for(auto_class)


def _config_section(hywia_config: dict) -> str:
    return (
        "## HyWIA configuration\n\n"
        "The `HyWIAConfig` used (also in `hywia_config.json`; the full pruning report is in `hywia_report.json`):\n\n"
        f"```json\n{json.dumps(hywia_config, indent=2)}\n```"
    )


# ----------------------------------------------------------------------------------------------------------- helpers

_WIDTH_NAMES = {
    "num_attention_heads": "query heads",
    "num_key_value_heads": "KV heads",
    "intermediate_size": "MLP channels",
}


def _change(before: Any, after: Any, thousands: bool = False) -> str:
    if before is None or after is None:
        return ""
    fmt = "{:,}" if thousands else "{}"
    return fmt.format(after) if before == after else f"{fmt.format(before)} → {fmt.format(after)}"


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else ""


def _ranges(report: dict) -> str:
    layers = report.get("pruned_layers") or []
    if not layers:
        return "none"
    return f"{layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)


def _read_json(path: Path, required: bool = False) -> dict | None:
    if not path.is_file():
        if required:
            raise FileNotFoundError(
                f"{path} is missing: a model card is built from a HyWIA checkpoint folder written by "
                "HyWIAPruner.save_pretrained."
            )
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _card_license(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        license_ = ModelCard.load(path).data.license
    except Exception:  # an unparsable README says nothing about the licence
        return None
    return license_ if isinstance(license_, str) else None


def source_from_card(path: str | os.PathLike) -> ModelSource:
    """The base model and licence an existing model card (README.md) declares."""
    path = Path(path)
    if not path.is_file():
        return ModelSource()
    try:
        data = ModelCard.load(path).data
    except Exception:
        return ModelSource()
    base_model = data.base_model if isinstance(data.base_model, str) else None
    return ModelSource(base_model, data.license if isinstance(data.license, str) else None, base_model)


def _gguf_license(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).fields.get("general.license")
        value = field.contents() if field is not None else None
    except Exception:  # an unreadable GGUF header says nothing about the licence
        return None
    return value if isinstance(value, str) and value else None


__all__ = [
    "EVALUATION_NAME",
    "MODEL_CARD_NAME",
    "ModelSource",
    "build_model_card",
    "push_checkpoint_to_hub",
    "source_from_card",
    "describe_source",
    "write_model_card",
]
