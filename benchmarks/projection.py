"""PROJECTION (not a measurement): memory and time per calibration sample for LLaMA-2-7B and 70B on 80 GB GPUs.

Built from what `benchmarks/prune_cost.py` measured on SmolLM2-135M (`benchmarks/results/prune_cost.json`):

- memory = bf16 weights + activations of one calibration batch (`--batch-size`, default 1 window of
  `--sequence-length` 512 tokens, no micro-batches) + the lean path's own overhead. The activations come from
  `optimum_hywia.memory.estimate_calibration_memory` on the real LLaMA-2 shapes (a meta-device model, no weights),
  scaled by the ratio measured/estimated activations of the SmolLM2 `floor` run; the lean overhead (transient
  gradients, statistics) and the full-gradient reference's overhead are the measured bytes per parameter above the
  floor, times the parameter count;
- time = the calibration FLOPs of one sample (forward + backward, `6 x params x tokens`, plus one more forward with
  gradient checkpointing) at an ASSUMED sustained fraction of the GPU's bf16 peak (`--utilization`, default 0.4 of
  989 TFLOP/s for an H100 SXM). The CPU-measured seconds per parameter-token are reported next to it for scale.
- 8 GPUs: the 7B model is data parallel (a full copy per GPU, calibration batches split: time / 8); the 70B model
  does not fit one GPU in bf16 and is placed model parallel by a device_map over the 8 GPUs (weights / 8 per GPU,
  layers run one after the other: no speed-up), or data parallel over 8 nodes of 8.

    .venv/bin/python benchmarks/projection.py

Results go to `benchmarks/results/projection.json` and a Markdown table to stdout (copied into docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from optimum_hywia.architectures import get_architecture
from optimum_hywia.memory import estimate_calibration_memory

RESULTS = Path(__file__).parent / "results"
GIB = 1024**3

MODELS = {
    "LLaMA-2-7B": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32
    ),
    "LLaMA-2-70B": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8
    ),
}
GPU_MEMORY = 80 * 10**9
GPU_BF16_FLOPS = 989e12


def meta_model(name: str) -> torch.nn.Module:
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **MODELS[name])
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", default=str(RESULTS / "prune_cost.json"))
    parser.add_argument("--sequence-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1, help="calibration_batch_size (no micro-batches)")
    parser.add_argument("--utilization", type=float, default=0.4, help="ASSUMED fraction of the bf16 peak")
    parser.add_argument("--output", default=str(RESULTS / "projection.json"))
    args = parser.parse_args()

    measured = json.loads(Path(args.measured).read_text())
    settings, runs = measured["settings"], measured["measurements"]
    floor, lean, reference = runs["floor"], runs["lean element2"], runs["reference element2"]
    smollm2_params = floor["model_bytes"] / 4
    spec = get_architecture("llama")
    # the floor run held the fp32 model and one batch's activations: what is above the loaded model is activations
    with torch.device("meta"):
        smollm2 = AutoModelForCausalLM.from_config(
            LlamaConfig(
                vocab_size=49152,
                hidden_size=576,
                intermediate_size=1536,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                tie_word_embeddings=True,
            )
        )
    estimated = estimate_calibration_memory(
        smollm2, spec, settings["batch_size"], settings["sequence_length"]
    ).activations
    activation_scale = (floor["peak_bytes"] - floor["loaded_bytes"]) / estimated
    lean_bytes_per_param = max(lean["peak_bytes"] - floor["peak_bytes"], 0) / smollm2_params
    reference_bytes_per_param = max(reference["peak_bytes"] - floor["peak_bytes"], 0) / smollm2_params
    tokens_measured = settings["samples"] * settings["sequence_length"]
    cpu_seconds_per_param_token = lean["phase_seconds"]["gradients"] / (tokens_measured * smollm2_params)

    rows = {}
    for name in MODELS:
        model = meta_model(name)
        params = sum(p.numel() for p in model.parameters())
        for checkpointing in (False, True):
            estimate = estimate_calibration_memory(
                model,
                spec,
                batch_size=args.batch_size,
                sequence_length=args.sequence_length,
                autocast_dtype="bfloat16",
                gradient_checkpointing=checkpointing,
            )
            activations = estimate.activations * activation_scale
            lean_total = estimate.weights + activations + lean_bytes_per_param * params
            reference_total = estimate.weights + activations + reference_bytes_per_param * params
            flops = (8 if checkpointing else 6) * params * args.sequence_length
            seconds = flops / (GPU_BF16_FLOPS * args.utilization)  # per sample, whatever the batch size
            fits = lean_total <= GPU_MEMORY
            per_gpu_8 = lean_total if fits else estimate.weights / 8 + activations + lean_bytes_per_param * params / 8
            rows[f"{name} checkpointing={checkpointing}"] = {
                "params": params,
                "weights_gib": estimate.weights / GIB,
                "activations_gib_per_micro_batch": activations / GIB,
                "lean_peak_gib_1_gpu": lean_total / GIB,
                "reference_peak_gib_1_gpu": reference_total / GIB,
                "fits_one_80gb_gpu": fits,
                "per_gpu_peak_gib_8_gpus": per_gpu_8 / GIB,
                "eight_gpu_mode": "data parallel" if fits else "model parallel (device_map)",
                "seconds_per_sample_1_gpu": seconds,
                "seconds_per_sample_8_gpus": seconds / 8 if fits else seconds,
                "cpu_seconds_per_sample_measured_rate": cpu_seconds_per_param_token * params * args.sequence_length,
            }
    results = {
        "PROJECTION": "computed from per-parameter costs measured on SmolLM2-135M; not measured on these models",
        "command": " ".join(sys.argv),
        "settings": vars(args),
        "measured_inputs": {
            "activation_scale_measured_over_estimated": activation_scale,
            "lean_overhead_bytes_per_param": lean_bytes_per_param,
            "reference_overhead_bytes_per_param": reference_bytes_per_param,
            "cpu_seconds_per_param_token": cpu_seconds_per_param_token,
        },
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| model | checkpointing | weights (GiB) | lean peak, 1 GPU (GiB) | full-gradient reference (GiB) | 8 GPUs "
        "| per-GPU peak, 8 GPUs (GiB) | s / sample, 1 GPU | s / sample, 8 GPUs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        model_name, checkpointing = name.split(" checkpointing=")
        print(
            f"| {model_name} | {checkpointing} | {row['weights_gib']:.1f} | {row['lean_peak_gib_1_gpu']:.1f}"
            f"{'' if row['fits_one_80gb_gpu'] else ' (does not fit)'} | {row['reference_peak_gib_1_gpu']:.1f} | "
            f"{row['eight_gpu_mode']} | {row['per_gpu_peak_gib_8_gpus']:.1f} | {row['seconds_per_sample_1_gpu']:.3f} | "
            f"{row['seconds_per_sample_8_gpus']:.3f} |"
        )
    print(json.dumps(results["measured_inputs"], indent=2))


if __name__ == "__main__":
    main()
