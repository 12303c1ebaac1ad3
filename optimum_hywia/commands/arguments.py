"""Arguments of `hywia prune|evaluate|recover` (shared by `optimum-cli hywia` and the `hywia` script).

Only argparse here: this module is imported when `optimum-cli` starts, so torch and transformers are imported by
the commands' `run`, never at registration.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from ..importance.registry import importance_names

TASK_CHOICES = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
DTYPES = ("auto", "float32", "bfloat16", "float16")

DATA_HELP = (
    "'mix', 'lambada' or 'wikipedia' (real text that ships with the package, offline; 'mix' is novels and "
    "Wikipedia articles that no evaluation text overlaps, one part of them for calibration and another for recovery; "
    "'lambada' and 'wikipedia' are whole), a .txt/.json/.jsonl/.csv/.parquet "
    "file, or a `datasets` dataset name (with --dataset-config/--dataset-split)"
)

PRUNE_DESCRIPTION = """\
Prune a causal LM with HyWIA: score attention KV-head groups and MLP channels with fine- and coarse-grained Taylor
saliences fused by a learned attention module, remove the least important ones physically, and save the smaller
model (safetensors, config, tokenizer, hywia_config.json, hywia_report.json and a model card)."""

PRUNE_EXAMPLES = """\
examples:
  # 20%% of SmolLM2-135M-Instruct (offline, the packaged GGUF copy is used when the Hub is unreachable)
  %(prog)s HuggingFaceTB/SmolLM2-135M-Instruct -o smollm2-hywia-20

  # per-layer widths, 30%%, calibration text from a file, perplexity in the model card, then upload
  %(prog)s ./my-llama -o my-llama-hywia-30 --pruning-ratio 0.3 --layout per_layer \\
      --calibration-data calib.txt --evaluate --push-to-hub me/my-llama-hywia-30 --private

  # a baseline: magnitude (L2) pruning, no calibration data needed
  %(prog)s ./my-llama -o my-llama-l2 --importance l2

exit codes: 0 success, 1 error (one line on stderr; --debug shows the traceback), 2 bad arguments, 130 interrupted"""

EVALUATE_DESCRIPTION = """\
Evaluate a model (a HyWIA checkpoint of either layout, or any causal LM): perplexity on real text and, with
--tasks, zero-shot accuracy on the paper's tasks (lm-evaluation-harness task definitions, offline data). Results
are printed and, for a HyWIA checkpoint folder, saved to hywia_evaluation.json and its model card."""

EVALUATE_EXAMPLES = """\
examples:
  # perplexity on the packaged Wikipedia text (20 windows of 512 tokens)
  %(prog)s smollm2-hywia-20

  # plus zero-shot accuracy on two tasks, 100 items each, as JSON
  %(prog)s smollm2-hywia-20 --tasks piqa arc_easy --limit 100 --json results.json

  # all seven tasks of the paper, no perplexity
  %(prog)s smollm2-hywia-20 --tasks all --no-perplexity

