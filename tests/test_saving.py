"""One home for atomic folder writes (`optimum_hywia.saving`), used by the pruner and by recovery."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import arithmetic_sequences, make_tiny_model

from optimum_hywia import HyWIAConfig, HyWIAPruner
from optimum_hywia.recovery import RecoveryConfig, recover
from optimum_hywia.saving import atomic_directory, check_destination


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


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
    """Recovery checkpoints and the recovered model are written through the same atomic folders as pruned models:
    the leftovers of a killed run (its process id in their names) are removed by the next run."""
    pruner = HyWIAPruner(make_tiny_model("llama-gqa"), HyWIAConfig(pruning_ratio=0.3, importance="l2"))
    pruner.prune(show_progress=False)
    output_dir = tmp_path / "recovery"
    output_dir.mkdir()
    dead = _dead_pid()
    leftovers = [output_dir / f".checkpoint.tmp-{dead}-abc", output_dir / f".checkpoint.old-{dead}"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "adapter.safetensors").write_bytes(b"partial")
    settings = dict(max_steps=2, save_steps=1, sequence_length=32, batch_size=4, dropout=0.0)
    recover(pruner.model, None, arithmetic_sequences(8, seed=1), RecoveryConfig(**settings), output_dir, False)
    assert not any(folder.exists() for folder in leftovers)
    assert not [p for p in output_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
