"""Camera intrinsics: detect a calibration board, run ``cv2.calibrateCamera``, read/write camera_info YAML.

The YAML layout is the one ROS ``camera_calibration`` / ``camera_calibration_parsers`` write, so the
file can be handed to any ROS camera driver (``camera_info_url``) unchanged::

    image_width: 640
    image_height: 480
    camera_name: wrist_camera
    camera_matrix: {rows: 3, cols: 3, data: [fx, 0, cx, 0, fy, cy, 0, 0, 1]}
    distortion_model: plumb_bob
    distortion_coefficients: {rows: 1, cols: 5, data: [k1, k2, p1, p2, k3]}
    rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    projection_matrix: {rows: 3, cols: 4, data: [fx', 0, cx', 0, 0, fy', cy', 0, 0, 0, 1, 0]}

Like ``camera_calibration`` for a monocular camera, the projection matrix is
``getOptimalNewCameraMatrix(K, D, size, alpha=0)`` padded with a zero column.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np
import yaml

log = logging.getLogger(__name__)

BoardKind = Literal["chessboard", "charuco"]
DISTORTION_MODELS = ("plumb_bob", "rational_polynomial")


@dataclass(frozen=True)
class BoardSpec:
    """A planar calibration target.

    kind: ``chessboard`` or ``charuco``.
    cols, rows: chessboard: *inner corners* along x and y (the ROS ``camera_calibration --size``
        convention, e.g. 8x6); charuco: *squares* along x and y (the ``CharucoBoard`` convention).
    square_size: edge of one square [m].
    marker_size: ArUco marker edge [m] (charuco only).
    dictionary: ``cv2.aruco`` predefined dictionary name (charuco only), e.g. ``DICT_4X4_50``.
    legacy_pattern: charuco boards made with OpenCV < 4.6.0 (and some printed calib.io boards with an
        even number of rows) start with a marker in the other corner; set this for them, otherwise
        few or no corners are found.
    """

    kind: BoardKind
    cols: int
    rows: int
    square_size: float
    marker_size: float | None = None
    dictionary: str = "DICT_4X4_50"
    legacy_pattern: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("chessboard", "charuco"):
            raise ValueError(f"board kind must be 'chessboard' or 'charuco', got {self.kind!r}")
        if self.cols < 2 or self.rows < 2:
            raise ValueError(f"board needs at least 2x2 corners/squares, got {self.cols}x{self.rows}")
        if not (math.isfinite(self.square_size) and self.square_size > 0):
            raise ValueError(f"square_size must be > 0 m, got {self.square_size}")
        if self.square_size > 1.0:
            raise ValueError(f"square_size is in metres; {self.square_size} m looks like millimetres")
        if self.kind == "charuco":
            if self.cols < 3 or self.rows < 3:
                raise ValueError(f"a charuco board needs at least 3x3 squares, got {self.cols}x{self.rows}")
            if self.marker_size is None or not (0 < self.marker_size < self.square_size):
                raise ValueError(
                    f"charuco marker_size must be in (0, square_size={self.square_size}) m, got {self.marker_size}")
            if not hasattr(cv2.aruco, self.dictionary) or not self.dictionary.startswith("DICT_"):
                valid = sorted(n for n in dir(cv2.aruco) if n.startswith("DICT_"))
                raise ValueError(f"unknown aruco dictionary {self.dictionary!r}; valid: {', '.join(valid)}")

    def chessboard_object_points(self) -> np.ndarray:
        """Inner-corner positions (cols*rows, 3) float32 [m] in OpenCV's detection order (x fastest)."""
        if self.kind != "chessboard":
            raise ValueError("chessboard_object_points() is for chessboards only")
        grid = np.mgrid[0:self.cols, 0:self.rows].T.reshape(-1, 2)
        pts = np.zeros((self.cols * self.rows, 3), np.float32)
        pts[:, :2] = grid * self.square_size
        return pts

    def charuco_board(self) -> "cv2.aruco.CharucoBoard":
        if self.kind != "charuco":
            raise ValueError("charuco_board() is for charuco boards only")
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        board = cv2.aruco.CharucoBoard((self.cols, self.rows), self.square_size, self.marker_size, dictionary)
        board.setLegacyPattern(self.legacy_pattern)
        return board

    @property
    def max_corners(self) -> int:
        return self.cols * self.rows if self.kind == "chessboard" else (self.cols - 1) * (self.rows - 1)


@dataclass(frozen=True)
class BoardDetection:
    """Matched board corners in one image: object points (N, 3) [m] and image points (N, 2) [px]."""

    object_points: np.ndarray
    image_points: np.ndarray
    image_size: tuple[int, int]  # (width, height) px
    source: str = ""


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a grey or BGR(A) image, got shape {image.shape}")


class _CharucoCache:
    """CharucoDetector construction is not free; keep one per board spec."""

    _detectors: dict[BoardSpec, tuple[object, object]] = {}

    @classmethod
    def get(cls, spec: BoardSpec):
        if spec not in cls._detectors:
            board = spec.charuco_board()
            cls._detectors[spec] = (board, cv2.aruco.CharucoDetector(board))
        return cls._detectors[spec]


