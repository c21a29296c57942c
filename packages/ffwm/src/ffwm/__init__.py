"""FFWM."""
