"""Real-image pair layouts from local git clones of the public repositories that hold them.

    python studies/real_images/make_layouts.py --kitti KITTI_CLONE --idd IDD_CLONE --out data/real

KITTI semantics (200 labelled day images of Karlsruhe, CC BY-NC-SA 3.0) is read from a clone of
`ika-rwth-aachen/acdc-notebooks`, IDD-Lite (1,403 + 204 labelled and 404 unlabelled Indian street images, level-1
labels) from a clone of `ssg8288/IDD` (or its copy `mohanrajmit/IDD`). A bare clone is enough: files are read with
`git archive`, so no work tree is needed. Written, under OUT:

    kitti/training/{image_2,semantic_rgb}/     all 200 KITTI images, as KITTI distributes them (`mfmseg prepare kitti`)
    kitti/{train,val}/{image_2,semantic_rgb}/  a fixed 150 / 50 split of them (hard links), for KITTI as a target
    idd/{leftImg8bit,gtFine}/{train,val,test}/ IDD-Lite as distributed (`mfmseg prepare idd`)
    splits.json                                the KITTI split (seeded permutation of the sorted ids) and file counts

then `mfmseg prepare` runs on both (train-id PNGs, rare-class statistics). Idempotent: a finished OUT is left as
it is. The images are never committed: their licences forbid redistribution here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from mfmseg.data.prepare import prepare_dataset

KITTI_DIR = "section_2_sensor_data_processing/datasets/kitti"
IDD_DIR = "idd20k_lite"
KITTI_VAL = 50  # of 200: a quarter, for KITTI as a target
SPLIT_SEED = 0


def extract(repo: Path, folder: str, members: tuple[str, ...], dest: Path) -> int:
    """Copy `folder/<member>/...` of the repository's HEAD to `dest/<member>/...`; returns the file count."""
    try:
        tar_bytes = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "HEAD",
                                    *[f"{folder}/{m}" for m in members]],
                                   check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"cannot read {folder}/{{{','.join(members)}}} from the git repository {repo}: "
                         f"{e.stderr.decode().strip().splitlines()[-1] if e.stderr else e}") from None
    count = 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            rel = Path(member.name).relative_to(folder)
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member).read()
            if data.startswith(b"version https://git-lfs"):
                raise SystemExit(f"{member.name} in {repo} is a Git LFS pointer, not the file: fetch the LFS objects")
            tmp = out.with_name(out.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, out)
            count += 1
    return count


def kitti_split(ids: list[str]) -> dict[str, list[str]]:
    """A fixed train / val split of the sorted KITTI ids (seeded permutation: the same on every machine)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
    val = sorted(ids[i] for i in order[:KITTI_VAL])
    return {"train": sorted(set(ids) - set(val)), "val": val}


def link_split(kitti: Path, split: dict[str, list[str]]) -> None:
    for name, ids in split.items():
        for sub in ("image_2", "semantic_rgb"):
            folder = kitti / name / sub
            folder.mkdir(parents=True, exist_ok=True)
            for i in ids:
                dst = folder / f"{i}.png"
                if not dst.exists():
                    try:
                        os.link(kitti / "training" / sub / f"{i}.png", dst)
                    except OSError:  # another file system: a copy
                        shutil.copyfile(kitti / "training" / sub / f"{i}.png", dst)


def make_layouts(kitti_repo: Path, idd_repo: Path, out: Path, nproc: int = 2) -> dict:
    done = out / "splits.json"
    if done.is_file():
        print(f"{out} is ready ({done}); delete it to rebuild")
        return json.loads(done.read_text())
    kitti, idd = out / "kitti", out / "idd"
    n_kitti = extract(kitti_repo, KITTI_DIR, ("image_2", "semantic_rgb"), kitti / "training")
    n_idd = extract(idd_repo, IDD_DIR, ("leftImg8bit", "gtFine"), idd)
    ids = sorted(p.stem for p in (kitti / "training" / "image_2").glob("*.png"))
    split = kitti_split(ids)
    link_split(kitti, split)
    prepare_dataset("kitti", kitti, nproc=nproc)
    prepare_dataset("idd", idd, nproc=nproc)
    record = {"kitti": split, "split_seed": SPLIT_SEED, "files": {"kitti": n_kitti, "idd": n_idd},
              "sources": {"kitti": f"{kitti_repo} {KITTI_DIR}", "idd": f"{idd_repo} {IDD_DIR}"}}
    tmp = done.with_name("splits.json.part")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, done)
    print(f"wrote {out}: KITTI {len(ids)} images ({len(split['train'])} train / {len(split['val'])} val), "
          f"IDD-Lite {n_idd} files")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kitti", type=Path, required=True, help="clone of ika-rwth-aachen/acdc-notebooks")
    parser.add_argument("--idd", type=Path, required=True, help="clone of ssg8288/IDD")
    parser.add_argument("--out", type=Path, default=Path("data/real"))
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args(argv)
    make_layouts(args.kitti, args.idd, args.out, args.nproc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
