"""Command line: ``python -m nslab run ...``, ``presets``, ``sweep`` (nslab.sweep), ``report`` (nslab.report)
and ``bench`` (nslab.bench).

Every RunConfig field is an option of ``run`` (``--width 256``); values are
validated by RunConfig itself, so the command line and papermill reject the
same bad values with the same messages.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .config import RunConfig
from .locks import FolderInUse


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="train one configuration into outputs/<run name>/")
    p.add_argument("--preset", default="", help="start from a named preset (see `nslab presets`)")
    for f in fields(RunConfig):
        p.add_argument(f"--{f.name}", dest=f.name, default=None, metavar=type(f.default).__name__.upper(),
                       help=f"default: {f.default!r}")


# What nslab raises to refuse an input (a value, a file, a folder): one line on stderr and exit 2.
REFUSALS = (ValueError, FileNotFoundError, PermissionError, FolderInUse)


def _cmd_run(args) -> int:
    from .presets import preset
    from .training import train

    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name) is not None}
    try:
        config = preset(args.preset, **given) if args.preset else RunConfig.from_dict(given)
        run = train(config)
    except REFUSALS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{run.run_dir}: {run.status['status']} ({run.status.get('message', '')})")
    return 0 if run.status["status"] == "completed" else 1


def _cmd_presets(args) -> int:
    from .presets import PRESETS

    if args.yaml:
        import yaml

        if args.yaml not in PRESETS:
            print(f"error: --yaml {args.yaml!r} is not a preset: choose one of {sorted(PRESETS)}", file=sys.stderr)
            return 2
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS[args.yaml].items()}
        print(yaml.safe_dump(values, sort_keys=False), end="")
        return 0
    for name, values in PRESETS.items():
        print(f"{name:22s} " + " ".join(f"{k}={v}" for k, v in values.items() if k != "name"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nslab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    p = sub.add_parser("presets", help="list the named presets")
    p.add_argument("--yaml", metavar="NAME", default="",
                   help="print one preset as YAML (papermill -f FILE, or a grid's base)")
    from . import bench, report, sweep

    sweep.add_parser(sub)
    report.add_parser(sub)
    bench.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "presets":
        return _cmd_presets(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
