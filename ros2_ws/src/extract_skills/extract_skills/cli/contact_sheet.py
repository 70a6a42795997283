"""Write a PNG contact sheet (grid of evenly spaced frames) of one dataset episode.

Example::

    extract-contact-sheet data/kitchen_demos/episode_000000.npz --out docs/img/demo_contact_sheet.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def contact_sheet(images: np.ndarray, flags: np.ndarray | None, stamps: np.ndarray | None, frames: int, cols: int, scale: int) -> np.ndarray:
    """RGB grid (uint8) of ``frames`` evenly spaced images, each labelled with its index, time and done count."""
    import cv2

    n = images.shape[0]
    idx = np.unique(np.linspace(0, n - 1, min(frames, n)).round().astype(int))
    h, w = images.shape[1] * scale, images.shape[2] * scale
    rows = int(np.ceil(len(idx) / cols))
    sheet = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for k, i in enumerate(idx):
        tile = cv2.resize(images[i], (w, h), interpolation=cv2.INTER_NEAREST)
        label = f"t={i}"
        if stamps is not None:
            label += f" {stamps[i]:.1f}s"
        if flags is not None:
            label += f" done={int(flags[i].sum())}"
        tile[:16] = tile[:16] // 3  # dark band behind the label
        cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        r, c = divmod(k, cols)
        sheet[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = tile
    return sheet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("episode", help="episode .npz file, or a dataset directory (then --index picks one)")
    p.add_argument("--index", type=int, default=0, help="episode index when a directory is given")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--frames", type=int, default=16, help="number of frames")
    p.add_argument("--cols", type=int, default=4, help="grid columns")
    p.add_argument("--scale", type=int, default=1, help="integer upscaling of each frame")
    args = p.parse_args(argv)
    import cv2

    from extract_skills.core.data.dataset import episode_files, read_episode

    src = Path(args.episode)
    if src.is_dir():
        files = episode_files(src)
        if not 0 <= args.index < len(files):
            print(f"{src} has {len(files)} episodes; --index {args.index} is out of range", file=sys.stderr)
            return 2
        src = files[args.index]
    if args.frames < 1 or args.cols < 1 or args.scale < 1:
        print("--frames, --cols and --scale must be >= 1", file=sys.stderr)
        return 2
    ep = read_episode(src)
    sheet = contact_sheet(ep.images, ep.subtasks_done, ep.stamps, args.frames, args.cols, args.scale)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet[:, :, ::-1]):
        print(f"could not write {out}", file=sys.stderr)
        return 1
    seq = ", ".join(ep.meta.get("task_sequence", []))
    print(f"{out}: {len(ep.images)} frames of {src.name} ({seq}; success={ep.meta.get('success')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
