"""Calibrate camera intrinsics from board images; write the ROS camera_info YAML.

Example (ChArUco 7x5 squares, 35 mm squares, 26 mm markers)::

    extract-calibrate-intrinsics 'captures/*.png' --board charuco --size 7x5 --square 0.035 \
        --marker 0.026 --camera-name wrist_camera --output calibration/camera_info.yaml
"""
from __future__ import annotations

import argparse
import glob
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from ..calibration import BoardSpec, calibrate_intrinsics, detect_board, write_camera_info_yaml

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def add_board_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("calibration board")
    g.add_argument("--board", choices=("chessboard", "charuco"), required=required,
                   help="board type (ChArUco recommended: partial views work, pose is unambiguous)")
    g.add_argument("--size", required=required, metavar="COLSxROWS",
                   help="chessboard: inner corners, e.g. 8x6 (as ROS camera_calibration); charuco: squares, e.g. 7x5")
    g.add_argument("--square", type=float, required=required, help="square edge [m], e.g. 0.025")
    g.add_argument("--marker", type=float, help="charuco marker edge [m]")
    g.add_argument("--dictionary", default="DICT_4X4_50", help="charuco aruco dictionary (default DICT_4X4_50)")
    g.add_argument("--legacy", action="store_true",
                   help="charuco board generated with OpenCV < 4.6 (older layout; see setLegacyPattern)")


def board_from_args(args: argparse.Namespace) -> BoardSpec:
    try:
        cols, rows = (int(v) for v in args.size.lower().split("x"))
    except (ValueError, AttributeError):
        raise ValueError(f"--size must look like 8x6, got {args.size!r}") from None
    return BoardSpec(args.board, cols, rows, args.square, args.marker, args.dictionary, args.legacy)


def list_images(sources: list[str]) -> list[Path]:
    """Directories (their images, sorted), globs and plain files, in order, without duplicates."""
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found = [p]
        else:
            found = sorted(Path(f) for f in glob.glob(src, recursive=True))
        if not found:
            raise ValueError(f"no images found for {src!r}")
        out.extend(f for f in found if f not in out)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract-calibrate-intrinsics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files, directories or globs (quote globs)")
    add_board_args(p)
    p.add_argument("--camera-name", default="camera", help="camera_name written into the YAML")
    p.add_argument("--distortion-model", choices=("plumb_bob", "rational_polynomial"), default="plumb_bob")
    p.add_argument("--alpha", type=float, default=0.0,
                   help="projection-matrix free scaling, 0 (valid pixels only, camera_calibration default) to 1")
    p.add_argument("--min-views", type=int, default=10, help="refuse with fewer usable images (default 10)")
    p.add_argument("--max-rms", type=float, default=1.0, help="refuse if reprojection rms exceeds this [px]")
    p.add_argument("--output", default="calibration/camera_info.yaml", help="camera_info YAML to write")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        spec = board_from_args(args)
        paths = list_images(args.images)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    detections, rejected = [], []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            rejected.append((path, "unreadable"))
            continue
        det = detect_board(img, spec, source=str(path))
        if det is None:
            rejected.append((path, "board not found"))
        else:
            detections.append(det)
    print(f"board found in {len(detections)} of {len(paths)} images")
    for path, why in rejected:
        print(f"  skipped {path}: {why}")
    try:
        res = calibrate_intrinsics(detections, args.camera_name, args.distortion_model, args.alpha, args.min_views)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = res.camera_info
    print(f"image size {info.width}x{info.height} px, reprojection rms {res.rms_reprojection_px:.3f} px")
    print(f"fx {info.fx:.2f} fy {info.fy:.2f} cx {info.cx:.2f} cy {info.cy:.2f} px "
          f"(1-sigma {', '.join(f'{s:.2f}' for s in res.std_intrinsics)})")
    print(f"distortion ({info.distortion_model}): {np.array2string(info.distortion, precision=5)}")
    median = float(np.median(res.per_view_rms_px))
    for det, e in zip(detections, res.per_view_rms_px):
        if e > 3 * median and e > 0.5:
            print(f"  outlier view {det.source}: rms {e:.2f} px (median {median:.2f}); consider removing it")
    if res.rms_reprojection_px > args.max_rms:
        print(f"error: reprojection rms {res.rms_reprojection_px:.3f} px > --max-rms {args.max_rms}; "
              "check the board size/square arguments and remove blurred images", file=sys.stderr)
        return 2
    write_camera_info_yaml(args.output, info)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
