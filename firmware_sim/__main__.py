"""``python -m firmware_sim``: the original street command, or a subcommand (scenario, registry, score)."""

from __future__ import annotations

import sys

from firmware_sim.cli import SUBCOMMANDS, cli, street


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SUBCOMMANDS:
        cli.main(args, prog_name="python -m firmware_sim")
    else:
        street.main(args, prog_name="python -m firmware_sim")


if __name__ == "__main__":
    main()
