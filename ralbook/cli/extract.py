"""``ralbook extract``: video files (+ captions) -> a collection of CLIP features."""
from __future__ import annotations

import argparse

from ralbook.cli.common import DEVICE_HELP
from ralbook.runtime.device import resolve_device
from ralbook.video.clip import DEFAULT_MODEL, DEFAULT_REVISION, load_clip
from ralbook.video.decode import Sampling, list_videos
from ralbook.video.extract import DEFAULT_FEATURE, extract


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose the CLIP model (shared with ``search``)."""

    parser.add_argument("--model", default=DEFAULT_MODEL, help="CLIP model on the model hub (default %(default)s)")
    parser.add_argument("--revision", default=DEFAULT_REVISION, help="model revision: branch, tag or commit "
                                                                     "(default %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="model-hub cache folder (default: the hub's own)")
    parser.add_argument("--offline", action="store_true", help="use the cached copy only, never download")


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", required=True, help="folder of video files, or a text file listing them")
    parser.add_argument("--out", required=True, help="collection folder ROOT/NAME to write")
    parser.add_argument("--captions", help="tab-separated 'VIDEO<TAB>caption[<TAB>train|val|test]' lines")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--fps", type=float, default=None, help="frames sampled per second of video (default 1)")
    how.add_argument("--frames-per-video", type=int, default=None, help="evenly spaced frames per video instead")
    parser.add_argument("--feature", default=DEFAULT_FEATURE, help="FeatureData sub-folder (default %(default)s)")
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=int, default=64, help="frames (or captions) per forward pass")
    add_encoder_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_extract(args: argparse.Namespace) -> int:

    if args.frames_per_video is not None:
        sampling = Sampling(fps=None, per_video=args.frames_per_video)
    else:
        sampling = Sampling(fps=1.0 if args.fps is None else args.fps)
    list_videos(args.videos)  # a wrong path fails before the model loads
    encoder = load_clip(args.model, args.revision, str(resolve_device(args.device)), args.cache_dir, args.offline)
    summary = extract(args.videos, args.out, encoder, sampling, args.captions, args.feature, args.batch_size,
                      progress=not args.no_progress)
    print(summary.format())
    return 0
