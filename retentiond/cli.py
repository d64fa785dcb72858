"""The command line: parse arguments, call one command function, turn errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retentiond import __version__
from retentiond.errors import RetentiondError, describe_error

log = logging.getLogger("retentiond")

EXIT_CODES = """exit codes:
  0  success
  1  runtime failure
  2  usage or config error (nothing was done)
  3  verification failed (the ledger or an export was tampered with)
  4  refused by a guard, or partial (some rules failed)"""


def _help(text: str, example: str) -> dict[str, Any]:
    return {
        "help": text,
        "description": f"{text}\n\nexample:\n  {example}",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def _config_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Accepted before and after the command (`retentiond -c f check` and `retentiond check -c f`).
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None if top else argparse.SUPPRESS,
        help="config file (default: $RETENTIOND_CONFIG, else /etc/retentiond/config.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole argument parser; every command of DESIGN.md is here."""
    parser = argparse.ArgumentParser(
        prog="retentiond",
        description="Data-retention daemon: purges expired rows and files, shreds migration copies, "
        "and keeps a signed deletion ledger.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_option(parser, top=True)
    parser.add_argument("--version", action="version", version=f"retentiond {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, text: str, example: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **_help(text, example), **kw)
        _config_option(p, top=False)
        return p

    add("init", "create or upgrade the state database and the keys (idempotent)", "retentiond init")
    p = add("check", "validate the config, like nginx -t", "retentiond check --connect")
    p.add_argument(
        "--connect", action="store_true", help="also reach every store, table and column"
    )
    p = add(
        "plan", "show what every rule would remove now; changes nothing", "retentiond plan --json"
    )
    p.add_argument("--rule", help="only this rule")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add(
        "apply",
        "run one pass of every rule (or one) now, with all guards",
        "retentiond apply --rule lab-results",
    )
    p.add_argument("--rule", help="only this rule")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add("run", "run the daemon: schedules, reload on SIGHUP, metrics endpoint", "retentiond run")
    p = add(
        "status",
        "each rule's last run, result, next run and overdue items",
        "retentiond status --json",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    hold = add("hold", "manage legal holds", "retentiond hold list")
    hsub = hold.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    h = hsub.add_parser(
        "add",
        **_help(
            "add a hold",
            "retentiond hold add --rule lab-results --where patient_id=40211 --reason 'case 117'",
        ),
    )
    h.add_argument("--rule", help="rule the hold applies to")
    h.add_argument("--table", help="schema.table the --where applies to")
    h.add_argument(
        "--where", action="append", default=[], metavar="COLUMN=V1,V2", help="key values kept"
    )
    h.add_argument("--path", help="path prefix kept under a files store root")
    h.add_argument("--reason", required=True, help="why (case number, inspection...)")
    h.add_argument("--until", help="last day of the hold, YYYY-MM-DD")
    h = hsub.add_parser("list", **_help("list holds", "retentiond hold list --json"))
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h = hsub.add_parser(
        "release", **_help("release a hold", "retentiond hold release 3 --reason 'case closed'")
    )
    h.add_argument("hold_id", type=int, help="id shown by hold list")
    h.add_argument("--reason", required=True, help="why the hold ends")

    p = add(
        "seal",
        "encrypt a copy in the age format and register its deadline",
        "pg_dump lims | retentiond seal - -o lims.age --expires 30d",
    )
    p.add_argument("source", nargs="?", default="-", help="file to seal, or - for standard input")
    p.add_argument("-o", "--output", type=Path, required=True, help="sealed file to write")
    p.add_argument("--expires", required=True, help="deadline as a duration: 30d, 6w, P1Y")
    p.add_argument("--label", help="free text, stored only as a digest")
    p = add(
        "unseal",
        "decrypt a sealed copy while its key lives",
        "retentiond unseal lims.age -o - | psql lims",
    )
    p.add_argument("sealed", type=Path, help="the sealed file")
    p.add_argument(
        "-o", "--output", default="-", help="where to write the plaintext (- for stdout)"
    )
    p.add_argument(
        "--export-identity",
        action="store_true",
        help="print the copy's age identity instead (recorded in the ledger)",
    )

    ledger = add(
        "ledger", "verify, export and inspect the deletion ledger", "retentiond ledger verify"
    )
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    lp = lsub.add_parser(
        "verify",
        **_help(
            "check the whole ledger: chain, tree, signatures",
            "retentiond ledger verify --export ./audit",
        ),
    )
    lp.add_argument(
        "--export", type=Path, dest="export_dir", help="verify an export offline instead"
    )
    lp = lsub.add_parser(
        "export",
        **_help(
            "write entries.jsonl, checkpoint and the public key", "retentiond ledger export ./audit"
        ),
    )
    lp.add_argument("directory", type=Path)
    lp = lsub.add_parser(
        "show", **_help("list ledger entries", "retentiond ledger show --since 2026-11-01")
    )
    lp.add_argument("--since", help="only entries at or after this time (YYYY-MM-DD or RFC 3339)")
    lp.add_argument("--json", action="store_true", help="one JSON entry per line")
    lp = lsub.add_parser(
        "proof",
        **_help(
            "inclusion proof of one entry against the latest checkpoint",
            "retentiond ledger proof 42 -o entry42.proof",
        ),
    )
    lp.add_argument("seq", type=int)
    lp.add_argument("-o", "--output", type=Path, required=True)
    lp = lsub.add_parser(
        "check-proof",
        **_help(
            "check an inclusion proof file offline",
            "retentiond ledger check-proof entry42.proof --public-key ledger.pub",
        ),
    )
    lp.add_argument("proof_file", type=Path)
    lp.add_argument(
        "--public-key", type=Path, help="verifier key file (default: the one in the proof)"
    )
    lp = lsub.add_parser(
        "check-keys",
        **_help(
            "show that an entry deleted exactly the listed keys (one a line)",
            "retentiond ledger check-keys 42 deleted-patients.txt",
        ),
    )
    lp.add_argument("seq", type=int, help="the ledger entry")
    lp.add_argument("keys_file", type=Path, help="keys, one a line: 40211 or [40211, 2] or a path")
    lp.add_argument(
        "--kind",
        choices=["row", "path"],
        default="row",
        help="row: JSON primary-key values (default); path: file paths relative to the store root",
    )
    for lp in lsub.choices.values():
        _config_option(lp, top=False)

    config = add(
        "config",
        "tools for the config file",
        "retentiond config schema > retentiond.schema.json",
    )
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    csub.add_parser(
        "schema",
        **_help(
            "print the JSON Schema of the config, for editors",
            "retentiond config schema > retentiond.schema.json",
        ),
    )
    p = add(
        "demo",
        "a self-contained demonstration on SQLite and a temporary folder",
        "retentiond demo --dir /tmp/retentiond-demo",
    )
    p.add_argument("--dir", type=Path, help="workspace to build (default: a new temporary folder)")
    p.add_argument("--clean", action="store_true", help="remove the workspace at the end")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    """Call the command function named by the parsed arguments."""
    # Imported here so that `--help` stays fast and one command's imports never break another's.
    out = sys.stdout
    cfg = args.config
    match args.command:
        case "init":
            from retentiond.commands.init import init

            return init(cfg, out)
        case "check":
            from retentiond.commands.check import check

            return check(cfg, args.connect, out)
        case "plan":
            from retentiond.commands.purge import plan

            return plan(cfg, args.rule, args.json, out)
        case "apply":
            from retentiond.commands.purge import apply

            return apply(cfg, args.rule, args.json, out)
        case "run":
            from retentiond.commands.daemon import run

            return run(cfg)
        case "status":
            from retentiond.commands.daemon import status

            return status(cfg, args.json, out)
        case "hold":
            from retentiond.commands import hold

            return hold.dispatch(cfg, args, out)
        case "seal":
            from retentiond.commands.seal import seal

            return seal(cfg, args.source, args.output, args.expires, args.label, out)
        case "unseal":
            from retentiond.commands.seal import unseal

            return unseal(cfg, args.sealed, args.output, args.export_identity, out)
        case "ledger":
            from retentiond.commands import ledger

            match args.ledger_command:
                case "verify":
                    return ledger.verify(cfg, args.export_dir, out)
                case "export":
                    return ledger.export(cfg, args.directory, out)
                case "show":
                    return ledger.show(cfg, args.since, args.json, out)
                case "proof":
                    return ledger.proof(cfg, args.seq, args.output, out)
                case "check-proof":
                    return ledger.check_proof(args.proof_file, args.public_key, out)
                case "check-keys":
                    return ledger.check_keys(cfg, args.seq, args.keys_file, args.kind, out)
        case "config":
            from retentiond.commands.check import schema

            return schema(out)
        case "demo":
            from retentiond.commands.demo import demo

            return demo(args.dir, args.clean, out)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `retentiond` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from retentiond.logs import setup_logging

    setup_logging(verbose=args.verbose)
    try:
        return _dispatch(args)
    except RetentiondError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"retentiond: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(exc, SQLAlchemyError):
            raise
        # A database lost between the steps that record their own failures (the state database
        # restarting, full or locked): what was done is in the state database or reconciled later.
        print(f"retentiond: a database failed: {describe_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
