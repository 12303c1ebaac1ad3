"""What `hywia prune|evaluate|recover` do. Imported only when a command runs (torch, transformers, peft)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Literal

from ..data.inputs import is_token_ids
from . import arguments

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
BUILTIN_TEXTS = ("mix", "lambada", "wikipedia")


class CommandError(Exception):
    """A problem the user can fix; its message is printed as is."""


def run_command(command: str, args: argparse.Namespace) -> int:
    """Run `command` with the CLI's error handling: one line on stderr and an exit code, never a traceback
    (unless `--debug`)."""
    _configure_logging(args)
    runner = {"prune": prune, "evaluate": evaluate, "recover": recover}[command]
    try:
        runner(args)
    except KeyboardInterrupt:
        print(f"hywia {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # every failure ends as one line; --debug shows where it came from
        if args.debug:
            traceback.print_exc()
        print(f"hywia {command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------------- prune


def prune(args: argparse.Namespace) -> None:
    from ..configuration import HyWIAConfig
    from ..model_card import ModelSource, describe_source, push_checkpoint_to_hub, write_model_card
    from ..pruner import HyWIAPruner

    config = _hywia_config(args, HyWIAConfig)
    _check_output(args.output, args.overwrite)
    device = _device(args.device)
    name, kwargs, description, fallback_id = _model_location(args)
    calibration = None
    from ..importance import get_importance

    if get_importance(config.importance).needs_data or config.reconstruction not in (None, "none"):
        calibration = _calibration_data(args)
    needs_tokenizer = args.evaluate or (calibration is not None and not is_token_ids(calibration))
    tokenizer = _load_tokenizer(args, name, kwargs, required=needs_tokenizer, token_ids_help=True)
    _say(args, f"Loading {description}")
    if tokenizer is not None:
        pruner = HyWIAPruner.from_pretrained(name, config=config, tokenizer=tokenizer, **kwargs)
    else:  # token-id calibration or a weight-only method: a checkpoint without a tokenizer is pruned as is
        from ..loading import model_loader

        pruner = HyWIAPruner(model_loader(name, None, kwargs).from_pretrained(name, **kwargs), config)
        pruner.source = describe_source(name, kwargs.get("gguf_file"))
    if fallback_id:
        pruner.source = ModelSource(fallback_id, describe_source(name, kwargs.get("gguf_file")).license, fallback_id)
    pruner.model.to(device)
    pruner.prune(calibration_data=calibration, show_progress=not args.quiet)
    folder = pruner.save_pretrained(args.output, overwrite=args.overwrite)
    report = pruner.report
    print(
        f"Pruned with {config.importance} ({config.layout}): {report.params_before:,} -> {report.params_after:,} "
        f"parameters ({report.achieved_ratio:.1%} of decoder-layer parameters removed). Saved to {folder}"
    )
    if args.evaluate:
        # the defaults of `hywia evaluate` (prune has no --text/--sequence-length/--max-windows/--spread of its own)
        results = {"perplexity": _perplexity(pruner.model, pruner.tokenizer, "wikipedia", 512, 20, False, args.quiet)}
        _save_results(folder, results)
        write_model_card(folder)
        _print_results(results)
    if args.push_to_hub:
        url = push_checkpoint_to_hub(folder, args.push_to_hub, private=args.private)
        print(f"Uploaded to {args.push_to_hub}: {url}")


def _hywia_config(args: argparse.Namespace, config_class: Any) -> Any:
    values = config_class.from_pretrained(args.config).to_dict() if args.config else {}
    flags = {
        "pruning_ratio": args.pruning_ratio,
        "pruning_steps": args.pruning_steps,
        "layout": args.layout,
        "importance": args.importance,
        "fine_estimators": args.fine_estimators,
        "group_kinds": args.group_kinds,
        "layer_range": args.layer_range,
        "num_calibration_samples": args.samples,
        "calibration_sequence_length": args.sequence_length,
        "calibration_batch_size": args.batch_size,
        "fusion_steps": args.fusion_steps,
        "fusion_objective": args.fusion_objective,
        "fusion_ranking": args.fusion_ranking,
        "round_to": args.round_to,
        "head_round_to": args.head_round_to,
        "seed": args.seed,
        "reconstruction": args.reconstruction,
        "reconstruction_ridge": args.reconstruction_ridge,
        "reconstruction_drift": args.reconstruction_drift,
        "reconstruction_reselect": args.reconstruction_reselect,
        "reconstruction_reselect_damping": args.reconstruction_reselect_damping,
        "selection_candidates": args.selection_candidates,
    }
    values.update({key: value for key, value in flags.items() if value is not None})
    if values.get("reconstruction_reselect_damping") == arguments.PLAIN:
        values["reconstruction_reselect_damping"] = None
    values.pop("optimum_hywia_version", None)
    return config_class.from_dict(values)


def _calibration_data(args: argparse.Namespace) -> list[Any]:
    """Texts or token-id sequences of --calibration-data (read and checked before the model loads)."""
    from ..data.inputs import normalize_inputs

    data = load_data(args.calibration_data, args.dataset_config, args.dataset_split)
    return normalize_inputs(data, f"--calibration-data {args.calibration_data}")


# -------------------------------------------------------------------------------------------------------- evaluate


def evaluate(args: argparse.Namespace) -> None:
    from ..model_card import REPORT_NAME, write_model_card

    tasks = _tasks(args.tasks)
    if args.no_perplexity and not tasks:
        raise CommandError("Nothing to evaluate: drop --no-perplexity or pass --tasks.")
    model, tokenizer, _ = _load_for_use(args)
    results: dict[str, Any] = {}
    if not args.no_perplexity:
        results["perplexity"] = _perplexity(
            model, tokenizer, args.text, args.sequence_length, args.max_windows, args.spread, args.quiet
        )
    if tasks:
        from ..evaluation import evaluate_zero_shot

        _say(args, f"Zero-shot accuracy on {', '.join(tasks)}" + (f" ({args.limit} items each)" if args.limit else ""))
        results["zero_shot"] = evaluate_zero_shot(
            model, tokenizer, tasks=tasks, limit=args.limit, batch_size=args.batch_size
        )
        results["zero_shot_limit"] = args.limit
    _print_results(results)
    folder = Path(args.model)
    if not args.no_save and (folder / REPORT_NAME).is_file():
        _save_results(folder, results)
        write_model_card(folder)
        _say(args, f"Results saved to {folder / 'hywia_evaluation.json'} and its model card")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def _tasks(requested: list[str]) -> list[str]:
    from .arguments import TASK_CHOICES

    if not requested:
        return []
    if requested == ["all"]:
        return list(TASK_CHOICES)
    unknown = [task for task in requested if task not in TASK_CHOICES]
    if unknown:
        raise CommandError(f"Unknown task(s) {unknown}; choose 'all' or among {', '.join(TASK_CHOICES)}.")
    return list(dict.fromkeys(requested))


def _perplexity(
    model, tokenizer, source: str, sequence_length: int, max_windows: int, spread: bool, quiet: bool
) -> dict[str, Any]:
    from ..evaluation import evaluation_text, perplexity

    if source in ("wikipedia", "wikitext2"):
        text, name = evaluation_text(source)
    elif os.path.isfile(source):
        text, name = Path(source).read_text(encoding="utf-8"), Path(source).name
    else:
        raise CommandError(f"--text {source!r} is neither 'wikipedia', 'wikitext2' nor an existing text file.")
    where = "evenly spaced over the text" if spread else "from the start of the text"
    if not quiet:
        print(f"Perplexity on {name}: {max_windows} windows of {sequence_length} tokens, {where}", file=sys.stderr)
    value = perplexity(
        model,
        tokenizer,
        text,
        sequence_length=sequence_length,
        max_windows=max_windows,
        show_progress=not quiet,
        spread=spread,
    )
    result = {"perplexity": value, "sequence_length": sequence_length, "windows": max_windows, "spread": spread}
    return {name: result}


def _save_results(folder: Path, results: dict[str, Any]) -> None:
    from ..model_card import EVALUATION_NAME

    path = folder / EVALUATION_NAME
    saved = json.loads(path.read_text()) if path.is_file() else {}
    for key, value in results.items():
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            saved[key].update(value)
        else:
            saved[key] = value
    path.write_text(json.dumps(saved, indent=2) + "\n")


def _print_results(results: dict[str, Any]) -> None:
    for name, row in results.get("perplexity", {}).items():
        print(f"perplexity  {name}: {row['perplexity']:.3f}")
    for task, row in results.get("zero_shot", {}).items():
        norm = f"  acc_norm {100 * row['acc_norm']:.1f}" if "acc_norm" in row else ""
        print(f"zero-shot   {task:<14} acc {100 * row['acc']:.1f}{norm}")


# --------------------------------------------------------------------------------------------------------- recover


def recover(args: argparse.Namespace) -> None:
    from ..model_card import push_checkpoint_to_hub
    from ..recovery import RecoveryConfig, load_records, save_recovered_model
    from ..recovery import recover as run_recovery

    config = RecoveryConfig(
        method=args.method,
        objective=args.objective or ("distillation" if args.teacher else "lm"),
        temperature=args.temperature,
        distillation_weight=args.distillation_weight,
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=args.target_modules,
        learning_rate=args.learning_rate,
        lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        max_steps=args.steps,
        batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation,
        sequence_length=args.sequence_length,
        data_format=args.data_format,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        seed=args.seed,
    )
    _check_output(args.output, args.overwrite)
    if not Path(args.model).is_dir() and not args.gguf_file:
        args.model = _download(args.model, args.revision)  # the pruning files are carried over from the folder
    data = load_data(args.data, args.dataset_config, args.dataset_split, stage="recovery")
    model, tokenizer, folder = _load_for_use(args, needs_tokenizer=not is_token_ids(load_records(data)))
    teacher = _load_teacher(args, folder, model.device) if config.objective == "distillation" else None
    state_dir = Path(args.state_dir or f"{Path(args.output).resolve()}.recovery")
    model = run_recovery(
        model, tokenizer, data, config, output_dir=state_dir, teacher=teacher, show_progress=not args.quiet
    )
    log = model.hywia_recovery_log
    saved = save_recovered_model(model, tokenizer, folder, args.output, overwrite=args.overwrite)
    loss = f", loss {log.initial_loss:.4f} -> {log.final_loss:.4f}" if log.losses else ""
    how = "LoRA" if config.method == "lora" else "full fine-tuning"
    distilled = f", distilled from {log.teacher}" if teacher is not None else ""
    print(f"Recovered with {how} ({log.steps} steps{loss}{distilled}). Saved to {saved}")
    if args.push_to_hub:
        url = push_checkpoint_to_hub(saved, args.push_to_hub, private=args.private)
        print(f"Uploaded to {args.push_to_hub}: {url}")


def _load_teacher(args: argparse.Namespace, folder: Path, device: Any) -> Any:
    """The distillation teacher: --teacher, else the source model the pruned checkpoint's report records."""
    from transformers import AutoModelForCausalLM

    from ..model_card import REPORT_NAME
    from ..modeling import load_pruned_model

    name = args.teacher
    if name is None:
        report = folder / REPORT_NAME
        name = json.loads(report.read_text()).get("source_model") if report.is_file() else None
        if not name:
            raise CommandError(
                f"--objective distillation needs a teacher and {report} records no source model: pass --teacher "
                "(the dense model's Hub id or folder)."
            )
    ggufs = sorted(Path(name).glob("*.gguf")) if not (Path(name) / "config.json").is_file() else []
    gguf_file = ggufs[0].name if len(ggufs) == 1 else None  # a folder with one GGUF file (the offline SmolLM2)
    teacher_args = argparse.Namespace(**{**vars(args), "model": name, "gguf_file": gguf_file, "revision": None})
    name, kwargs, description, _ = _model_location(teacher_args)
    _say(args, f"Loading the teacher {description}")
    try:
        if kwargs.get("gguf_file") or kwargs.get("trust_remote_code"):
            teacher = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        else:
            teacher = load_pruned_model(name, **kwargs)
    except Exception as error:
        raise CommandError(f"The teacher {name} does not load ({_one_line(error)}); pass --teacher.") from None
    return teacher.to(device).eval()


