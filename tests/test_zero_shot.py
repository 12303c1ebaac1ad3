"""Zero-shot accuracy through lm-evaluation-harness on the paper's seven tasks, with offline data."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from optimum_hywia.evaluation.zero_shot import (
    PAPER_TASKS,
    evaluate_zero_shot,
    paired_difference,
    task_data_file,
    task_folder,
)


def test_task_folder_points_lm_eval_definitions_at_local_data():
    folder = task_folder(PAPER_TASKS)
    for task in PAPER_TASKS:
        config = json.loads((folder / f"{task}.yaml").read_text())
        assert config["task"] == task and config["dataset_path"] == "json"
        assert config["include"].endswith(".yaml")
        data = config["dataset_kwargs"]["data_files"]["validation"]
        first = json.loads(open(data).readline())
        assert first  # a real row of the validation split


def test_boolq_rows_get_lm_eval_label_from_the_answer():
    rows = [json.loads(line) for line in task_data_file("boolq").read_text().splitlines()[:50]]
    assert all(row["label"] == int(row["answer"]) for row in rows)
    assert {row["label"] for row in rows} == {0, 1}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tasks": ["mmlu"]}, "Unknown zero-shot task"),
        ({"tasks": []}, "No tasks given"),
        ({"limit": 0}, "limit must be a positive"),
    ],
)
def test_bad_zero_shot_arguments_get_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_zero_shot(object(), object(), **kwargs)


@pytest.mark.slow
def test_dense_smollm2_scores_are_in_a_sane_range(smollm2):
    model, tokenizer = smollm2
    results = evaluate_zero_shot(model, tokenizer, limit=30, batch_size=16, per_item=True)
    assert set(results) == {*PAPER_TASKS, "average"}
    for task in PAPER_TASKS:
        assert results[task]["n"] == 30
        assert 0.0 <= results[task]["acc"] <= 1.0
        # per-item correctness, item by item, averages to the reported metrics
        for metric, correct in results[task]["items"].items():
            assert len(correct) == 30 and set(correct) <= {0, 1}
            assert sum(correct) / 30 == pytest.approx(results[task][metric])
    # chance: PIQA 50%, ARC-e 25%, HellaSwag 25%; SmolLM2-135M is well above it on these
    assert results["piqa"]["acc"] >= 0.6
    assert results["arc_easy"]["acc"] >= 0.4
    assert results["hellaswag"]["acc_norm"] >= 0.3
    assert 0.3 <= results["average"]["acc"] <= 0.7


def _items(**per_task):
    return {task: {"items": {"acc": items}} for task, items in per_task.items()}


def test_paired_difference_matches_hand_computed_mean_and_standard_error():
    ours = _items(boolq=[1, 1, 0, 1], piqa=[1, 0, 1, 1])
    theirs = _items(boolq=[0, 1, 0, 0], piqa=[1, 1, 1, 0])
    result = paired_difference([(ours, theirs)], tasks=["boolq", "piqa"])
    d_boolq, d_piqa = [1, 0, 0, 1], [0, -1, 0, 1]
    assert result["per_task_diff"] == {"boolq": 50.0, "piqa": 0.0}
    assert result["average_diff"] == 25.0
    expected = 100 * math.sqrt(statistics.variance(d_boolq) / 4 + statistics.variance(d_piqa) / 4) / 2
    assert result["standard_error"] == pytest.approx(expected)
    assert result["without_boolq_diff"] == 0.0
    assert result["without_boolq_standard_error"] == pytest.approx(100 * math.sqrt(statistics.variance(d_piqa) / 4))
    assert result["discordant_items"] == 4
    assert result["items_per_task"] == {"boolq": 4, "piqa": 4}


def test_paired_difference_pools_seeds_and_refuses_unpaired_items():
    a, b = _items(piqa=[1, 0]), _items(piqa=[0, 0])
    pooled = paired_difference([(a, b), (b, b)], tasks=["piqa"])
    assert pooled["average_diff"] == 25.0 and pooled["items_per_task"] == {"piqa": 4}
    with pytest.raises(ValueError, match="same limit"):
        paired_difference([(a, _items(piqa=[1]))], tasks=["piqa"])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], tasks=["piqa"])