def detect_board(image: np.ndarray, spec: BoardSpec, min_corners: int = 6, source: str = "") -> BoardDetection | None:
    """Find the board in ``image`` (grey or BGR); return matched points, or ``None`` if not usable.

    Chessboards must be fully visible (OpenCV needs every inner corner); ChArUco boards may be partly
    occluded, and at least ``min_corners`` interpolated corners are required.
    """
    gray = _to_gray(image)
    h, w = gray.shape[:2]
    if spec.kind == "chessboard":
        size = (spec.cols, spec.rows)
        found, corners = cv2.findChessboardCornersSB(gray, size, flags=cv2.CALIB_CB_NORMALIZE_IMAGE)
        if not found:
            flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
            found, corners = cv2.findChessboardCorners(gray, size, flags=flags)
            if not found:
                return None
            criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)
            corners = cv2.cornerSubPix(gray, corners, (5, 5), (-1, -1), criteria)
        img_pts = np.asarray(corners, np.float32).reshape(-1, 2)
        obj_pts = spec.chessboard_object_points()
    else:
        board, detector = _CharucoCache.get(spec)
        ch_corners, ch_ids, _, _ = detector.detectBoard(gray)
        if ch_ids is None or ch_corners is None or len(ch_ids) < max(min_corners, 4):
            return None
        obj, img = board.matchImagePoints(ch_corners, ch_ids)
        obj_pts = np.asarray(obj, np.float32).reshape(-1, 3)
        img_pts = np.asarray(img, np.float32).reshape(-1, 2)
        # Collinear corners (a single row) give a degenerate homography.
        if board.checkCharucoCornersCollinear(np.asarray(ch_ids)):
            return None
    if len(img_pts) < min_corners:
        return None
    return BoardDetection(obj_pts, img_pts, (w, h), source)


@dataclass(frozen=True)
class CameraInfo:
    """Pinhole camera model, as in ``sensor_msgs/CameraInfo`` and the ROS calibration YAML.

    camera_matrix K (3, 3) [px]; distortion D (5,) for plumb_bob (k1, k2, p1, p2, k3) or (8,) for
    rational_polynomial; rectification R (3, 3) (identity for a monocular camera); projection P (3, 4) [px].
    """

    width: int
    height: int
    camera_name: str
    camera_matrix: np.ndarray
    distortion: np.ndarray
    rectification: np.ndarray = field(default_factory=lambda: np.eye(3))
    projection: np.ndarray | None = None
    distortion_model: str = "plumb_bob"

    def __post_init__(self) -> None:
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera_info image size must be positive, got {self.width}x{self.height}")
        K = np.asarray(self.camera_matrix, np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise ValueError(f"camera_matrix must be a finite 3x3 matrix, got shape {K.shape}")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1.0 or K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0:
            raise ValueError(f"camera_matrix is not a pinhole matrix [fx s cx; 0 fy cy; 0 0 1]: {K.tolist()}")
        if self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(f"distortion_model must be one of {DISTORTION_MODELS}, got {self.distortion_model!r}")
        D = np.asarray(self.distortion, np.float64).reshape(-1)
        want = 5 if self.distortion_model == "plumb_bob" else 8
        if D.size != want or not np.all(np.isfinite(D)):
            raise ValueError(f"{self.distortion_model} needs {want} finite distortion coefficients, got {D.size}")
        R = np.asarray(self.rectification, np.float64)
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-5):
            raise ValueError("rectification_matrix must be a 3x3 rotation")
        P = np.hstack([K, np.zeros((3, 1))]) if self.projection is None else np.asarray(self.projection, np.float64)
        if P.shape != (3, 4) or not np.all(np.isfinite(P)):
            raise ValueError(f"projection_matrix must be a finite 3x4 matrix, got shape {P.shape}")
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "camera_matrix", K)
        object.__setattr__(self, "distortion", D)
        object.__setattr__(self, "rectification", R)
        object.__setattr__(self, "projection", P)

    @property
    def fx(self) -> float:
        return float(self.camera_matrix[0, 0])

    @property
    def fy(self) -> float:
        return float(self.camera_matrix[1, 1])

    @property
    def cx(self) -> float:
        return float(self.camera_matrix[0, 2])

    @property
    def cy(self) -> float:
        return float(self.camera_matrix[1, 2])

    def to_dict(self) -> dict:
        def mat(a: np.ndarray) -> dict:
            a = np.atleast_2d(a)
            return {"rows": int(a.shape[0]), "cols": int(a.shape[1]), "data": [float(v) for v in a.reshape(-1)]}

        return {
            "image_width": self.width,
            "image_height": self.height,
            "camera_name": self.camera_name,
            "camera_matrix": mat(self.camera_matrix),
            "distortion_model": self.distortion_model,
            "distortion_coefficients": mat(self.distortion.reshape(1, -1)),
            "rectification_matrix": mat(self.rectification),
            "projection_matrix": mat(self.projection),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CameraInfo":
        if not isinstance(d, dict):
            raise ValueError(f"camera_info must be a mapping, got {type(d).__name__}")
        required = ("image_width", "image_height", "camera_matrix", "distortion_model", "distortion_coefficients")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"camera_info is missing fields: {', '.join(missing)}")

        def mat(key: str, shape: tuple[int, int] | None) -> np.ndarray:
            m = d[key]
            if not isinstance(m, dict) or not {"rows", "cols", "data"} <= set(m):
                raise ValueError(f"camera_info field {key!r} must have rows, cols and data")
            rows, cols, data = int(m["rows"]), int(m["cols"]), list(m["data"])
            if len(data) != rows * cols:
                raise ValueError(f"camera_info field {key!r}: {rows}x{cols} needs {rows * cols} values, got {len(data)}")
            if shape is not None and (rows, cols) != shape:
                raise ValueError(f"camera_info field {key!r} must be {shape[0]}x{shape[1]}, got {rows}x{cols}")
            return np.asarray(data, np.float64).reshape(rows, cols)

        return cls(
            width=int(d["image_width"]),
            height=int(d["image_height"]),
            camera_name=str(d.get("camera_name", "camera")),
            camera_matrix=mat("camera_matrix", (3, 3)),
            distortion=mat("distortion_coefficients", None).reshape(-1),
            rectification=mat("rectification_matrix", (3, 3)) if "rectification_matrix" in d else np.eye(3),
            projection=mat("projection_matrix", (3, 4)) if "projection_matrix" in d else None,
            distortion_model=str(d["distortion_model"]),
        )