# ---------------------------------------------------------------------------------------------------------- shared


def load_data(
    source: str,
    config_name: str | None = None,
    split: str = "train",
    stage: Literal["calibration", "recovery"] = "calibration",
) -> Any:
    """Texts or records from a built-in text, a file, or a `datasets` dataset (name, config, split); what the
    library's shared normaliser (`optimum_hywia.data.inputs.normalize_inputs`) accepts. The built-in `mix` is the
    `stage`'s own part of the offline text: `calibration_mix()` or `recovery_mix()`."""
    from ..data import lambada_texts, wikipedia_texts
    from ..data.text_sources import calibration_mix, recovery_mix

    if source == "mix":
        return recovery_mix() if stage == "recovery" else calibration_mix()
    if source == "lambada":
        return lambada_texts()
    if source == "wikipedia":
        return wikipedia_texts()
    if os.path.isfile(source):
        from ..data.inputs import read_file

        return read_file(source, "data file")
    if os.path.exists(source) or source.startswith((".", "/", "~")) or Path(source).suffix in _FILE_SUFFIXES:
        raise CommandError(f"Data file {source!r} does not exist (or is a folder); pass a file, or 'lambada'.")
    from ..data.models import hub_reachable

    if not hub_reachable():
        raise CommandError(
            f"{source!r} is not a file nor a built-in text ({', '.join(BUILTIN_TEXTS)}), and the Hub is not "
            "reachable to load it as a `datasets` dataset."
        )
    import datasets

    try:
        return datasets.load_dataset(source, config_name, split=split)
    except Exception as error:
        raise CommandError(f"Could not load dataset {source!r} (split {split!r}): {_one_line(error)}") from error


