"""--param NAME=VALUE and --params JSON options shared by subcommands that run a detector."""
from __future__ import annotations

import argparse
import json


def add_param_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                        help="detector parameter (repeatable), e.g. -p threshold=0.98 -p min_component_mm3=10")
    parser.add_argument("--params", default=None, metavar="JSON",
                        help='parameters as JSON, e.g. \'{"threshold": 0.98}\'')
    parser.add_argument("--preprocessed", action="store_true",
                        help="input is already bias-corrected, brain-extracted and in template space "
                             "(published protocol)")


def collect_params(args: argparse.Namespace) -> dict:
    params: dict = {}
    if args.params:
        try:
            loaded = json.loads(args.params)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--params: expected a JSON object, received {args.params!r} ({exc.msg})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--params: expected a JSON object, received {type(loaded).__name__}")
        params.update(loaded)
    for item in args.param:
        if "=" not in item:
            raise ValueError(f"--param: expected NAME=VALUE, received {item!r}")
        name, value = item.split("=", 1)
        try:
            params[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[name.strip()] = value
    if args.preprocessed:
        params["preprocessed"] = True
    return params
