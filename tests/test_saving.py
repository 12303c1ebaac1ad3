"""One home for atomic folder writes (`optimum_hywia.saving`), used by the pruner and by recovery."""

from __future__ import annotations

import os

import pytest
from conftest import arithmetic_sequences, make_tiny_model

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.recovery import RecoveryConfig, recover
from optimum_hywia.saving import atomic_directory, check_destination


def test_a_staging_folder_carries_the_process_id_and_replaces_the_target_at_the_end(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("previous")
    with atomic_directory(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(f".out.tmp-{os.getpid()}-")
        (staging / "new").write_text("next")
        assert (target / "old").exists()  # nothing moves before the block ends
    assert [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_error_inside_leaves_the_target_and_no_staging_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("previous")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as staging:
        (staging / "half").write_text("partial")
        raise KeyboardInterrupt
    assert [p.name for p in target.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_destination_refuses_a_file_and_a_non_empty_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        check_destination(tmp_path / "file", overwrite=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        check_destination(tmp_path / "full", overwrite=False)
    assert check_destination(tmp_path / "full", overwrite=True) == (tmp_path / "full").resolve()


def test_a_killed_recovery_leaves_nothing_the_next_run_does_not_clean(tmp_path):
    """The recovered model is written through the same atomic folders as pruned models; Trainer's checkpoints write
    their trainer state last, and one a killed run left without it is removed by the next run."""
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(pruning_ratio=0.3, importance="l2"))
    pruner.prune(show_progress=False)
    output_dir = tmp_path / "recovery"
    output_dir.mkdir()
    leftovers = [output_dir / "checkpoint-7"]  # a checkpoint a killed run left half-written: no trainer state yet
    for folder in leftovers:
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
    settings = dict(max_steps=2, save_steps=1, sequence_length=32, batch_size=4, dropout=0.0)
    recover(
        pruner.model, None, arithmetic_sequences(8, seed=1), RecoveryConfig(**settings), output_dir, show_progress=False
    )
    assert not any(folder.exists() for folder in leftovers)
    assert not [p for p in output_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert [p.name for p in output_dir.glob("checkpoint-*")] == ["checkpoint-2"]
