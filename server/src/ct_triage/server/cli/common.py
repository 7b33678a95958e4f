"""What every verb module of the CLI shares: the type of the sub-command table."""

from __future__ import annotations

import argparse
from typing import TypeAlias

#: ``argparse``'s table of sub-commands; each verb module adds its own with ``add_parser``.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

__all__ = ["Subparsers"]