@dataclass(frozen=True)
class IntrinsicsResult:
    """What ``calibrate_intrinsics`` found, with quality figures to report."""

    camera_info: CameraInfo
    rms_reprojection_px: float
    per_view_rms_px: np.ndarray
    std_intrinsics: np.ndarray  # (fx, fy, cx, cy) one-sigma [px]
    n_views: int


def calibrate_intrinsics(
    detections: Sequence[BoardDetection],
    camera_name: str = "camera",
    distortion_model: str = "plumb_bob",
    alpha: float = 0.0,
    min_views: int = 5,
) -> IntrinsicsResult:
    """Run ``cv2.calibrateCamera`` on detections from images of one size.

    alpha: free scaling for the projection matrix (0 = only valid pixels, as ``camera_calibration``).
    """
    if len(detections) < min_views:
        raise ValueError(f"need at least {min_views} images with the board, got {len(detections)}")
    sizes = {d.image_size for d in detections}
    if len(sizes) != 1:
        raise ValueError(f"all calibration images must have one size, got {sorted(sizes)}")
    (w, h), = sizes
    obj = [d.object_points.astype(np.float32).reshape(-1, 1, 3) for d in detections]
    img = [d.image_points.astype(np.float32).reshape(-1, 1, 2) for d in detections]
    flags = cv2.CALIB_RATIONAL_MODEL if distortion_model == "rational_polynomial" else 0
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-9)
    rms, K, D, _, _, std_in, _, per_view = cv2.calibrateCameraExtended(
        obj, img, (w, h), None, None, flags=flags, criteria=criteria)
    n_coeffs = 5 if distortion_model == "plumb_bob" else 8
    D = np.asarray(D, np.float64).reshape(-1)[:n_coeffs]
    P3, _ = cv2.getOptimalNewCameraMatrix(K, D, (w, h), alpha)
    P = np.hstack([np.asarray(P3, np.float64), np.zeros((3, 1))])
    info = CameraInfo(w, h, camera_name, np.asarray(K, np.float64), D, np.eye(3), P, distortion_model)
    log.info("calibrated %s from %d views: rms %.3f px, fx %.2f fy %.2f cx %.2f cy %.2f",
             camera_name, len(detections), rms, info.fx, info.fy, info.cx, info.cy)
    return IntrinsicsResult(info, float(rms), np.asarray(per_view).reshape(-1),
                            np.asarray(std_in).reshape(-1)[:4], len(detections))


def board_pose(detection: BoardDetection, info: CameraInfo) -> np.ndarray:
    """Board (target) -> camera transform (4, 4) by ``solvePnP`` with the calibrated intrinsics."""
    ok, rvec, tvec = cv2.solvePnP(detection.object_points.astype(np.float64),
                                  detection.image_points.astype(np.float64),
                                  info.camera_matrix, info.distortion, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise ValueError(f"solvePnP failed for {detection.source or 'a detection'}")
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = np.asarray(tvec).reshape(3)
    return T


def write_camera_info_yaml(path: str | Path, info: CameraInfo) -> None:
    """Write the ROS camera_info YAML (matrix data in flow style, like ``camera_calibration_parsers``)."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

    _Dumper.add_representer(list, _list)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.dump(info.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False))
    tmp.replace(path)


def read_camera_info_yaml(path: str | Path) -> CameraInfo:
    with open(path) as f:
        data = yaml.safe_load(f)
    return CameraInfo.from_dict(data)
