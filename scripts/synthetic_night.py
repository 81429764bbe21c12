#!/usr/bin/env python3
"""Write a synthetic night: <root>/<NIGHT>/<EXPOSURE>/ with files and a sha256sum manifest.

For the demo and benchmarks. Data is pseudo-random from a seed, so runs are
repeatable. ``--corrupt K`` flips one byte in one file of K exposures after the
manifest is written; ``--no-manifest K`` leaves K exposures without one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

BLOCK = 1024 * 1024


def write_file(path: Path, size: int, rng: random.Random) -> str:
    """Write ``size`` pseudo-random bytes, return their sha256 (one block in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    block = rng.randbytes(min(size, BLOCK))
    with open(path, "wb") as fh:
        left = size
        while left:
            piece = block[: min(left, BLOCK)]
            piece = rng.randbytes(16) + piece[16:] if len(piece) > 16 else piece
            fh.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def make_night(
    root: Path,
    night: str,
    *,
    exposures: int,
    files: int,
    size: int,
    corrupt: int = 0,
    no_manifest: int = 0,
    seed: int = 1,
) -> dict[str, object]:
    rng = random.Random(seed)
    names = [f"{i:08d}" for i in range(1, exposures + 1)]
    broken = names[:corrupt]
    bare = names[corrupt : corrupt + no_manifest]
    for exp in names:
        d = root / night / exp
        lines = []
        for j in range(files):
            name = f"desi-{exp}-{j}.fits.fz" if j else f"guide-{exp}.fits.fz"
            lines.append(f"{write_file(d / name, size, rng)}  {name}")
        if exp not in bare:
            (d / f"checksum-{exp}.sha256sum").write_text("\n".join(lines) + "\n")
        if exp in broken:
            victim = d / lines[-1].split("  ", 1)[1]
            with open(victim, "r+b") as fh:
                fh.seek(size // 2)
                byte = fh.read(1)
                fh.seek(size // 2)
                fh.write(bytes([byte[0] ^ 0xFF]))
    return {
        "night": night,
        "exposures": names,
        "corrupted": broken,
        "no_manifest": bare,
        "bytes": exposures * files * size,
    }


def parse_size(text: str) -> int:
    units = {"k": 10**3, "m": 10**6, "g": 10**9}
    t = text.strip().lower().removesuffix("b")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("night")
    p.add_argument("--exposures", type=int, default=24)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--size", type=parse_size, default=parse_size("1M"))
    p.add_argument("--corrupt", type=int, default=0)
    p.add_argument("--no-manifest", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    print(
        json.dumps(
            make_night(
                a.root,
                a.night,
                exposures=a.exposures,
                files=a.files,
                size=a.size,
                corrupt=a.corrupt,
                no_manifest=a.no_manifest,
                seed=a.seed,
            )
        )
    )


if __name__ == "__main__":
    main()
