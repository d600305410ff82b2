"""`python -m dispider_ros.eval` (also `dispider-eval`, `ros2 run dispider_ros dispider_eval`).

    run     --bag <rosbag2 dir|file, ROS 1 bag or video> --annotations <file> --out <run dir>
            [--mode offline|live] [--preset tiny] [--params-file config/dispider.yaml]
            [--camera-topic T ...] [--rate N] [--sync] [--recording ID] [--chunks] [--overwrite]
    score   --format dispider|streamingbench|ovo --annotations <file> --results <file|folder>
            (score_cli.score_main; --format dispider also takes a run folder)
    report  --run <run dir> [--annotations <file>] [--out <dir>]
    topics  --bag <bag or video>        list topics (image topics marked)
    convert --video <file> --out <bag dir> [--storage sqlite3|mcap] [--topic T] [--compressed]
            [--overwrite]   (all or nothing: a failed convert leaves nothing behind)

Exit status: 0 ok, 1 run failure, 2 bad input (missing file, bag without images, ...),
130 interrupted (Ctrl-C). A failed `convert`, `run` or `report` leaves nothing behind.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from dispider_ros.eval import bagio
from dispider_ros.eval.record import PREDICTIONS


def _run(args: argparse.Namespace) -> int:
    from dispider_ros.eval import replay

    overrides = {}
    if args.sample_fps is not None:
        overrides = {"perception_node": {"sample_fps": args.sample_fps},
                     "reaction_node": {"sample_fps": args.sample_fps}}
    options = replay.ReplayOptions(preset=args.preset, params_file=args.params_file,
                                   overrides=overrides, camera_topics=args.camera_topic,
                                   chunks=args.chunks, progress=not args.quiet)
    # A failed run leaves nothing behind but a live run's node logs (its error names them).
    with replay.undo_on_failure(args.out, keep=("logs",) if args.mode == "live" else ()):
        if args.mode == "offline":
            figures = replay.run_offline(args.bag, args.annotations, args.out, options,
                                         args.recording, args.overwrite)
        else:
            figures = replay.run_live(args.bag, args.annotations, args.out, options, args.rate,
                                      args.recording, args.overwrite, sync=args.sync)
    if args.mode == "offline":
        print(f"offline replay speed: {figures['speed_factor']:.1f}x real time")
    else:
        print(f"live replay done; node peak memory: {peak_memory(figures.get('node_peak_rss_mb'))}")
    print(f"run record: {Path(args.out) / PREDICTIONS}")
    print(f"next: {shlex.quote(sys.executable)} -m dispider_ros.eval report "
          f"--run {shlex.quote(str(args.out))}")
    return 0


def peak_memory(peaks: Optional[Dict[str, Optional[float]]]) -> str:
    """{'perception_node': 812.3, ...} (MiB) -> 'perception_node 812 MiB, ...'."""
    if not peaks:
        return "unknown"
    return ", ".join(f"{name} {mib:.0f} MiB" if mib is not None else f"{name} unknown"
                     for name, mib in peaks.items())


def _report(args: argparse.Namespace) -> int:
    from dispider_ros.eval import report

    paths = report.write(args.run, args.annotations, args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _topics(args: argparse.Namespace) -> int:
    with bagio.open_source(args.bag) as source:
        print(f"{args.bag} ({source.storage}):")
        print(bagio.describe(source))
        source.select()  # raises NoImagesError naming the topics when there is no camera
    return 0


def _convert(args: argparse.Namespace) -> int:
    size = tuple(args.size) if args.size else None
    path = bagio.video_to_bag(args.video, args.out, storage=args.storage, size=size,
                              max_seconds=args.max_seconds, topic=args.topic,
                              start_stamp=args.start_stamp, compressed=args.compressed,
                              overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {path} ({args.storage})")
    return 0


def _score(argv: Sequence[str]) -> int:
    """score_cli.score_main, letting --format dispider take a run folder for --results."""
    from dispider_ros.eval.score_cli import score_main

    argv = list(argv)
    if "--results" in argv:
        i = argv.index("--results") + 1
        if i < len(argv) and Path(argv[i]).is_dir() and (Path(argv[i]) / PREDICTIONS).is_file():
            argv[i] = str(Path(argv[i]) / PREDICTIONS)
    return score_main(argv)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m dispider_ros.eval",
                                   description="Replay evaluation: run, score, report.")
    sub = main.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="replay a recording and record queries/triggers/answers")
    run.add_argument("--bag", required=True, type=Path,
                     help="rosbag2 folder or .db3/.mcap file, ROS 1 .bag, or a video file")
    run.add_argument("--annotations", required=True, type=Path, help="annotation file (JSON/YAML)")
    run.add_argument("--out", required=True, type=Path, help="run folder to write")
    run.add_argument("--mode", choices=("offline", "live"), default="offline")
    run.add_argument("--preset", default="tiny", help="model preset (config/presets)")
    run.add_argument("--params-file", type=Path, default=None,
                     help="node parameter YAML (default: the package's config/dispider.yaml)")
    run.add_argument("--camera-topic", action="append", default=[],
                     help="image topic to replay (repeatable; default: every image topic)")
    run.add_argument("--rate", type=float, default=1.0, help="live: playback speed, 1 = real time")
    run.add_argument("--sync", action="store_true",
                     help="live: pause playback after each sampled frame until perception has "
                          "encoded it (same sampled frames as offline on a loaded machine)")
    run.add_argument("--sample-fps", type=float, default=None,
                     help="override perception's and reaction's sample_fps")
    run.add_argument("--recording", default=None, help="recording id in the annotation file")
    run.add_argument("--chunks", action="store_true", help="record streamed chunks too")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run record")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=_run)
    rep = sub.add_parser("report", help="report.md, report.json and timeline.png of a run")
    rep.add_argument("--run", required=True, type=Path, help="run folder")
    rep.add_argument("--annotations", type=Path, default=None,
                     help="annotation file (default: the run's annotations.json)")
    rep.add_argument("--out", type=Path, default=None, help="output folder (default: the run folder)")
    rep.set_defaults(handler=_report)
    top = sub.add_parser("topics", help="list a bag's topics")
    top.add_argument("--bag", required=True, type=Path)
    top.set_defaults(handler=_topics)
    conv = sub.add_parser("convert", help="turn a video file into a rosbag2")
    conv.add_argument("--video", required=True, type=Path)
    conv.add_argument("--out", required=True, type=Path, help="bag folder to create")
    conv.add_argument("--storage", choices=bagio.STORAGES, default="mcap")
    conv.add_argument("--topic", default=bagio.VIDEO_TOPIC)
    conv.add_argument("--size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"), default=None)
    conv.add_argument("--max-seconds", type=float, default=None)
    conv.add_argument("--start-stamp", type=float, default=1.7e9, help="absolute stamp of t = 0")
    conv.add_argument("--compressed", action="store_true", help="JPEG CompressedImage topic")
    conv.add_argument("--overwrite", action="store_true",
                      help="replace an existing bag folder at --out (only a rosbag2 folder)")
    conv.add_argument("--quiet", action="store_true", help="no progress bar")
    conv.set_defaults(handler=_convert)
    sub.add_parser("score", help="score saved answers (see `score --help`)", add_help=False)
    return main


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "score":
        return _score(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, FileExistsError, bagio.NoImagesError) as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"{args.command}: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as error:
        print(f"{args.command} failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
