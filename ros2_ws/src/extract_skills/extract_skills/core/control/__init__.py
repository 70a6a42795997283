"""Arm interface, the safety function and the skill executor (no rclpy, no franky)."""
