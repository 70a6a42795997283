"""Camera calibration for the real-robot stack: intrinsics, hand-eye, and checks on load.

- :mod:`.intrinsics`: board detection (chessboard, ChArUco), ``cv2.calibrateCamera``, and the
  camera_info YAML that ROS ``camera_calibration`` writes.
- :mod:`.handeye`: AX = XB hand-eye calibration (eye_in_hand / eye_on_base), several methods
  compared with residuals, and the easy_handeye2-style YAML.
- :mod:`.validate`: load-time checks (image size vs camera_info, frame ids) with clear errors.

Pure numpy/OpenCV: no rclpy, so plain pytest tests it.
"""
from .handeye import (
    HANDEYE_METHODS,
    CalibrationType,
    HandEyeCalibration,
    HandEyeResult,
    read_handeye_yaml,
    solve_hand_eye,
    write_handeye_yaml,
)
from .intrinsics import (
    BoardSpec,
    BoardDetection,
    CameraInfo,
    calibrate_intrinsics,
    detect_board,
    read_camera_info_yaml,
    write_camera_info_yaml,
)
from .validate import (
    check_frame_id,
    check_image_matches_camera_info,
    load_camera_info,
    load_handeye,
)

__all__ = [
    "HANDEYE_METHODS",
    "BoardDetection",
    "BoardSpec",
    "CalibrationType",
    "CameraInfo",
    "HandEyeCalibration",
    "HandEyeResult",
    "calibrate_intrinsics",
    "check_frame_id",
    "check_image_matches_camera_info",
    "detect_board",
    "load_camera_info",
    "load_handeye",
    "read_camera_info_yaml",
    "read_handeye_yaml",
    "solve_hand_eye",
    "write_camera_info_yaml",
    "write_handeye_yaml",
]
