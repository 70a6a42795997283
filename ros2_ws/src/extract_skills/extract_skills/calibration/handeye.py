"""Hand-eye calibration (AX = XB) and the easy_handeye2-style YAML.

Inputs per sample i (the convention of OpenCV's ``calibrateHandEye``):
- ``robot_poses[i]``: gripper -> base, i.e. the pose of the effector frame in the robot base frame
  (what ``tf2`` returns for ``lookup_transform(base, effector)``), 4x4;
- ``target_poses[i]``: target -> camera, the board pose in the camera frame (``solvePnP``), 4x4.

Output ``X``:
- ``eye_in_hand`` (camera on the flange): camera -> gripper, the camera pose in the effector frame.
  The board is fixed in the world, so ``G_i X C_i`` (board in base) is the same for every sample.
- ``eye_on_base`` (camera fixed, board on the flange): camera -> base, the camera pose in the base
  frame. Here ``inv(G_i) X C_i`` (board in effector) is constant, so the same solver runs on the
  inverted robot poses.

``X`` is what easy_handeye2 stores under ``transform`` and publishes as TF from robot_effector_frame
(eye_in_hand) or robot_base_frame (eye_on_base) to tracking_base_frame (the camera frame).

Solvers: OpenCV's ``calibrateHandEye`` when this OpenCV build exposes it (all five methods). OpenCV 5.0's
Python wheels do not, so TSAI, PARK and ANDREFF are also implemented here in numpy from the papers:
Tsai & Lenz 1989 (IEEE T-RA 5(3)), Park & Martin 1994 (IEEE T-RA 10(5)), Andreff et al. 2001
(IJRR 20(3), rotation by the Kronecker null space). Two methods that agree are the sanity check;
the residuals say how well the chosen one explains the data.
"""
from __future__ import annotations

import enum
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml

log = logging.getLogger(__name__)

HANDEYE_METHODS = ("TSAI", "PARK", "HORAUD", "ANDREFF", "DANIILIDIS")
NUMPY_METHODS = ("TSAI", "PARK", "ANDREFF")
MIN_SAMPLES = 3
MIN_ROTATION_SPREAD_DEG = 5.0  # the largest relative rotation between samples must exceed this [deg]


class CalibrationType(str, enum.Enum):
    EYE_IN_HAND = "eye_in_hand"
    EYE_ON_BASE = "eye_on_base"

    @classmethod
    def parse(cls, value: "str | CalibrationType") -> "CalibrationType":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"calibration_type must be one of {[c.value for c in cls]}, got {value!r}") from None


# --------------------------------------------------------------------------- rotations

