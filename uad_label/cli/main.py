"""The `uad` console command. Each subcommand lives in its own module under uad_label.cli and
exposes HELP, EPILOG (an example), add_arguments(parser) and run(args) -> int; modules are
imported only when their subcommand runs so `uad --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module; the module's HELP/EPILOG are read lazily from this table too
COMMANDS: dict[str, tuple[str, str]] = {
    "sample-data": ("uad_label.cli.cmd_sample_data",
                    "build the deterministic demo datastore (synthetic brains, some with lesions)"),
    "serve": ("uad_label.cli.cmd_serve", "start the MONAI Label server on a studies folder"),
    "detect": ("uad_label.cli.cmd_detect", "run a detector on one case locally, without a server"),
    "evaluate": ("uad_label.cli.cmd_evaluate",
                 "evaluate a detector on a folder of cases with ground truth (Meissen et al. protocol)"),
    "batch": ("uad_label.cli.cmd_batch",
              "run a detector over every case of a folder: maps, masks, reports, summary CSV, overview"),
    "pseudo-label": ("uad_label.cli.cmd_pseudo_label",
                     "store a detector's masks and maps of the unlabelled cases as pseudo-labels (own tag)"),
    "train": ("uad_label.cli.cmd_train",
              "train a learned detector on healthy data (demo CPU or full GPU configuration)"),
    "calibrate": ("uad_label.cli.cmd_calibrate", "default threshold and fusion weights from approved labels"),
    "bench": ("uad_label.cli.cmd_bench", "run benchmarks (kernels, preprocessing, evaluation)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uad",
        description="uad-label: unsupervised anomaly detection for brain MRI (MONAI Label server, CLI, evaluation).",
        epilog="Run `uad COMMAND --help` for the options and an example of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = sys.argv[1] if len(sys.argv) > 1 else None
    for name, (module_name, help_text) in COMMANDS.items():
        if wanted == name:
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=help_text, description=module.HELP, epilog=module.EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_module=module)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = getattr(args, "_module", None)
    if module is None:  # argv was changed under us; rebuild for the named command
        module = importlib.import_module(COMMANDS[args.command][0])
    from ..preprocess import RegistrationError
    from ..runtime import configure_threads

    try:
        configure_threads()  # UAD_THREADS, once per process
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, RegistrationError) as exc:
        print(f"uad {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