exit codes: 0 success, 1 error (one line on stderr; --debug shows the traceback), 2 bad arguments, 130 interrupted"""

RECOVER_DESCRIPTION = """\
Recover a pruned model's quality with a short fine-tuning (transformers Trainer; LoRA with peft, merged back into the
weights, or --method full), on the LM loss or by distillation from the dense model (--objective distillation; the
teacher defaults to the source model recorded in the checkpoint's hywia_report.json), and save a plain checkpoint of
the same layout. Resumable: checkpoints go to --state-dir every --save-steps steps and on Ctrl-C; running the same
command again continues where it stopped."""

RECOVER_EXAMPLES = """\
examples:
  # every weight, LM loss, on the packaged recovery text (--data mix): the recipe measured best on SmolLM2-135M
  %(prog)s smollm2-hywia-20 -o smollm2-hywia-20-ft --method full --learning-rate 1e-4 --lr-scheduler cosine \
      --warmup-steps 20 --steps 400

  # 200 steps of LoRA on the packaged LAMBADA text
  %(prog)s smollm2-hywia-20 -o smollm2-hywia-20-lora --steps 200 --data lambada

  # distillation from the dense model the checkpoint was pruned from (or --teacher MODEL_OR_FOLDER)
  %(prog)s smollm2-hywia-20 -o smollm2-hywia-20-kd --objective distillation --steps 200

  # instruction data (JSON lines with instruction/output, prompt/completion or messages), rank 16
  %(prog)s smollm2-hywia-20 -o smollm2-hywia-20-sft --data alpaca.jsonl --rank 16 --alpha 32 --learning-rate 2e-4

  # a Hub dataset (needs network), then upload
  %(prog)s smollm2-hywia-20 -o out --data yahma/alpaca-cleaned --push-to-hub me/smollm2-hywia-20-lora

exit codes: 0 success, 1 error (one line on stderr; --debug shows the traceback), 2 bad arguments, 130 interrupted"""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def ratio(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), e.g. 0.2 removes 20%, got {value}")
    return value


PLAIN = "plain"  # --reconstruction-reselect-damping: the plain squared error (HyWIAConfig's None)


def damping(text: str) -> float | str:
    if text == PLAIN:
        return PLAIN
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or {PLAIN!r}, got {text}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output and logging")
    group.add_argument("--quiet", action="store_true", help="no progress bars and no progress log lines")
    group.add_argument("--debug", action="store_true", help="debug logging, and full tracebacks on errors")


def _loading(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("model loading")
    group.add_argument("model", help=f"{what}: a Hub id or a local folder")
    group.add_argument("--gguf-file", help="load this GGUF file of the folder/repo (dequantized to float)")
    group.add_argument(
        "--tokenizer", metavar="NAME_OR_PATH", help="load the tokenizer from this Hub id or folder (default: MODEL)"
    )
    group.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    group.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (default: the checkpoint's)")
    group.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', ... (default: cuda if available)")
    group.add_argument("--trust-remote-code", action="store_true", help="allow the model's own modeling code")


def _data(parser: argparse.ArgumentParser, flag: str, default: str, what: str) -> None:
    group = parser.add_argument_group(what)
    group.add_argument(flag, default=default, metavar="SOURCE", help=f"{DATA_HELP} (default: {default})")
    group.add_argument("--dataset-config", help="configuration name of a `datasets` dataset")
    group.add_argument("--dataset-split", default="train", help="split of a `datasets` dataset (default: train)")


def _hub(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("upload")
    group.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="upload the saved folder to this Hub repo (token: HF_TOKEN or `hf auth login`; never printed)",
    )
    group.add_argument("--private", action="store_true", help="create the Hub repo as private")


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    _loading(parser, "the model to prune")
    parser.add_argument("-o", "--output", required=True, help="folder to save the pruned model into")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    group = parser.add_argument_group("pruning (HyWIAConfig; see docs/method.md)")
    group.add_argument("--config", metavar="JSON", help="a hywia_config.json to start from; flags override it")
    group.add_argument(
        "--pruning-ratio",
        "--ratio",
        dest="pruning_ratio",
        type=ratio,
        help="share of decoder-layer parameters to remove (default: 0.2); --ratio is an alias",
    )
    group.add_argument(
        "--pruning-steps", type=positive_int, help="prune gradually in this many re-scored steps (default: 1)"
    )
    group.add_argument("--layout", choices=("uniform", "per_layer"), help="width layout (default: uniform)")
    group.add_argument("--importance", choices=importance_names(), help="importance method (default: hywia)")
    group.add_argument(
        "--fine-estimators",
        nargs="+",
        choices=("element1", "element2"),
        help="fine-grained estimators HyWIA fuses with vector (default: element1 element2)",
    )
    group.add_argument("--group-kinds", nargs="+", choices=("attention", "mlp"), help="what to prune (default: both)")
    group.add_argument("--layer-range", nargs=2, type=int, metavar=("START", "END"), help="prune layers [START, END)")
    group.add_argument("--samples", type=positive_int, help="calibration windows (default: 256)")
    group.add_argument("--sequence-length", type=positive_int, help="tokens per calibration window (default: 128)")
    group.add_argument("--batch-size", type=positive_int, help="calibration windows per pass (default: 8)")
    group.add_argument("--fusion-steps", type=int, help="fusion training steps (default: 16)")
    group.add_argument(
        "--fusion-objective",
        choices=("distillation", "lm"),
        help="what the fusion training minimises: KL to the dense model, or the LM loss (default: distillation)",
    )
    group.add_argument(
        "--fusion-ranking",
        choices=("select", "fused", "element1", "element2", "vector"),
        help="which groups inside each layer go once the fusion has set how many: the ranking chosen by hard-mask "
        "loss, the fused score's, or one estimate's (default: fused when the compensated choice between selections "
        "runs, else select)",
    )
    group.add_argument("--round-to", type=positive_int, help="round kept MLP widths to a multiple of this")
    group.add_argument(
        "--head-round-to", type=positive_int, help="round kept KV-head groups (so query heads) to a multiple of this"
    )
    group.add_argument("--seed", type=int, help="seed of sampling, fusion and the random baseline (default: 0)")
    group.add_argument(
        "--reconstruction",
        choices=("none", "bias", "least_squares"),
        help="refit of the projections sliced along their input, layer by layer on calibration data: none, FLAP's "
        "bias, or least squares (default: least_squares when the method or this flag loads calibration data)",
    )
    group.add_argument(
        "--reconstruction-ridge", type=float, help="ridge of the least-squares refit, relative (default: 0.01)"
    )
    group.add_argument(
        "--reconstruction-drift",
        type=float,
        help="share of the residual stream's drift from the dense model each least-squares refit takes back, "
        "0 to 1 (default: 0.25)",
    )
    group.add_argument(
        "--reconstruction-reselect",
        action=argparse.BooleanOptionalAction,
        help="with least squares, re-choose which groups of each layer go by greedy structured OBS on the pruned "
        "model's inputs, keeping each layer's count (default: on where the importance takes a gradient pass)",
    )
    group.add_argument(
        "--reconstruction-reselect-damping",
        type=damping,
        metavar="DELTA",
        help="with --reconstruction-reselect, judge each removal by the output change in the metric of the "
        "loss gradients' second moments at that output, damped by DELTA times their mean diagonal; "
        f"{PLAIN!r}: the plain squared error, SlimGPT's (default: 0.01)",
    )
    group.add_argument(
        "--selection-candidates",
        nargs="*",
        choices=("element1", "element2", "vector"),
        help="single estimates whose own selections HyWIA weighs against its own after compensation, keeping the "
        "one closest to the dense model on calibration data; none: no choice (default: element2 vector)",
    )
    _data(parser, "--calibration-data", "mix", "calibration data")
    group = parser.add_argument_group("after pruning")
    group.add_argument(
        "--evaluate", action="store_true", help="measure Wikipedia perplexity and put it in the model card"
    )
    _hub(parser)
    _common(parser)
    _describe(parser, PRUNE_DESCRIPTION, PRUNE_EXAMPLES)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _loading(parser, "the model to evaluate")
    group = parser.add_argument_group("perplexity")
    group.add_argument("--no-perplexity", action="store_true", help="skip perplexity")
    group.add_argument(
        "--text",
        default="wikipedia",
        metavar="SOURCE",
        help="perplexity text: 'wikipedia' (packaged, offline), 'wikitext2' (Hub), or a text file",
    )
    group.add_argument("--sequence-length", type=positive_int, default=512, help="tokens per window (default: 512)")
    group.add_argument("--max-windows", type=positive_int, default=20, help="windows to score (default: 20)")
    group.add_argument(
        "--spread", action="store_true", help="score windows evenly spaced over the whole text, not its first ones"
    )
    group = parser.add_argument_group("zero-shot accuracy (lm-evaluation-harness)")
    group.add_argument(
        "--tasks", nargs="+", default=[], metavar="TASK", help=f"'all' or some of: {', '.join(TASK_CHOICES)}"
    )
    group.add_argument("--limit", type=positive_int, help="items per task (default: the whole validation split)")
    group.add_argument("--batch-size", type=positive_int, default=8, help="lm-eval batch size (default: 8)")
    group = parser.add_argument_group("results")
    group.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    group.add_argument("--no-save", action="store_true", help="do not update the checkpoint's results and card")
    _common(parser)
    _describe(parser, EVALUATE_DESCRIPTION, EVALUATE_EXAMPLES)


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    _loading(parser, "the pruned HyWIA checkpoint")
    parser.add_argument("-o", "--output", required=True, help="folder to save the recovered model into")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    _data(parser, "--data", "mix", "training data")
    parser.add_argument(
        "--data-format",
        choices=("auto", "text", "instruction"),
        default="auto",
        help="'instruction' trains on responses only; 'auto' detects it from the record fields (default)",
    )
    group = parser.add_argument_group("objective (RecoveryConfig)")
    group.add_argument(
        "--objective",
        choices=("lm", "distillation"),
        help="the LM loss, or KL to the teacher's next-token distributions (default: distillation with --teacher, "
        "else lm)",
    )
    group.add_argument(
        "--teacher",
        metavar="MODEL_OR_FOLDER",
        help="the distillation teacher, a Hub id or folder (default: the source model in hywia_report.json)",
    )
    group.add_argument("--temperature", type=float, default=1.0, help="distillation temperature (default: 1)")
    group.add_argument(
        "--distillation-weight",
        type=float,
        default=1.0,
        help="w in w * KL + (1 - w) * LM loss (default: 1, distillation only)",
    )
    group.add_argument(
        "--method", choices=("lora", "full"), default="lora", help="LoRA adapters, or every weight (default: lora)"
    )
    group = parser.add_argument_group("LoRA and training (RecoveryConfig)")
    group.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default: 8)")
    group.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (default: 16)")
    group.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (default: 0.05)")
    group.add_argument(
        "--target-modules", nargs="+", metavar="NAME", help="layers to adapt (default: the family's projections)"
    )
    group.add_argument("--learning-rate", type=float, default=1e-4, help="peak learning rate (default: 1e-4)")
    group.add_argument("--lr-scheduler", choices=("constant", "linear", "cosine"), default="linear")
    group.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps (default: 0)")
    group.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (default: 100)")
    group.add_argument("--batch-size", type=positive_int, default=4, help="sequences per pass (default: 4)")
    group.add_argument("--gradient-accumulation", type=positive_int, default=1, help="passes per step (default: 1)")
    group.add_argument("--sequence-length", type=positive_int, default=256, help="tokens per sequence (default: 256)")
    group.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower")
    group.add_argument("--seed", type=int, default=0, help="seed of data order, LoRA init and dropout (default: 0)")
    group = parser.add_argument_group("checkpoints")
    group.add_argument("--state-dir", help="resumable training state (default: <output>.recovery)")
    group.add_argument("--save-steps", type=positive_int, default=50, help="checkpoint every N steps (default: 50)")
    group.add_argument("--logging-steps", type=positive_int, default=10, help="log the loss every N steps")
    _hub(parser)
    _common(parser)
    _describe(parser, RECOVER_DESCRIPTION, RECOVER_EXAMPLES)


def _describe(parser: argparse.ArgumentParser, description: str, epilog: str) -> None:
    """Set help texts after creation: optimum-cli creates the subparsers itself, without them."""
    parser.description = description
    parser.epilog = epilog
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]


COMMANDS = (
    Command("prune", "prune a model with HyWIA and save it", add_prune_arguments),
    Command("evaluate", "perplexity and zero-shot accuracy of a model", add_evaluate_arguments),
    Command("recover", "LoRA fine-tuning or distillation of a pruned model, merged back", add_recover_arguments),
)
