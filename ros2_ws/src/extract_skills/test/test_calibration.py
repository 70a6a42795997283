"""Calibration against synthetic data where the answer is known.

Boards are rendered through a known pinhole camera with plumb_bob distortion (per-pixel remap of a
board image), with sensor noise and blur, at varied poses; intrinsics are recovered by the same code
the CLI runs. Hand-eye uses synthetic robot and board poses with noise, for eye_in_hand and eye_on_base,
two methods each, and once end to end from rendered ChArUco images through the CLI.
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import yaml

from extract_skills.calibration import (
    BoardSpec,
    CameraInfo,
    CalibrationType,
    HandEyeCalibration,
    calibrate_intrinsics,
    check_image_matches_camera_info,
    detect_board,
    load_camera_info,
    load_handeye,
    read_camera_info_yaml,
    read_handeye_yaml,
    solve_hand_eye,
    write_camera_info_yaml,
    write_handeye_yaml,
)
from extract_skills.calibration.handeye import (
    compare_methods,
    invert_transform,
    make_transform,
    matrix_from_quaternion,
    quaternion_from_matrix,
    rotation_angle,
)

# Ground truth camera and tolerances (units in comments).
WIDTH, HEIGHT = 640, 480  # px
K_TRUE = np.array([[600.0, 0.0, 322.5], [0.0, 605.0, 238.0], [0.0, 0.0, 1.0]])
D_TRUE = np.array([-0.12, 0.08, 0.0008, -0.0005, 0.0])
FOCAL_RTOL = 0.01  # relative, fx and fy
PRINCIPAL_ATOL = 3.0  # px, cx and cy (0.5% of the width)
K1_ATOL = 0.02  # k1 (unitless)
RMS_MAX = 0.5  # px, reprojection rms on the synthetic images
N_VIEWS = 15
HANDEYE_T_ATOL = 0.005  # m
HANDEYE_R_ATOL = 0.5  # deg
PIXEL_NOISE = 2.0  # grey levels, sigma of sensor noise


def _rot(rx: float, ry: float, rz: float) -> np.ndarray:
    return cv2.Rodrigues(np.array([rx, ry, rz], np.float64))[0]


# ------------------------------------------------------------------ rendering

class Renderer:
    """Renders a planar board image through K_TRUE / D_TRUE at a board->camera pose."""

    def __init__(self) -> None:
        u, v = np.meshgrid(np.arange(WIDTH, dtype=np.float32), np.arange(HEIGHT, dtype=np.float32))
        pix = np.stack([u.ravel(), v.ravel()], axis=1).reshape(-1, 1, 2)
        # For every distorted output pixel: the ideal normalised ray. Pose-independent, computed once.
        und = cv2.undistortPoints(pix, K_TRUE, D_TRUE,
                                  criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10))
        n = und.reshape(-1, 2).astype(np.float64)
        self.rays = np.hstack([n, np.ones((n.shape[0], 1))])  # (HW, 3) homogeneous normalised coords

    def render(self, board_img: np.ndarray, px_to_m: np.ndarray, T_cam_board: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """board_img pixels map to the board plane (metres, z=0) by the 3x3 px_to_m."""
        R, t = T_cam_board[:3, :3], T_cam_board[:3, 3]
        H_norm = np.column_stack([R[:, 0], R[:, 1], t]) @ px_to_m  # board px -> normalised image plane
        src = (np.linalg.inv(H_norm) @ self.rays.T).T
        src = src[:, :2] / src[:, 2:3]
        map_x = src[:, 0].reshape(HEIGHT, WIDTH).astype(np.float32)
        map_y = src[:, 1].reshape(HEIGHT, WIDTH).astype(np.float32)
        img = cv2.remap(board_img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=128)
        img = cv2.GaussianBlur(img, (3, 3), 0.6).astype(np.float32)
        img += rng.normal(0.0, PIXEL_NOISE, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


CHESS = BoardSpec("chessboard", cols=9, rows=6, square_size=0.025)
CHARUCO = BoardSpec("charuco", cols=7, rows=5, square_size=0.04, marker_size=0.03, dictionary="DICT_4X4_50")
PX_PER_SQUARE = 60


def chessboard_image(spec: BoardSpec) -> tuple[np.ndarray, np.ndarray]:
    """Board image with a white margin, and the map from its pixels to metric board coordinates."""
    s, m = PX_PER_SQUARE, PX_PER_SQUARE
    nx, ny = spec.cols + 1, spec.rows + 1  # squares
    img = np.full((ny * s + 2 * m, nx * s + 2 * m), 255, np.uint8)
    for j in range(ny):
        for i in range(nx):
            if (i + j) % 2 == 0:
                img[m + j * s:m + (j + 1) * s, m + i * s:m + (i + 1) * s] = 0
    k = spec.square_size / s  # m per px; inner corner (0, 0) sits at (m + s - 0.5) px (pixel-centre convention)
    o = m + s - 0.5
    px_to_m = np.array([[k, 0, -o * k], [0, k, -o * k], [0, 0, 1.0]])
    return img, px_to_m


def charuco_image(spec: BoardSpec) -> tuple[np.ndarray, np.ndarray]:
    s, m = PX_PER_SQUARE, PX_PER_SQUARE
    # Generated without margin and padded here: OpenCV 5.0's generateImage trips an ROI assertion for some
    # square/marker/pixel ratios (e.g. 7x5, 0.035/0.026 m at 60 px per square).
    img = spec.charuco_board().generateImage((spec.cols * s, spec.rows * s))
    img = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT, value=255)
    k = spec.square_size / s  # board origin (outer corner) at (m - 0.5) px (pixel-centre convention)
    o = m - 0.5
    px_to_m = np.array([[k, 0, -o * k], [0, k, -o * k], [0, 0, 1.0]])
    return img, px_to_m


def board_extent(spec: BoardSpec) -> tuple[float, float]:
    if spec.kind == "chessboard":
        return (spec.cols - 1) * spec.square_size, (spec.rows - 1) * spec.square_size
    return spec.cols * spec.square_size, spec.rows * spec.square_size


def camera_views(spec: BoardSpec, n: int, rng: np.random.Generator, margin: float = 25.0) -> list[np.ndarray]:
    """n board->camera poses with the whole board in view, varied distance and tilts up to ~40 deg."""
    w, h = board_extent(spec)
    outline = np.array([[0, 0, 0], [w, 0, 0], [w, h, 0], [0, h, 0]], np.float64)
    centre = np.array([w / 2, h / 2, 0.0])
    poses: list[np.ndarray] = []
    while len(poses) < n:
        R = _rot(*np.radians(rng.uniform([-40, -40, -30], [40, 40, 30])))
        dist = rng.uniform(0.32, 0.6)
        shift = rng.uniform([-0.08, -0.06], [0.08, 0.06])
        t = np.array([shift[0], shift[1], dist]) - R @ centre
        T = make_transform(R, t)
        pts, _ = cv2.projectPoints(outline, cv2.Rodrigues(R)[0], t, K_TRUE, D_TRUE)
        pts = pts.reshape(-1, 2)
        if (pts[:, 0].min() > margin and pts[:, 0].max() < WIDTH - margin
                and pts[:, 1].min() > margin and pts[:, 1].max() < HEIGHT - margin):
            poses.append(T)
    return poses


def render_views(renderer: Renderer, spec: BoardSpec, poses: list[np.ndarray], rng) -> list[np.ndarray]:
    board, px_to_m = chessboard_image(spec) if spec.kind == "chessboard" else charuco_image(spec)
    return [renderer.render(board, px_to_m, T, rng) for T in poses]


# ------------------------------------------------------------------ intrinsics

@pytest.mark.parametrize("spec", [CHESS, CHARUCO], ids=["chessboard", "charuco"])
def test_intrinsics_recovered_from_rendered_board(renderer, spec):
    rng = np.random.default_rng(7)
    images = render_views(renderer, spec, camera_views(spec, N_VIEWS, rng), rng)
    detections = [d for d in (detect_board(img, spec) for img in images) if d is not None]
    assert len(detections) >= N_VIEWS - 1, f"board found in only {len(detections)} of {N_VIEWS} images"
    res = calibrate_intrinsics(detections, camera_name="synthetic")
    info = res.camera_info
    assert res.rms_reprojection_px < RMS_MAX
    assert info.fx == pytest.approx(K_TRUE[0, 0], rel=FOCAL_RTOL)
    assert info.fy == pytest.approx(K_TRUE[1, 1], rel=FOCAL_RTOL)
    assert info.cx == pytest.approx(K_TRUE[0, 2], abs=PRINCIPAL_ATOL)
    assert info.cy == pytest.approx(K_TRUE[1, 2], abs=PRINCIPAL_ATOL)
    assert info.distortion[0] == pytest.approx(D_TRUE[0], abs=K1_ATOL)
    assert (info.width, info.height) == (WIDTH, HEIGHT)


def test_charuco_legacy_pattern_matters():
    """A board printed with the pre-4.6 layout is not matched by a detector configured for the new one."""
    legacy = BoardSpec("charuco", 6, 6, 0.035, 0.026, legacy_pattern=True)
    modern = BoardSpec("charuco", 6, 6, 0.035, 0.026, legacy_pattern=False)
    img, _ = charuco_image(legacy)
    img = cv2.copyMakeBorder(img, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=255)
    det_legacy = detect_board(img, legacy)
    assert det_legacy is not None and len(det_legacy.image_points) == legacy.max_corners
    det_modern = detect_board(img, modern)
    assert det_modern is None or len(det_modern.image_points) < legacy.max_corners // 2


def test_board_spec_validation():
    with pytest.raises(ValueError, match="millimetres"):
        BoardSpec("chessboard", 9, 6, 25.0)
    with pytest.raises(ValueError, match="marker_size"):
        BoardSpec("charuco", 7, 5, 0.035)
    with pytest.raises(ValueError, match="unknown aruco dictionary"):
        BoardSpec("charuco", 7, 5, 0.035, 0.02, dictionary="DICT_NOPE")


# ------------------------------------------------------------------ camera_info YAML

def _info() -> CameraInfo:
    P = np.hstack([K_TRUE, np.zeros((3, 1))])
    return CameraInfo(WIDTH, HEIGHT, "wrist_camera", K_TRUE, D_TRUE, np.eye(3), P)


def test_camera_info_yaml_round_trip_and_ros_layout(tmp_path):
    path = tmp_path / "camera_info.yaml"
    write_camera_info_yaml(path, _info())
    raw = yaml.safe_load(path.read_text())
    assert list(raw) == ["image_width", "image_height", "camera_name", "camera_matrix", "distortion_model",
                         "distortion_coefficients", "rectification_matrix", "projection_matrix"]
    assert raw["camera_matrix"]["rows"] == 3 and raw["camera_matrix"]["cols"] == 3
    assert raw["distortion_coefficients"] == {"rows": 1, "cols": 5, "data": D_TRUE.tolist()}
    assert raw["projection_matrix"]["cols"] == 4
    assert raw["distortion_model"] == "plumb_bob"
    assert "data: [" in path.read_text()  # flow-style lists, as camera_calibration_parsers writes
    back = read_camera_info_yaml(path)
    np.testing.assert_array_equal(back.camera_matrix, K_TRUE)
    np.testing.assert_array_equal(back.distortion, D_TRUE)
    assert back.camera_name == "wrist_camera"
    assert load_camera_info(path).width == WIDTH


def test_load_camera_info_rejects_bad_files(tmp_path):
    good = _info().to_dict()
    cases = {
        "missing": {k: v for k, v in good.items() if k != "camera_matrix"},
        "short": {**good, "distortion_coefficients": {"rows": 1, "cols": 4, "data": [0.0] * 4}},
        "shape": {**good, "camera_matrix": {"rows": 3, "cols": 3, "data": [1.0] * 8}},
        "model": {**good, "distortion_model": "fisheye9"},
    }
    for name, data in cases.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(data))
        with pytest.raises(ValueError, match=name + ".yaml"):
            load_camera_info(p)
    with pytest.raises(FileNotFoundError, match="README"):
        load_camera_info(tmp_path / "absent.yaml")


def test_image_size_mismatch_is_a_clear_error():
    info = _info()
    check_image_matches_camera_info(WIDTH, HEIGHT, info)
    with pytest.raises(ValueError) as e:
        check_image_matches_camera_info(1280, 720, info)
    assert "1280x720" in str(e.value) and "640x480" in str(e.value)


# ------------------------------------------------------------------ hand-eye

X_EYE_IN_HAND = make_transform(_rot(0.05, -0.08, math.pi / 2), [0.05, -0.03, 0.06])  # camera -> flange
X_EYE_ON_BASE = make_transform(_rot(math.pi - 0.5, 0.1, math.pi / 2) , [1.1, 0.05, 0.7])  # camera -> base


def _noisy(T: np.ndarray, rng, rot_deg: float, trans_m: float) -> np.ndarray:
    dR = _rot(*rng.normal(0, math.radians(rot_deg), 3))
    return make_transform(dR @ T[:3, :3], T[:3, 3] + rng.normal(0, trans_m, 3))


def synthetic_handeye(ctype: CalibrationType, n: int, rng, spec: BoardSpec = CHARUCO,
                      robot_noise=(0.02, 0.0002), camera_noise=(0.1, 0.0008)):
    """Known X; camera views of the board first (so the board is in view), robot poses derived from them.

    Returns true target->camera poses, noisy robot poses, noisy target poses. Noise: (deg, m) sigma.
    """
    views = camera_views(spec, n, rng)  # target -> camera
    if ctype is CalibrationType.EYE_IN_HAND:
        X = X_EYE_IN_HAND
        T_base_board = make_transform(_rot(0.0, 0.0, 0.3), [0.55, -0.1, 0.02])
        robot = [T_base_board @ invert_transform(C) @ invert_transform(X) for C in views]  # G = B C^-1 X^-1
    else:
        X = X_EYE_ON_BASE
        T_flange_board = make_transform(_rot(math.pi, 0.0, 0.0), [0.0, 0.0, 0.12])
        robot = [X @ C @ invert_transform(T_flange_board) for C in views]  # G = X C T_fb^-1
    robot_n = [_noisy(G, rng, *robot_noise) for G in robot]
    views_n = [_noisy(C, rng, *camera_noise) for C in views]
    return views, robot_n, views_n


def _errors(T: np.ndarray, X: np.ndarray) -> tuple[float, float]:
    return (float(np.linalg.norm(T[:3, 3] - X[:3, 3])),
            math.degrees(rotation_angle(T[:3, :3].T @ X[:3, :3])))


@pytest.mark.parametrize("ctype", list(CalibrationType), ids=lambda c: c.value)
def test_handeye_recovers_known_transform_two_methods(ctype):
    rng = np.random.default_rng(11)
    _, robot, targets = synthetic_handeye(ctype, 20, rng)
    X = X_EYE_IN_HAND if ctype is CalibrationType.EYE_IN_HAND else X_EYE_ON_BASE
    results, dt, dr = compare_methods(robot, targets, ctype, methods=("TSAI", "PARK", "ANDREFF"))
    for r in results:
        e_t, e_r = _errors(r.transform, X)
        assert e_t < HANDEYE_T_ATOL, f"{r.method}: translation error {e_t * 1e3:.2f} mm"
        assert e_r < HANDEYE_R_ATOL, f"{r.method}: rotation error {e_r:.3f} deg"
        assert r.residuals.translation_rms_m < 0.005 and r.residuals.rotation_rms_deg < 0.5
    assert dt < HANDEYE_T_ATOL and dr < HANDEYE_R_ATOL


def test_handeye_exact_without_noise():
    rng = np.random.default_rng(3)
    for ctype, X in ((CalibrationType.EYE_IN_HAND, X_EYE_IN_HAND), (CalibrationType.EYE_ON_BASE, X_EYE_ON_BASE)):
        _, robot, targets = synthetic_handeye(ctype, 8, rng, robot_noise=(0, 0), camera_noise=(0, 0))
        for method in ("TSAI", "PARK", "ANDREFF"):
            r = solve_hand_eye(robot, targets, ctype, method)
            e_t, e_r = _errors(r.transform, X)
            assert e_t < 1e-6 and e_r < 1e-5, (ctype, method, e_t, e_r)
            assert r.residuals.translation_max_m < 1e-6


def test_handeye_wrong_type_gives_large_residuals():
    """Data from an eye_on_base set-up solved as eye_in_hand must not look like a good calibration."""
    rng = np.random.default_rng(5)
    _, robot, targets = synthetic_handeye(CalibrationType.EYE_ON_BASE, 15, rng)
    wrong = solve_hand_eye(robot, targets, "eye_in_hand", "PARK")
    assert wrong.residuals.translation_rms_m > 0.02


def test_handeye_input_checks():
    rng = np.random.default_rng(1)
    _, robot, targets = synthetic_handeye(CalibrationType.EYE_IN_HAND, 5, rng)
    with pytest.raises(ValueError, match="at least 3"):
        solve_hand_eye(robot[:2], targets[:2], "eye_in_hand")
    with pytest.raises(ValueError, match="robot poses but"):
        solve_hand_eye(robot, targets[:4], "eye_in_hand")
    with pytest.raises(ValueError, match="calibration_type"):
        solve_hand_eye(robot, targets, "eye_to_hand")
    with pytest.raises(ValueError, match="valid"):
        solve_hand_eye(robot, targets, "eye_in_hand", "NOPE")
    same = [robot[0]] * 5
    with pytest.raises(ValueError, match="orientations differ"):
        solve_hand_eye(same, targets, "eye_in_hand")
    bad = [t.copy() for t in targets]
    bad[2][0, 0] = np.nan
    with pytest.raises(ValueError, match="target pose 2"):
        solve_hand_eye(robot, bad, "eye_in_hand")


def test_quaternion_round_trip():
    rng = np.random.default_rng(2)
    for _ in range(200):
        R = _rot(*rng.normal(0, 2.0, 3))
        q = quaternion_from_matrix(R)
        assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(matrix_from_quaternion(q), R, atol=1e-12)
    np.testing.assert_allclose(quaternion_from_matrix(np.diag([1.0, -1.0, -1.0])), [1, 0, 0, 0], atol=1e-12)


def test_handeye_yaml_round_trip(tmp_path):
    calib = HandEyeCalibration("eye_in_hand", "fr3_link0", "fr3_hand", "camera_color_optical_frame",
                               "charuco_board", X_EYE_IN_HAND)
    path = tmp_path / "handeye.yaml"
    write_handeye_yaml(path, calib)
    raw = yaml.safe_load(path.read_text())
    assert raw["parameters"]["calibration_type"] == "eye_in_hand"
    assert set(raw["transform"]["translation"]) == {"x", "y", "z"}
    assert list(raw["transform"]["rotation"]) == ["x", "y", "z", "w"]
    back = read_handeye_yaml(path)
    np.testing.assert_allclose(back.transform, X_EYE_IN_HAND, atol=1e-12)
    assert back.parent_frame == "fr3_hand" and back.tracking_base_frame == "camera_color_optical_frame"
    assert load_handeye(path).calibration_type is CalibrationType.EYE_IN_HAND
    raw["parameters"]["calibration_type"] = "eye_to_hand"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="calibration_type"):
        load_handeye(path)
    raw["parameters"]["calibration_type"] = "eye_on_base"
    raw["transform"]["rotation"] = {"x": 0.0, "y": 0.0, "z": 0.0, "w": 2.0}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="unit norm"):
        load_handeye(path)


# ------------------------------------------------------------------ CLIs end to end

def test_cli_intrinsics_then_handeye_from_images(renderer, tmp_path):
    """Render ChArUco views for an eye_in_hand set-up; run both CLIs; compare with the truth."""
    from extract_skills.cli import calibrate_handeye, calibrate_intrinsics as cli_intr

    rng = np.random.default_rng(21)
    views, robot, _ = synthetic_handeye(CalibrationType.EYE_IN_HAND, 16, rng)
    images = render_views(renderer, CHARUCO, views, rng)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    samples = []
    for i, (img, G) in enumerate(zip(images, robot)):
        name = f"sample_{i:02d}.png"
        cv2.imwrite(str(img_dir / name), img)
        q = quaternion_from_matrix(G[:3, :3])
        samples.append({"image": name, "robot_pose": {"translation": G[:3, 3].tolist(), "rotation": q.tolist()}})
    (img_dir / "samples.json").write_text(json.dumps({"samples": samples}))
    board_args = ["--board", "charuco", "--size", "7x5", "--square", "0.04", "--marker", "0.03",
                  "--dictionary", "DICT_4X4_50"]
    info_path = tmp_path / "calibration" / "camera_info.yaml"
    assert cli_intr.main([str(img_dir), *board_args, "--camera-name", "wrist", "--output", str(info_path)]) == 0
    info = load_camera_info(info_path)
    assert info.fx == pytest.approx(K_TRUE[0, 0], rel=FOCAL_RTOL)

    he_path = tmp_path / "calibration" / "handeye.yaml"
    rc = calibrate_handeye.main([str(img_dir / "samples.json"), "--type", "eye_in_hand", "--camera-info",
                                 str(info_path), *board_args, "--methods", "TSAI,PARK",
                                 "--base-frame", "fr3_link0", "--effector-frame", "fr3_hand",
                                 "--camera-frame", "wrist_optical_frame", "--output", str(he_path)])
    assert rc == 0
    calib = load_handeye(he_path)
    e_t, e_r = _errors(calib.transform, X_EYE_IN_HAND)
    assert e_t < HANDEYE_T_ATOL and e_r < HANDEYE_R_ATOL, (e_t, e_r)
    assert calib.robot_effector_frame == "fr3_hand"


def test_cli_handeye_precomputed_poses_eye_on_base(tmp_path):
    from extract_skills.cli import calibrate_handeye

    rng = np.random.default_rng(9)
    _, robot, targets = synthetic_handeye(CalibrationType.EYE_ON_BASE, 15, rng)
    samples = [{"robot_pose": {"matrix": G.tolist()},
                "target_pose": {"translation": C[:3, 3].tolist(), "rotation": quaternion_from_matrix(C[:3, :3]).tolist()}}
               for G, C in zip(robot, targets)]
    path = tmp_path / "samples.yaml"
    path.write_text(yaml.safe_dump({"samples": samples}))
    out = tmp_path / "handeye.yaml"
    assert calibrate_handeye.main([str(path), "--type", "eye_on_base", "--output", str(out)]) == 0
    calib = load_handeye(out)
    e_t, e_r = _errors(calib.transform, X_EYE_ON_BASE)
    assert e_t < HANDEYE_T_ATOL and e_r < HANDEYE_R_ATOL
    assert calib.calibration_type is CalibrationType.EYE_ON_BASE
    # Methods that disagree past the threshold make the CLI refuse to write (exit code 2).
    bad = tmp_path / "bad.yaml"
    samples[3]["target_pose"]["translation"] = [0.0, 0.0, 5.0]
    bad.write_text(yaml.safe_dump({"samples": samples}))
    assert calibrate_handeye.main([str(bad), "--type", "eye_on_base", "--output", str(tmp_path / "x.yaml")]) == 2
    assert not (tmp_path / "x.yaml").exists()


def test_example_files_load():
    root = __import__("pathlib").Path(__file__).resolve().parents[4] / "calibration"
    info = load_camera_info(root / "camera_info.example.yaml")
    assert info.distortion_model == "plumb_bob" and (info.width, info.height) == (640, 480)
    assert load_handeye(root / "handeye.example.yaml").calibration_type is CalibrationType.EYE_IN_HAND
