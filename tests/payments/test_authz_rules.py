"""The authorization rules for money that mesh.toml shows, commented out, say what the docs say.

Uncommented (with TLS on), the repo's own mesh.toml must give exactly the
decision tables docs/architecture.md ("Money") documents: only trips creates
invoices and payments; refunds only for trips, the gateway (admin keys) and
the mesh tool; payments may read the invoices it charges.
"""

from __future__ import annotations

import re
from pathlib import Path

from rideshare.billing.v1 import billing_pb2
from rideshare.payments.v1 import payments_pb2

from services.runtime import authz
from services.runtime.config import load_config

REPO_MESH = Path(__file__).resolve().parents[2] / "mesh.toml"


def uncommented(text: str, table: str) -> str:
    """`text` with the commented-out `[table]` block, and the rules right under it, switched on."""
    lines = text.splitlines()
    start = lines.index(f"# [{table}]")
    end = start + 1
    while end < len(lines) and re.match(r'# "[^"]+" = \[', lines[end]):
        end += 1
    on = [line.removeprefix("# ") for line in lines[start:end]]
    return "\n".join([*lines[:start], *on, *lines[end:]]) + "\n"


def tables(tmp_path: Path) -> dict[str, dict[str, set[str]]]:
    text = REPO_MESH.read_text(encoding="utf-8")
    for table in ("services.billing.authz", "services.payments.authz"):
        text = uncommented(text, table)
    path = tmp_path / "mesh.toml"
    path.write_text(text, encoding="utf-8")
    config = load_config(path, env={"MESH_TLS__ENABLED": "true"})
    found = {}
    for name, module, service in (
        ("billing", billing_pb2, "BillingService"),
        ("payments", payments_pb2, "PaymentService"),
    ):
        rules = authz.compile_rules(
            config, config.service(name), [module.DESCRIPTOR.services_by_name[service]]
        )
        found[name] = {path.rsplit("/", 1)[-1]: set(rule.callers) for path, rule in rules.items()}
    return found


def test_the_money_rules_in_mesh_toml_keep_creating_to_trips_and_refunds_to_trips_gateway_and_mesh(tmp_path):
    everyone = {"trips", "gateway", "mesh"}

    assert tables(tmp_path) == {
        "billing": {
            "QuoteFare": everyone | {"payments"},
            "CreateInvoice": {"trips"},
            "GetInvoice": everyone | {"payments"},
            "ListInvoices": everyone | {"payments"},
        },
        "payments": {
            "CreatePayment": {"trips"},
            "GetPayment": everyone,
            "ListPayments": everyone,
            "RefundPayment": everyone,
        },
    }
