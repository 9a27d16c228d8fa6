"""What several commands share: the data arguments and loading what a command needs."""
from __future__ import annotations

import argparse
import json

from ralbook.config import Config
from ralbook.errors import RalbookError


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by train and evaluate that point at the data."""
    parser.add_argument("--data-root", help="folder holding COLLECTION/ (default: from the preset)")
    parser.add_argument("--collection", help="collection name, e.g. tvr, activitynet, charades, demo")
    parser.add_argument("--feature", help="visual feature folder under FeatureData/")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def apply_data_arguments(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply --data-root/--collection/--feature/--device/--set to a config (errors as RalbookError)."""
    assignments = []
    for flag, key in (("data_root", "data.data_root"), ("collection", "data.collection"),
                      ("feature", "data.feature"), ("device", "train.device")):
        value = getattr(args, flag, None)
        if value is not None:
            assignments.append(f"{key}={json.dumps(value)}")
    for assignment in assignments + list(getattr(args, "overrides", []) or []):
        try:
            cfg = cfg.override(assignment)
        except (KeyError, ValueError) as err:
            raise RalbookError(f"bad setting {assignment!r}: {err}") from err
    return cfg
