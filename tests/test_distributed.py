"""Data-parallel calibration on torch.distributed: 2 CPU processes on gloo prune exactly like one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_python

TESTS_DIR = Path(__file__).parent

CASES = [
    ("hywia", "uniform", "none"),
    ("hywia", "per_layer", "none"),
    ("element1", "per_layer", "none"),
    ("element2", "uniform", "none"),
    ("wanda_sp", "per_layer", "none"),  # forward passes only: every rank runs every batch
    # compensation: each rank propagates its share of the batches; the input statistics are all-reduced
    ("element1", "per_layer", "least_squares"),
    ("slimgpt", "uniform", "least_squares"),
    # the default pipeline: the compensated choice between HyWIA's selection, element2's and vector's (each one's KL
    # all-reduced), each layer's groups re-chosen by OBS in the metric of the output Fisher (all-reduced with the
    # gradient statistics)
    ("hywia", "per_layer", "least_squares+reselect"),
    ("element1", "per_layer", "least_squares+reselect"),
]

SCRIPT = """
import json, sys, tempfile, os
from unittest import mock
import torch, torch.distributed as dist, torch.multiprocessing as mp
sys.path.insert(0, {tests_dir!r})
from conftest import arithmetic_sequences, make_trained_tiny_model
from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.distributed import distributed_world

CASES = {cases!r}


def prune(model, importance, layout, reconstruction="none", batch_size=2):  # 8 batches: the ranking race runs
    if distributed_world()[1] == 1 and reconstruction.startswith("least_squares"):
        # data-parallel ranks hold different held-out windows, so every compensated candidate sees all of them there:
        # the reference does too (one process races them, selection.race)
        with mock.patch("optimum_hywia.importance.ranking.race_survivors", lambda alive, *_: alive):
            return _prune(model, importance, layout, reconstruction, batch_size)
    return _prune(model, importance, layout, reconstruction, batch_size)


def _prune(model, importance, layout, reconstruction, batch_size):
    config = HyWIAConfig(
        pruning_ratio=0.3, importance=importance, layout=layout, num_calibration_samples=16,
        calibration_sequence_length=32, calibration_batch_size=batch_size, fusion_steps=4, fusion_learning_rate=0.2,
        reconstruction=reconstruction.removesuffix("+reselect"),
        reconstruction_reselect=reconstruction.endswith("+reselect"),
    )
    pruner = HyWIAPruner(model, config)
    pruner.prune(arithmetic_sequences(16, seed=7), show_progress=False)
    refit = [name for name in model.state_dict() if "o_proj" in name or "down_proj" in name]
    weights = {{name: model.state_dict()[name].flatten().tolist() for name in refit}}
    return {{
        "kept": pruner.report.kept_groups, "losses": pruner.report.fusion_losses, "weights": weights,
        "selection": [pruner.report.selection, pruner.report.selection_losses],
    }}


def run_all(base):
    import copy
    return {{f"{{i}} {{l}} {{r}}": prune(copy.deepcopy(base), i, l, r) for i, l, r in CASES}}


def worker(rank, world_size, init_file, base, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{{init_file}}", rank=rank, world_size=world_size)
    try:
        assert distributed_world() == (rank, world_size)
        results = run_all(base)
        try:
            prune(base, "hywia", "uniform", batch_size=1)
            results["error"] = None
        except ValueError as error:
            results["error"] = str(error)
    except BaseException:
        import traceback
        queue.put((rank, traceback.format_exc()))
        raise
    queue.put((rank, results))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    base = make_trained_tiny_model(steps=60)
    single = run_all(base)
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=worker, args=(rank, 2, init_file, base, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    ranks = dict(queue.get(timeout=600) for _ in processes)
    failures = [result for result in ranks.values() if isinstance(result, str)]
    assert not failures, failures[0]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0, process.exitcode
    print(json.dumps({{"single": single, "ranks": [ranks[0], ranks[1]]}}))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    script = tmp_path_factory.mktemp("distributed") / "run.py"
    script.write_text(SCRIPT.format(tests_dir=str(TESTS_DIR), cases=CASES))
    output = run_python(f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')", timeout=900)
    return json.loads(output.strip().splitlines()[-1])


@pytest.mark.parametrize("importance, layout, reconstruction", CASES)
def test_two_gloo_ranks_keep_the_same_groups_and_weights_as_one_process(runs, importance, layout, reconstruction):
    case = f"{importance} {layout} {reconstruction}"
    single = runs["single"][case]
    for rank in runs["ranks"]:
        assert rank[case]["kept"] == single["kept"]
        # the fusion training sees the whole batch's loss on every rank, equal to the single process's
        assert rank[case]["losses"] == pytest.approx(single["losses"], rel=1e-4)
        assert rank[case]["weights"].keys() == single["weights"].keys()
        for name, values in single["weights"].items():  # statistics summed in another order: float64 round-off
            assert rank[case]["weights"][name] == pytest.approx(values, rel=1e-5, abs=1e-6), name
        assert rank[case]["selection"][0] == single["selection"][0]
        assert rank[case]["selection"][1] == pytest.approx(single["selection"][1], rel=1e-5)
    if importance == "hywia":
        assert len(single["losses"]) == 4
    if reconstruction.startswith("least_squares") and importance == "hywia":
        assert set(single["selection"][1]) == {"hywia", "element2", "vector"}  # three distinct candidates: it ran


def test_a_batch_smaller_than_the_world_is_refused_with_the_fix(runs):
    for rank in runs["ranks"]:
        assert "calibration_batch_size of at least 2" in rank["error"]
