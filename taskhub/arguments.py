"""Argument types the `taskhub` commands share."""

from __future__ import annotations

import argparse


def positive_seconds(text: str) -> float:
    """A command-line number of seconds, refused in words unless it is above zero."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value
