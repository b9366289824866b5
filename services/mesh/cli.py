"""The `mesh` command: run, inspect and build the mesh.

    mesh up [--only NAME,...] [--raw-logs]   start every service, stream logs, restart crashes; Ctrl-C stops
    mesh status [--json]                     health and restarts of every service; exit 0 only if all SERVING
    mesh serve NAME [--replica K] [--port N] run one service (one replica of it) in this process
    mesh migrate [--check] [NAME]            apply pending schema migrations (creating PostgreSQL databases)
    mesh generate [--check]                  regenerate generated/ from protos/ (or check it)
    mesh lint-protos --plugin PATH           buf lint (STANDARD) over protos/
    mesh certs [--dir DIR] [--force]         the mesh CA and a certificate per member (for [tls])
    mesh gateway [--upstream HOST:PORT ...] [--descriptor-set FILE] [--listen HOST:PORT] [--no-auth]
                 [--upstream-tls | --upstream-ca FILE] [--upstream-cert FILE --upstream-key FILE]
                                             the REST bridge (default: in front of this mesh)
    mesh keys create NAME [--scopes admin,rides] [--expires 30d] [--rate R --burst B]
              | list [--json] | revoke NAME
                                             the gateway's API keys
    mesh signing-keys [list | rotate | retire [KID]]
                                             the keys access tokens are signed with
    mesh stats [--json] [--window 5s]        golden metrics per service and per edge (from /metrics)
    mesh graph [--format svg|dot] [--output FILE] [--window 0]
                                             the live call graph, from the callers' metrics

Every command takes `--config FILE` (default: $MESH_CONFIG, then ./mesh.toml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.runtime.config import MeshConfig, ServiceConfig, load_config
from services.runtime.errors import ConfigError


def _config(args: argparse.Namespace) -> MeshConfig:
    return load_config(args.config)


def cmd_up(args: argparse.Namespace) -> int:
    from services.runtime.traffic import check_methods

    from .lifecycle import Supervisor

    config = _config(args)
    names = [n.strip() for n in args.only.split(",")] if args.only else [*config.services, "gateway"]
    services = [config.service(n) for n in names if n != "gateway"]
    gateway = config.gateway.enabled and "gateway" in names
    check_methods(config)  # [client.methods] names a method that exists: say so before starting anything
    if config.tls.enabled:
        _ensure_certs(config)
    _ensure_signing_key(config)
    _ensure_databases(config, services)
    notes = _gateway_notes(config) if gateway else []
    if gateway and args.dev_key:
        from services.gateway.keys import development_key

        notes.append(f"development API key: {development_key(config)}  (send it as x-api-key)")
    out = sys.stdout
    return Supervisor(config, services, out, raw_logs=args.raw_logs, gateway=gateway, notes=notes).run()


def _gateway_notes(config: MeshConfig) -> list[str]:
    base = f"http://{config.gateway.address}"
    return [f"REST API at {base}/v1/...  docs: {base}/docs  OpenAPI: {base}/openapi.json"]


def _ensure_certs(config: MeshConfig) -> None:
    """With TLS on, `mesh up` first makes what `mesh certs` would (a first run, a new service)."""
    from services.runtime import identity

    from . import certs

    changed = [o for o in certs.ensure(config) if o.action != "kept"]
    if changed:
        done = ", ".join(f"{o.name} ({o.action})" for o in changed)
        print(f"mesh: certificates in {identity.directory(config)}: {done}", flush=True)


def _ensure_signing_key(config: MeshConfig) -> None:
    """Passengers and drivers sign access tokens, the gateway checks them: `mesh up` makes the first key."""
    from services.runtime.tokens import keys_dir

    from . import signing

    made = signing.ensure(config)
    if made is not None:
        print(f"mesh: signing key {made} for access tokens in {keys_dir(config)}", flush=True)


def _ensure_databases(config: MeshConfig, services: list[ServiceConfig]) -> None:
    """Services on PostgreSQL migrate their database when they start; `mesh up` first creates it."""
    if not any(s.storage.backend == "postgres" for s in services):
        return
    import psycopg

    from . import migrate

    try:
        made = migrate.ensure_databases(config, services)
    except psycopg.OperationalError as error:
        raise SystemExit(f"mesh up: PostgreSQL: {str(error).strip().splitlines()[0]}") from None
    if made:
        print(f"mesh: created database {', '.join(made)}", flush=True)


def cmd_signing_keys(args: argparse.Namespace) -> int:
    from . import signing

    return signing.command(_config(args), args.action or "list", getattr(args, "kid", None))


def cmd_certs(args: argparse.Namespace) -> int:
    from services.runtime import identity

    from . import certs

    config = _config(args)
    root = Path(args.dir).resolve() if args.dir else identity.directory(config)
    print(certs.report(root, certs.ensure(config, root, force=args.force)))
    if not config.tls.enabled:
        print("tls is off in the mesh file; set [tls] enabled = true to use these certificates")
    elif root != identity.directory(config):
        print(f"note: the mesh reads its certificates from {identity.directory(config)} (tls.dir)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import format_table, status, status_json

    members = status(_config(args))
    print(status_json(members) if args.json else format_table(members))
    return 0 if all(m.health == "SERVING" for m in members) else 1


def cmd_serve(args: argparse.Namespace) -> int:
    from services.runtime.server import serve

    return serve(args.name, args.config, args.port, args.replica)


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import migrate

    config = _config(args)
    services = [config.service(args.name)] if args.name else list(config.services.values())
    text, code = migrate.report([migrate.migrate(config, s, check=args.check) for s in services], args.check)
    print(text)
    return code


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


def cmd_gateway(args: argparse.Namespace) -> int:
    from services.gateway.server import Options, main

    from .graph import MeshPage

    options = Options(
        upstreams=args.upstream or (),
        descriptor_set=args.descriptor_set,
        listen=args.listen,
        auth=not args.no_auth,
        upstream_tls=args.upstream_tls,
        upstream_ca=args.upstream_ca,
        upstream_cert=args.upstream_cert,
        upstream_key=args.upstream_key,
        upstream_server_name=args.upstream_server_name,
        pages=lambda config: {"/mesh": MeshPage(config)},  # the live call graph
    )
    return main(args.config, options)


def cmd_keys(args: argparse.Namespace) -> int:
    from services.gateway import keys

    asked = keys.Command(
        args.action,
        getattr(args, "name", None),
        getattr(args, "rate", None),
        getattr(args, "burst", None),
        getattr(args, "scopes", ""),
        getattr(args, "expires", None),
        getattr(args, "json", False),
    )
    return keys.command(_config(args), asked)


def _window(text: str) -> float:
    from .stats import parse_window

    try:
        return parse_window(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_stats(args: argparse.Namespace) -> int:
    import json

    from .stats import collect, format_report

    result = collect(_config(args), args.window)
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_report(result))
    return 0 if any(up for up, _ in result.instances.values()) else 1


def cmd_graph(args: argparse.Namespace) -> int:
    from .graph import to_dot, to_svg
    from .stats import collect

    config = _config(args)
    result = collect(config, args.window)
    text = to_dot(config, result) if args.format == "dot" else to_svg(config, result)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0 if any(up for up, _ in result.instances.values()) else 1


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
        "up",
        parents=[common],
        help="start every service, stream their logs, restart any that crashes; Ctrl-C stops them",
    )
    up.add_argument(
        "--only", help="comma-separated services to start, 'gateway' for the REST bridge (default: all)"
    )
    up.add_argument("--raw-logs", action="store_true", help="print the services' JSON log lines as they are")
    up.add_argument(
        "--dev-key",
        action="store_true",
        help="print a development API key for the gateway (kept in <data_dir>/gateway/dev-key)",
    )
    up.set_defaults(run=cmd_up)

    status = commands.add_parser(
        "status",
        parents=[common],
        help="health, pid and restarts of every service; exit 0 only if all are SERVING",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)

    serve = commands.add_parser("serve", parents=[common], help="run one service in this process")
    serve.add_argument("name", help="the service, as named in the mesh file")
    serve.add_argument("--port", type=int, help="listen on this port instead (0 picks a free one)")
    serve.add_argument(
        "--replica",
        type=int,
        default=0,
        help="which of the service's replicas to run (default 0): port + K * replica_port_step",
    )
    serve.set_defaults(run=cmd_serve)

    migrate = commands.add_parser(
        "migrate",
        parents=[common],
        help="apply every service's pending schema migrations (creating missing PostgreSQL databases)",
    )
    migrate.add_argument("name", nargs="?", help="only this service (default: all)")
    migrate.add_argument("--check", action="store_true", help="only list what is pending; exit 1 if any")
    migrate.set_defaults(run=cmd_migrate)

    generate = commands.add_parser("generate", parents=[common], help="regenerate generated/ from protos/")
    generate.add_argument("--check", action="store_true", help="fail if generated/ is stale instead")
    generate.set_defaults(run=cmd_generate)

    lint = commands.add_parser(
        "lint-protos", parents=[common], help="run buf lint (STANDARD rules) over protos/"
    )
    lint.add_argument("--plugin", required=True, help="path to protoc-gen-buf-lint")
    lint.set_defaults(run=cmd_lint_protos)

    certs = commands.add_parser(
        "certs",
        parents=[common],
        help="create the mesh CA and a certificate per service, gateway and mesh (keeps what is still good)",
    )
    certs.add_argument("--dir", help="write them here (default: tls.dir, else <data_dir>/certs)")
    certs.add_argument("--force", action="store_true", help="make a new CA and reissue every certificate")
    certs.set_defaults(run=cmd_certs)

    gateway = commands.add_parser(
        "gateway", parents=[common], help="run the REST bridge (default: in front of this mesh)"
    )
    gateway.add_argument(
        "--upstream",
        action="append",
        metavar="HOST:PORT",
        help="a gRPC server to front instead of the mesh (repeatable; routes come from its reflection)",
    )
    gateway.add_argument("--descriptor-set", metavar="FILE", help="take the API from this FileDescriptorSet")
    gateway.add_argument("--listen", metavar="HOST:PORT", help="default: [gateway] host and port")
    gateway.add_argument("--no-auth", action="store_true", help="serve without API keys (local use only)")
    gateway.add_argument(
        "--upstream-tls", action="store_true", help="reach the upstreams over TLS (system trust store)"
    )
    gateway.add_argument("--upstream-ca", metavar="FILE", help="TLS, trusting these PEM certificates")
    gateway.add_argument("--upstream-cert", metavar="FILE", help="TLS client certificate (PEM)")
    gateway.add_argument("--upstream-key", metavar="FILE", help="its private key (PEM)")
    gateway.add_argument(
        "--upstream-server-name", metavar="NAME", help="the name to verify (and send as SNI) instead of HOST"
    )
    gateway.set_defaults(run=cmd_gateway)

    keys = commands.add_parser(
        "keys", parents=[common], help="create, list and revoke the gateway's API keys"
    )
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="make a key and print it (shown only once)")
    create.add_argument("name", help="what the key is for, unique")
    create.add_argument("--rate", type=float, help="requests per second (default: [gateway.rate_limit])")
    create.add_argument("--burst", type=int, help="bucket size (default: [gateway.rate_limit])")
    create.add_argument(
        "--scopes", default="", help="comma-separated: admin (operators' methods), rides (act for users)"
    )
    create.add_argument("--expires", metavar="DURATION", help="stop working after 90m, 12h, 30d, ...")
    listing = actions.add_parser("list", parents=[common], help="every key, active and revoked")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = actions.add_parser("revoke", parents=[common], help="stop accepting a key (within a second)")
    revoke.add_argument("name")
    keys.set_defaults(run=cmd_keys)

    signing = commands.add_parser(
        "signing-keys",
        parents=[common],
        help="list, rotate and retire the keys access tokens are signed with",
    )
    signing_actions = signing.add_subparsers(dest="action", metavar="ACTION")
    signing_actions.add_parser("list", parents=[common], help="every key and its status (the default)")
    signing_actions.add_parser(
        "rotate", parents=[common], help="make a new key to sign with; retire keys whose tokens all expired"
    )
    retire = signing_actions.add_parser(
        "retire", parents=[common], help="remove keys whose tokens all expired, or KID now (a leaked key)"
    )
    retire.add_argument("kid", nargs="?", help="this key, now: its tokens stop working at once")
    signing.set_defaults(run=cmd_signing_keys)

    stats = commands.add_parser(
        "stats", parents=[common], help="requests/s, success rate and latency per service and per edge"
    )
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.add_argument(
        "--window", type=_window, default=5.0, help="over this long, e.g. 30s (default 5s; 0: since start)"
    )
    stats.set_defaults(run=cmd_stats)

    graph = commands.add_parser("graph", parents=[common], help="draw the live call graph as SVG or DOT")
    graph.add_argument("--format", choices=("svg", "dot"), default="svg", help="default: svg")
    graph.add_argument("--output", metavar="FILE", help="write here instead of standard output")
    graph.add_argument(
        "--window", type=_window, default=0.0, help="rates over this long, e.g. 10s (default 0: since start)"
    )
    graph.set_defaults(run=cmd_graph)
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
