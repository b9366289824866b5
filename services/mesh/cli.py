"""The `mesh` command: run, inspect and build the mesh.

    mesh up [--only NAME,...] [--raw-logs]   start every service, stream logs, Ctrl-C stops
    mesh status [--json]                     health of every service; exit 0 only if all SERVING
    mesh serve NAME [--port N]               run one service in this process
    mesh generate [--check]                  regenerate generated/ from protos/ (or check it)
    mesh lint-protos --plugin PATH           buf lint (STANDARD) over protos/

Every command takes `--config FILE` (default: $MESH_CONFIG, then ./mesh.toml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import MeshConfig, load_config
from .errors import ConfigError


def _config(args: argparse.Namespace) -> MeshConfig:
    return load_config(args.config)


def cmd_up(args: argparse.Namespace) -> int:
    from .supervisor import Supervisor

    config = _config(args)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(config.services)
    services = [config.service(n) for n in names]
    return Supervisor(config, services, sys.stdout, raw_logs=args.raw_logs).run()


def cmd_status(args: argparse.Namespace) -> int:
    from .supervisor import format_table, status, status_json

    members = status(_config(args))
    print(status_json(members) if args.json else format_table(members))
    return 0 if all(m.health == "SERVING" for m in members) else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    return serve(args.name, args.config, args.port)


def cmd_generate(args: argparse.Namespace) -> int:
    from . import codegen

    if args.check:
        return codegen.check()
    codegen.generate()
    print(f"generated stubs for {len(codegen.proto_files())} proto file(s) into generated/")
    return 0


def cmd_lint_protos(args: argparse.Namespace) -> int:
    from . import codegen

    return codegen.buf_lint(Path(args.plugin))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mesh", description="Run, inspect and build the rideshare mesh.")
    root.add_argument("--config", help="the mesh file (default: $MESH_CONFIG, then ./mesh.toml)")
    # `--config` is accepted after the command too (`mesh up --config x.toml`); SUPPRESS keeps
    # the subcommand from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help="the mesh file (default: $MESH_CONFIG, then ./mesh.toml)"
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", parents=[common], help="start every service and stream their logs; Ctrl-C stops them"
    )
    up.add_argument("--only", help="comma-separated services to start (default: all)")
    up.add_argument("--raw-logs", action="store_true", help="print the services' JSON log lines as they are")
    up.set_defaults(run=cmd_up)

    status = commands.add_parser(
        "status", parents=[common], help="health of every service; exit 0 only if all are SERVING"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)

    serve = commands.add_parser("serve", parents=[common], help="run one service in this process")
    serve.add_argument("name", help="the service, as named in the mesh file")
    serve.add_argument("--port", type=int, help="listen on this port instead (0 picks a free one)")
    serve.set_defaults(run=cmd_serve)

    generate = commands.add_parser("generate", parents=[common], help="regenerate generated/ from protos/")
    generate.add_argument("--check", action="store_true", help="fail if generated/ is stale instead")
    generate.set_defaults(run=cmd_generate)

    lint = commands.add_parser(
        "lint-protos", parents=[common], help="run buf lint (STANDARD rules) over protos/"
    )
    lint.add_argument("--plugin", required=True, help="path to protoc-gen-buf-lint")
    lint.set_defaults(run=cmd_lint_protos)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"mesh {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
