"""Load-time checks for calibration files: a wrong file must fail loudly before the arm moves.

A camera_info for another resolution silently scales every projected point, and a hand-eye file for
another robot or camera frame puts the camera centimetres off; both are cheap to catch here.
"""
from __future__ import annotations

from pathlib import Path

from .handeye import HandEyeCalibration, read_handeye_yaml
from .intrinsics import CameraInfo, read_camera_info_yaml


def _load(path: str | Path, what: str, reader):
    """Read a calibration file with ``reader``; errors name the file (and the field, from the reader)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path} (see calibration/README.md)")
    try:
        return reader(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    except Exception as e:  # YAML syntax errors and the like
        raise ValueError(f"{path}: not a readable {what} YAML ({type(e).__name__}: {e})") from None


def load_camera_info(path: str | Path) -> CameraInfo:
    """Read and validate a camera_info YAML; errors name the file and the field."""
    return _load(path, "camera_info", read_camera_info_yaml)


def load_handeye(path: str | Path) -> HandEyeCalibration:
    """Read and validate an easy_handeye2-style hand-eye YAML."""
    return _load(path, "hand-eye", read_handeye_yaml)


def check_image_matches_camera_info(width: int, height: int, info: CameraInfo) -> None:
    """Raise ``ValueError`` if an image of ``width`` x ``height`` px does not match the calibration."""
    if (int(width), int(height)) != (info.width, info.height):
        raise ValueError(
            f"image size {int(width)}x{int(height)} px does not match camera_info "
            f"'{info.camera_name}' calibrated at {info.width}x{info.height} px; recalibrate, or set the "
            f"camera driver to {info.width}x{info.height}")


def check_frame_id(expected: str, actual: str, what: str) -> None:
    """Raise ``ValueError`` if a message's frame id differs from the one the calibration names."""
    if expected != actual:
        raise ValueError(f"{what}: frame id {actual!r} does not match the calibration's {expected!r}")
