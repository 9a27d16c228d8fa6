"""``ralbook demo``: the main job's arguments (the job itself is ralbook.workbook.pipeline.run_demo)."""
from __future__ import annotations

import argparse

from ralbook.cli.common import DEVICE_HELP, flatten_list
from ralbook.workbook import pipeline
from ralbook.workbook.pipeline import DEMO_RUN_NAME


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    parser.add_argument("--data-root", default="data", help="folder holding demo/ (default: data)")
    parser.add_argument("--figures", default="", help="figure folder (default: OUT/figures)")
    parser.add_argument("--epochs", type=int, default=0, help="training epochs (default: the demo preset's)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--notebooks", nargs="*", default=None, metavar="NAME",
                        help="run only these notebooks, space- or comma-separated (e.g. 01 04); default: 00-05")
    parser.add_argument("--ablation", action="store_true",
                        help="also run 06_ablation_sweep (trains 18 more models: 4 switch variants x 2 seeds and "
                             "3 backbones x with / without RAL x 2 seeds, the full model's runs shared by both "
                             "parts; tens of minutes on a CPU)")
    parser.add_argument("--ablation-epochs", type=int, default=3, help="epochs per ablation variant (default 3)")
    parser.add_argument("--robustness", action="store_true",
                        help="also run 07_robustness (the full study: about 45 minutes on 2 CPU cores; cached)")
    parser.add_argument("--uncertainty", action="store_true",
                        help="also run 08_uncertainty_methods (trains 2 more demo runs for the ensemble; cached)")
    parser.add_argument("--retrain", action="store_true",
                        help=f"delete OUT/{DEMO_RUN_NAME} and train again (default: reuse or resume the run there)")


def run_demo(args: argparse.Namespace) -> int:
    """The main job (:func:`ralbook.workbook.pipeline.run_demo`)."""
    args.notebooks = flatten_list(args.notebooks)  # "01 04" and "01,04" alike
    return pipeline.run_demo(args)
