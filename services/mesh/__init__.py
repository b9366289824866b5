"""The `mesh` command: the operator's tools, above the runtime and the gateway.

`mesh up` (lifecycle, logs), `mesh status`, `mesh stats` and `mesh graph`, `mesh certs`
(the only code that holds the CA's key), `mesh generate` and `mesh lint-protos`.
Nothing in the runtime (services/runtime) or the gateway imports this package.
"""