_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".parquet", ".md")


def _download(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    from ..data.models import hub_reachable

    if not hub_reachable():
        raise CommandError(f"{repo_id!r} is not a local folder and the Hub is not reachable; pass a local checkpoint.")
    return snapshot_download(repo_id, revision=revision)


def _model_location(args: argparse.Namespace) -> tuple[str, dict[str, Any], str, str | None]:
    """`(name_or_path, from_pretrained kwargs, description, Hub id of an offline fallback or None)`."""
    kwargs: dict[str, Any] = {}
    fallback = None
    if args.gguf_file:
        name, description = args.model, f"{args.model} ({args.gguf_file})"
        kwargs["gguf_file"] = args.gguf_file
    else:
        from ..data.models import model_source

        try:
            name, extra, description = model_source(args.model)
        except OSError as error:
            raise CommandError(str(error)) from None
        kwargs.update(extra)
        if "gguf_file" in extra:
            fallback = args.model
    if args.revision:
        kwargs["revision"] = args.revision
    if args.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if args.dtype != "auto":
        import torch

        kwargs["dtype"] = getattr(torch, args.dtype)
    return name, kwargs, description, fallback


def _load_for_use(args: argparse.Namespace, needs_tokenizer: bool = True) -> tuple[Any, Any, Path]:
    """Model (moved to --device, in eval mode), tokenizer (None only when not needed and missing), and the local
    folder it came from."""
    from transformers import AutoModelForCausalLM

    from ..modeling import load_pruned_model

    device = _device(args.device)
    name, kwargs, description, _ = _model_location(args)
    tokenizer = _load_tokenizer(args, name, kwargs, required=needs_tokenizer)
    _say(args, f"Loading {description}")
    if kwargs.get("gguf_file") or kwargs.get("trust_remote_code"):
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    else:
        model = load_pruned_model(name, **kwargs)
    model.to(device).eval()
    folder = Path(name) if Path(name).is_dir() else Path(model.name_or_path)
    return model, tokenizer, folder


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def _load_tokenizer(
    args: argparse.Namespace, name: str, kwargs: dict[str, Any], required: bool, token_ids_help: bool = False
) -> Any:
    """The tokenizer of --tokenizer, else of the model; None when it does not load and is not `required`, else a
    one-line error that says to pass --tokenizer (or, for prune, token-id calibration data)."""
    from transformers import AutoTokenizer

    source = args.tokenizer or name
    keys = ("trust_remote_code",) if args.tokenizer else ("gguf_file", "revision", "trust_remote_code")
    try:
        return AutoTokenizer.from_pretrained(source, **{k: v for k, v in kwargs.items() if k in keys})
    except Exception as error:  # transformers raises ValueError, OSError, TypeError... for a missing tokenizer
        if not required:
            return None
        folder = Path(source)
        if folder.is_dir() and not any((folder / file).is_file() for file in TOKENIZER_FILES):
            reason = f"{source} holds no tokenizer files"
        else:
            reason = f"the tokenizer of {source} does not load ({_one_line(error).rstrip(':')})"
        alternative = (
            ", or token-id calibration data (--calibration-data: a .jsonl/.parquet file of input_ids records)"
            if token_ids_help
            else ""
        )
        raise CommandError(
            f"{reason}: pass --tokenizer with the model's tokenizer (a folder or Hub id){alternative}."
        ) from None


def _device(requested: str) -> Any:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise CommandError(f"--device {requested!r} is not a device ({_one_line(error)}); use cpu or cuda.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {requested} but CUDA is not available here; use --device cpu.")
    return device


def _check_output(output: str, overwrite: bool) -> None:
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise CommandError(f"--output {output} is a file; pass a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CommandError(f"--output {output} exists and is not empty; pass --overwrite to replace it.")


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logger = logging.getLogger("optimum_hywia")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity(logging.INFO if args.debug else logging.ERROR)
    if args.quiet:
        transformers_logging.disable_progress_bar()
    import warnings

    if not args.debug:
        warnings.filterwarnings("ignore")


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    first = text.splitlines()[0] if text else ""
    if isinstance(error, (CommandError, ValueError, FileNotFoundError, FileExistsError, OSError, TypeError)):
        return first or type(error).__name__
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
