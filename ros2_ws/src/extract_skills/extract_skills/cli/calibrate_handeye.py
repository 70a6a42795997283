"""Hand-eye calibration from robot poses plus board images (or precomputed board poses).

Samples file (YAML or JSON); image paths are relative to the samples file::

    samples:
      - image: sample_00.png                  # board image taken at this robot pose
        robot_pose:                           # effector -> base: the effector pose in the base frame
          translation: [0.41, -0.02, 0.35]    # m
          rotation: [1.0, 0.0, 0.0, 0.0]      # quaternion x, y, z, w
      - robot_pose: {matrix: [[...4x4...]]}   # a 4x4 homogeneous matrix also works
        target_pose: {translation: [...], rotation: [...]}   # board -> camera, instead of an image

With images, ``--camera-info`` and the board options are needed (board poses come from solvePnP).
Several methods are solved and compared; the first is written. The file is not written if the
methods disagree or the residuals are large, unless ``--force``.

Example::

    extract-calibrate-handeye captures/samples.yaml --type eye_in_hand \
        --camera-info calibration/camera_info.yaml --board charuco --size 7x5 --square 0.035 \
        --marker 0.026 --output calibration/handeye.yaml
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from ..calibration import CalibrationType, HandEyeCalibration, detect_board, load_camera_info, write_handeye_yaml
from ..calibration.handeye import (
    HANDEYE_METHODS,
    compare_methods,
    make_transform,
    matrix_from_quaternion,
    opencv_has_handeye,
)
from ..calibration.intrinsics import board_pose
from ..calibration.validate import check_image_matches_camera_info
from .calibrate_intrinsics import add_board_args, board_from_args


def parse_pose(d: object, what: str) -> np.ndarray:
    """A pose as {matrix: 4x4} or {translation: [x, y, z] | {x, y, z}, rotation: [x, y, z, w] | {x, y, z, w}}."""
    if not isinstance(d, dict):
        raise ValueError(f"{what}: expected a mapping, got {type(d).__name__}")
    if "matrix" in d:
        T = np.asarray(d["matrix"], np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"{what}: matrix must be 4x4, got shape {T.shape}")
        return T
    try:
        t, q = d["translation"], d["rotation"]
        t = [t[k] for k in "xyz"] if isinstance(t, dict) else list(t)
        q = [q[k] for k in "xyzw"] if isinstance(q, dict) else list(q)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{what}: needs 'matrix' or 'translation' + 'rotation' ({e})") from None
    if len(t) != 3 or len(q) != 4:
        raise ValueError(f"{what}: translation needs 3 values and rotation (x, y, z, w) 4")
    try:
        return make_transform(matrix_from_quaternion(q), t)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def load_samples(path: Path) -> list[dict]:
    text = path.read_text()
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    samples = data.get("samples") if isinstance(data, dict) else data
    if not isinstance(samples, list) or not samples:
        raise ValueError(f"{path}: expected a non-empty list under 'samples'")
    return samples


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="extract-calibrate-handeye", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="YAML or JSON samples file (see above)")
    p.add_argument("--type", required=True, choices=[c.value for c in CalibrationType],
                   help="eye_in_hand: camera on the flange; eye_on_base: camera fixed, board on the flange")
    p.add_argument("--camera-info", help="camera_info YAML (needed when samples carry images)")
    add_board_args(p, required=False)
    default_methods = "TSAI,PARK" if opencv_has_handeye() else "TSAI,PARK,ANDREFF"
    p.add_argument("--methods", default=default_methods,
                   help=f"comma-separated, first one is written; any of {', '.join(HANDEYE_METHODS)} "
                        f"(default {default_methods})")
    p.add_argument("--base-frame", default="fr3_link0", help="robot_base_frame")
    p.add_argument("--effector-frame", default="fr3_hand", help="robot_effector_frame (the pose's frame)")
    p.add_argument("--camera-frame", default="camera_color_optical_frame", help="tracking_base_frame")
    p.add_argument("--marker-frame", default="calibration_board", help="tracking_marker_frame")
    p.add_argument("--max-disagreement-mm", type=float, default=5.0, help="methods must agree within this [mm]")
    p.add_argument("--max-disagreement-deg", type=float, default=1.0, help="methods must agree within this [deg]")
    p.add_argument("--max-residual-mm", type=float, default=10.0, help="refuse above this translation rms [mm]")
    p.add_argument("--max-residual-deg", type=float, default=2.0, help="refuse above this rotation rms [deg]")
    p.add_argument("--force", action="store_true", help="write even when the checks above fail")
    p.add_argument("--output", default="calibration/handeye.yaml", help="hand-eye YAML to write")
    return p


def collect_poses(args: argparse.Namespace, samples_path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    samples = load_samples(samples_path)
    info = load_camera_info(args.camera_info) if args.camera_info else None
    spec = board_from_args(args) if args.board else None
    robot, target = [], []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or "robot_pose" not in s:
            raise ValueError(f"sample {i}: needs 'robot_pose'")
        G = parse_pose(s["robot_pose"], f"sample {i} robot_pose")
        if "target_pose" in s:
            C = parse_pose(s["target_pose"], f"sample {i} target_pose")
        elif "image" in s:
            if info is None or spec is None:
                raise ValueError("samples with images need --camera-info and the board options")
            img_path = (samples_path.parent / s["image"]).resolve()
            img = cv2.imread(str(img_path), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise ValueError(f"sample {i}: cannot read image {img_path}")
            check_image_matches_camera_info(img.shape[1], img.shape[0], info)
            det = detect_board(img, spec, source=str(img_path))
            if det is None:
                print(f"  skipped sample {i} ({img_path.name}): board not found")
                continue
            C = board_pose(det, info)
        else:
            raise ValueError(f"sample {i}: needs 'image' or 'target_pose'")
        robot.append(G)
        target.append(C)
    return robot, target


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]
    try:
        robot, target = collect_poses(args, Path(args.samples))
        results, dt, dr = compare_methods(robot, target, args.type, methods)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = "camera -> effector" if args.type == "eye_in_hand" else "camera -> base"
    print(f"{len(robot)} samples, {args.type}, X = {what}; residual = spread of the board pose that should be constant")
    print(f"{'method':<11}{'backend':<8}{'x [m]':>9}{'y [m]':>9}{'z [m]':>9}{'rms [mm]':>10}{'max [mm]':>10}"
          f"{'rms [deg]':>10}{'max [deg]':>10}")
    for r in results:
        t, e = r.transform[:3, 3], r.residuals
        print(f"{r.method:<11}{r.backend:<8}{t[0]:9.4f}{t[1]:9.4f}{t[2]:9.4f}{e.translation_rms_m * 1e3:10.2f}"
              f"{e.translation_max_m * 1e3:10.2f}{e.rotation_rms_deg:10.3f}{e.rotation_max_deg:10.3f}")
    print(f"largest disagreement between methods: {dt * 1e3:.2f} mm, {dr:.3f} deg")
    best = results[0]
    problems = []
    if dt * 1e3 > args.max_disagreement_mm or dr > args.max_disagreement_deg:
        problems.append(f"methods disagree by {dt * 1e3:.1f} mm / {dr:.2f} deg")
    if (best.residuals.translation_rms_m * 1e3 > args.max_residual_mm
            or best.residuals.rotation_rms_deg > args.max_residual_deg):
        problems.append(f"{best.method} residual {best.residuals.translation_rms_m * 1e3:.1f} mm / "
                        f"{best.residuals.rotation_rms_deg:.2f} deg rms")
    if problems and not args.force:
        print("error: " + "; ".join(problems) + ". Check --type, the pose frames (effector in base), "
              "the board options, and rotate more between samples; --force writes anyway.", file=sys.stderr)
        return 2
    try:
        calib = HandEyeCalibration(args.type, args.base_frame, args.effector_frame, args.camera_frame,
                                   args.marker_frame, best.transform)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_handeye_yaml(args.output, calib)
    print(f"wrote {args.output} ({best.method})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