def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def rotation_angle(R: np.ndarray) -> float:
    """Angle of a rotation matrix [rad]."""
    return float(math.acos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)))


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """Closest rotation matrix (Frobenius) to M."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) with w >= 0 from a rotation matrix."""
    R = np.asarray(R, np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix from a quaternion (x, y, z, w); the quaternion must be (close to) unit length."""
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not math.isfinite(n) or abs(n - 1.0) > 1e-3:
        raise ValueError(f"quaternion (x, y, z, w) must have unit norm, got norm {n:.6f}")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def make_transform(R: np.ndarray, t: Sequence[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, np.float64).reshape(3)
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    R, t = T[:3, :3], T[:3, 3]
    return make_transform(R.T, -R.T @ t)


def check_transform(T: np.ndarray, what: str) -> np.ndarray:
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"{what} must be a finite 4x4 transform, got shape {T.shape}")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
        raise ValueError(f"{what} does not hold a rotation matrix")
    if not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError(f"{what} last row must be [0, 0, 0, 1]")
    return T


# --------------------------------------------------------------------------- AX = XB solvers

def _motions(G: Sequence[np.ndarray], C: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """All pairwise motions A = inv(G_j) G_i and B = C_j inv(C_i), so that A X = X B."""
    A, B = [], []
    for i, j in itertools.combinations(range(len(G)), 2):
        A.append(invert_transform(G[j]) @ G[i])
        B.append(C[j] @ invert_transform(C[i]))
    return A, B


def _solve_translation(A: list[np.ndarray], B: list[np.ndarray], Rx: np.ndarray) -> np.ndarray:
    # (R_A - I) t_X = R_X t_B - t_A, stacked least squares.
    M = np.vstack([a[:3, :3] - np.eye(3) for a in A])
    rhs = np.concatenate([Rx @ b[:3, 3] - a[:3, 3] for a, b in zip(A, B)])
    return np.linalg.lstsq(M, rhs, rcond=None)[0]


def _rotation_tsai(A: list[np.ndarray], B: list[np.ndarray]) -> np.ndarray:
    def mrp(R: np.ndarray) -> np.ndarray:  # modified Rodrigues vector 2 sin(theta/2) * axis
        rvec = cv2.Rodrigues(R)[0].reshape(3)
        theta = np.linalg.norm(rvec)
        return np.zeros(3) if theta < 1e-12 else 2.0 * math.sin(theta / 2.0) * rvec / theta

    lhs, rhs = [], []
    for a, b in zip(A, B):
        pa, pb = mrp(a[:3, :3]), mrp(b[:3, :3])
        lhs.append(skew(pa + pb))
        rhs.append(pb - pa)
    p_prime = np.linalg.lstsq(np.vstack(lhs), np.concatenate(rhs), rcond=None)[0]
    p = 2.0 * p_prime / math.sqrt(1.0 + p_prime @ p_prime)
    n2 = p @ p
    R = (1.0 - n2 / 2.0) * np.eye(3) + 0.5 * (np.outer(p, p) + math.sqrt(max(4.0 - n2, 0.0)) * skew(p))
    return project_to_rotation(R)


def _rotation_park(A: list[np.ndarray], B: list[np.ndarray]) -> np.ndarray:
    # R_X beta_i = alpha_i with alpha, beta the rotation vectors; R_X = (M^T M)^(-1/2) M^T, M = sum beta alpha^T.
    M = np.zeros((3, 3))
    for a, b in zip(A, B):
        alpha = cv2.Rodrigues(a[:3, :3])[0].reshape(3)
        beta = cv2.Rodrigues(b[:3, :3])[0].reshape(3)
        M += np.outer(beta, alpha)
    U, _, Vt = np.linalg.svd(M)  # (M^T M)^(-1/2) M^T = V U^T, with a det fix
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
    return Vt.T @ D @ U.T


def _rotation_andreff(A: list[np.ndarray], B: list[np.ndarray]) -> np.ndarray:
    # R_A R_X R_B^T = R_X  <=>  (I9 - R_A kron R_B) vec(R_X) = 0 (row-major vec); null space by SVD.
    K = np.vstack([np.eye(9) - np.kron(a[:3, :3], b[:3, :3]) for a, b in zip(A, B)])
    v = np.linalg.svd(K)[2][-1]
    R = v.reshape(3, 3)
    R = R * np.sign(np.linalg.det(R)) / abs(np.linalg.det(R)) ** (1.0 / 3.0)
    return project_to_rotation(R)


_NUMPY_ROTATION = {"TSAI": _rotation_tsai, "PARK": _rotation_park, "ANDREFF": _rotation_andreff}


def opencv_has_handeye() -> bool:
    return hasattr(cv2, "calibrateHandEye")


def _solve_opencv(G: Sequence[np.ndarray], C: Sequence[np.ndarray], method: str) -> np.ndarray:
    R, t = cv2.calibrateHandEye(
        [g[:3, :3] for g in G], [g[:3, 3].reshape(3, 1) for g in G],
        [c[:3, :3] for c in C], [c[:3, 3].reshape(3, 1) for c in C],
        method=getattr(cv2, f"CALIB_HAND_EYE_{method}"))
    return make_transform(np.asarray(R), np.asarray(t).reshape(3))


def _solve_numpy(G: Sequence[np.ndarray], C: Sequence[np.ndarray], method: str) -> np.ndarray:
    A, B = _motions(G, C)
    Rx = _NUMPY_ROTATION[method](A, B)
    return make_transform(Rx, _solve_translation(A, B, Rx))


@dataclass(frozen=True)
class HandEyeResiduals:
    """Spread of the transform that should be constant (board in base, or board in effector).

    Per sample the constant transform is recomputed from the solution; these figures say how far the
    samples are from agreeing. Millimetre-level translation and sub-degree rotation is a good calibration.
    """

    translation_rms_m: float
    translation_max_m: float
    rotation_rms_deg: float
    rotation_max_deg: float
    n_samples: int


@dataclass(frozen=True)
class HandEyeResult:
    transform: np.ndarray  # X (4, 4): camera -> gripper (eye_in_hand) or camera -> base (eye_on_base)
    method: str
    backend: str  # "opencv" or "numpy"
    calibration_type: CalibrationType
    residuals: HandEyeResiduals
    constant_transform: np.ndarray  # the mean board pose in base (eye_in_hand) / in effector (eye_on_base)


def _residuals(G: Sequence[np.ndarray], C: Sequence[np.ndarray], X: np.ndarray) -> tuple[HandEyeResiduals, np.ndarray]:
    Ts = [g @ X @ c for g, c in zip(G, C)]
    t_mean = np.mean([T[:3, 3] for T in Ts], axis=0)
    R_mean = project_to_rotation(np.sum([T[:3, :3] for T in Ts], axis=0))
    dt = np.array([np.linalg.norm(T[:3, 3] - t_mean) for T in Ts])
    dr = np.degrees([rotation_angle(R_mean.T @ T[:3, :3]) for T in Ts])
    res = HandEyeResiduals(float(np.sqrt(np.mean(dt ** 2))), float(dt.max()),
                           float(np.sqrt(np.mean(dr ** 2))), float(dr.max()), len(Ts))
    return res, make_transform(R_mean, t_mean)


def solve_hand_eye(
    robot_poses: Sequence[np.ndarray],
    target_poses: Sequence[np.ndarray],
    calibration_type: "str | CalibrationType",
    method: str = "TSAI",
    backend: str = "auto",
) -> HandEyeResult:
    """Solve AX = XB. See the module docstring for the frames of inputs and output.

    backend: ``auto`` (OpenCV when available, else numpy), ``opencv`` or ``numpy``.
    """
    ctype = CalibrationType.parse(calibration_type)
    method = method.upper()
    if method not in HANDEYE_METHODS:
        raise ValueError(f"unknown hand-eye method {method!r}; valid: {', '.join(HANDEYE_METHODS)}")
    if backend == "auto":
        backend = "opencv" if opencv_has_handeye() else "numpy"
    if backend == "opencv" and not opencv_has_handeye():
        raise ValueError(f"this OpenCV ({cv2.__version__}) has no calibrateHandEye; use backend 'numpy'")
    if backend == "numpy" and method not in NUMPY_METHODS:
        raise ValueError(f"method {method} needs OpenCV's calibrateHandEye (not in OpenCV {cv2.__version__}); "
                         f"available here: {', '.join(NUMPY_METHODS)}")
    if backend not in ("opencv", "numpy"):
        raise ValueError(f"backend must be 'auto', 'opencv' or 'numpy', got {backend!r}")
    if len(robot_poses) != len(target_poses):
        raise ValueError(f"{len(robot_poses)} robot poses but {len(target_poses)} target poses")
    if len(robot_poses) < MIN_SAMPLES:
        raise ValueError(f"hand-eye calibration needs at least {MIN_SAMPLES} samples (15-30 recommended), "
                         f"got {len(robot_poses)}")
    G = [check_transform(g, f"robot pose {i}") for i, g in enumerate(robot_poses)]
    C = [check_transform(c, f"target pose {i}") for i, c in enumerate(target_poses)]
    if ctype is CalibrationType.EYE_ON_BASE:
        G = [invert_transform(g) for g in G]  # base -> gripper: the solver then returns camera -> base
    spread = max(math.degrees(rotation_angle(G[i][:3, :3].T @ G[j][:3, :3]))
                 for i, j in itertools.combinations(range(len(G)), 2))
    if spread < MIN_ROTATION_SPREAD_DEG:
        raise ValueError(f"robot orientations differ by at most {spread:.2f} deg; rotate the effector by "
                         f">= {MIN_ROTATION_SPREAD_DEG} deg (ideally 30+ deg, about several axes) between samples")
    X = _solve_opencv(G, C, method) if backend == "opencv" else _solve_numpy(G, C, method)
    X[:3, :3] = project_to_rotation(X[:3, :3])
    res, const = _residuals(G, C, X)
    log.info("hand-eye %s %s (%s): residual translation rms %.2f mm, rotation rms %.3f deg over %d samples",
             ctype.value, method, backend, res.translation_rms_m * 1e3, res.rotation_rms_deg, res.n_samples)
    return HandEyeResult(X, method, backend, ctype, res, const)


def compare_methods(
    robot_poses: Sequence[np.ndarray],
    target_poses: Sequence[np.ndarray],
    calibration_type: "str | CalibrationType",
    methods: Sequence[str] = ("TSAI", "PARK"),
    backend: str = "auto",
) -> tuple[list[HandEyeResult], float, float]:
    """Solve with several methods; return the results and their largest pairwise disagreement (m, deg)."""
    if len(methods) < 2:
        raise ValueError("compare at least two methods")
    results = [solve_hand_eye(robot_poses, target_poses, calibration_type, m, backend) for m in methods]
    dt, dr = 0.0, 0.0
    for a, b in itertools.combinations(results, 2):
        dt = max(dt, float(np.linalg.norm(a.transform[:3, 3] - b.transform[:3, 3])))
        dr = max(dr, math.degrees(rotation_angle(a.transform[:3, :3].T @ b.transform[:3, :3])))
    return results, dt, dr


# --------------------------------------------------------------------------- easy_handeye2-style YAML

@dataclass(frozen=True)
class HandEyeCalibration:
    """The saved calibration: frames and X, as easy_handeye2 stores it."""

    calibration_type: CalibrationType
    robot_base_frame: str
    robot_effector_frame: str
    tracking_base_frame: str
    tracking_marker_frame: str
    transform: np.ndarray  # (4, 4) X

    def __post_init__(self) -> None:
        object.__setattr__(self, "calibration_type", CalibrationType.parse(self.calibration_type))
        for name in ("robot_base_frame", "robot_effector_frame", "tracking_base_frame", "tracking_marker_frame"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"hand-eye {name} must be a non-empty frame id, got {value!r}")
        object.__setattr__(self, "transform", check_transform(self.transform, "hand-eye transform"))

    @property
    def parent_frame(self) -> str:
        """The frame X is expressed in: the effector (eye_in_hand) or the robot base (eye_on_base)."""
        if self.calibration_type is CalibrationType.EYE_IN_HAND:
            return self.robot_effector_frame
        return self.robot_base_frame

    def to_dict(self) -> dict:
        q = quaternion_from_matrix(self.transform[:3, :3])
        t = self.transform[:3, 3]
        return {
            "parameters": {
                "calibration_type": self.calibration_type.value,
                "robot_base_frame": self.robot_base_frame,
                "robot_effector_frame": self.robot_effector_frame,
                "tracking_base_frame": self.tracking_base_frame,
                "tracking_marker_frame": self.tracking_marker_frame,
            },
            "transform": {
                "translation": {"x": float(t[0]), "y": float(t[1]), "z": float(t[2])},
                "rotation": {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])},
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> "HandEyeCalibration":
        if not isinstance(d, dict) or "parameters" not in d or "transform" not in d:
            raise ValueError("hand-eye calibration needs top-level 'parameters' and 'transform'")
        p, tf = d["parameters"], d["transform"]
        keys = ("calibration_type", "robot_base_frame", "robot_effector_frame",
                "tracking_base_frame", "tracking_marker_frame")
        missing = [k for k in keys if k not in p]
        if missing:
            raise ValueError(f"hand-eye parameters are missing: {', '.join(missing)}")
        try:
            t = [float(tf["translation"][k]) for k in "xyz"]
            q = [float(tf["rotation"][k]) for k in "xyzw"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"hand-eye transform needs translation {{x,y,z}} and rotation {{x,y,z,w}}: {e}") from None
        if not all(math.isfinite(v) for v in t + q):
            raise ValueError("hand-eye transform holds non-finite values")
        return cls(p["calibration_type"], str(p["robot_base_frame"]), str(p["robot_effector_frame"]),
                   str(p["tracking_base_frame"]), str(p["tracking_marker_frame"]),
                   make_transform(matrix_from_quaternion(q), t))


def write_handeye_yaml(path: str | Path, calib: HandEyeCalibration) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(calib.to_dict(), sort_keys=False, default_flow_style=False))
    tmp.replace(path)


def read_handeye_yaml(path: str | Path) -> HandEyeCalibration:
    with open(path) as f:
        return HandEyeCalibration.from_dict(yaml.safe_load(f))
