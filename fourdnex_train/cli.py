"""``fourdnex-train``: prepare, curate and run (``python -m fourdnex_train ...`` works the same).

    fourdnex-train prepare CONFIG [--section.key VALUE ...]
    fourdnex-train run CONFIG [--section.key VALUE ...]
    fourdnex-train curate ROOT --out DIR [--layout simple] [--filter METRIC:BOUND=VALUE ...]

Every config key can be overridden: ``--optim.lr 1e-4 --train.max_steps 300``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from fourdnex_core.cli.errors import run_command
from fourdnex_train.config import LAYOUTS, load_config, override_keys, parse_override_value
from fourdnex_train.curation import DEFAULT_HCPR_THRESHOLD, METRICS, Criterion, curate

logger = logging.getLogger(__name__)

_FILTER_HELP = (f"METRIC:BOUND=VALUE, METRIC one of {', '.join(METRICS)}, BOUND one of min, max, top_percent, "
                "bottom_percent (e.g. brightness:min=20, mcv:top_percent=80, curvature:max=0.5); repeatable")


def _add_config_command(commands, name: str, help_text: str) -> None:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("config", help="the TOML config file (see fourdnex_train/example_config.toml)")
    overrides = parser.add_argument_group("config overrides", "any config key as --section.key VALUE")
    for key in override_keys():
        overrides.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, metavar="VALUE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourdnex-train", description="4DNeX LoRA data preparation and training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_config_command(commands, "prepare", "encode and cache every clip of [data] root")
    _add_config_command(commands, "run", "train the LoRA on the prepared cache")
    curate_parser = commands.add_parser("curate", help="measure clips, filter them, write a report")
    curate_parser.add_argument("root", help="dataset folder")
    curate_parser.add_argument("--out", required=True, help="report folder (curation.csv, kept.txt, hist_*.png)")
    curate_parser.add_argument("--layout", default="simple", choices=LAYOUTS)
    curate_parser.add_argument("--hcpr-threshold", type=float, default=DEFAULT_HCPR_THRESHOLD,
                               help="confidence above which a pixel counts as high-confidence (tau)")
    curate_parser.add_argument("--filter", action="append", default=[], help=_FILTER_HELP)
    return parser


def parse_filter(text: str) -> Criterion:
    """``"mcv:top_percent=80"`` -> Criterion(metric="mcv", top_percent=80.0)."""
    metric, _, rest = text.partition(":")
    bound, _, value = rest.partition("=")
    try:
        return Criterion(metric=metric, **{bound: float(value)})
    except (TypeError, ValueError) as error:
        raise ValueError(f"Bad --filter {text!r} ({error}); write {_FILTER_HELP.split(',')[0]}.") from error


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (see :mod:`fourdnex_core.cli.errors`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_command("fourdnex-train", args.command, lambda: _run(args), verbose=args.verbose)


def _run(args: argparse.Namespace) -> int:
    if args.command == "curate":
        result = curate(args.root, args.layout, args.out, [parse_filter(f) for f in args.filter],
                        hcpr_threshold=args.hcpr_threshold)
        print(f"kept {len(result.kept)} of {len(result.metrics)} clips; report in {args.out}")
        return 0
    overrides = {key: parse_override_value(value) for key, value in vars(args).items() if "." in key}
    config = load_config(args.config, overrides)
    if args.command == "prepare":
        from fourdnex_train.prepare import prepare_dataset

        report = prepare_dataset(config)
        print(report.summary())
        usable = report.names("prepared") + report.names("skipped")
        return 0 if usable else 1
    from fourdnex_train.trainer import Trainer

    result = Trainer(config).train()
    print(f"trained to step {result.step}; LoRA: {result.lora_path}")
    return 0
