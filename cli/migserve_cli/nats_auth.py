"""The nats-server ``authorization`` block, rendered from ``migserve_shared.permissions``.

One renderer for both places a NATS server runs: the local stack (literal
passwords in a 0600 file under the stack home, see ``nats_server.prepare_auth``)
and Kubernetes (``$NATS_PASSWORD_<USER>`` variables that the NATS StatefulSet
takes from the ``nats-credentials`` Secret, so the ConfigMap holds no secret).
The Kubernetes block lives between two marker lines in k8s/base/nats.yaml;
tests/deploy checks it equals ``render_k8s_block()``. Regenerate it with

    uv run python -m migserve_cli.nats_auth --write-k8s

or print a block for fixed agent nodes (one NATS user per node) with
``--agent-nodes gpu-1,gpu-2``. ``--k8s-secrets`` prints the two Secrets with
fresh random passwords (pipe it to ``kubectl apply -f -``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from migserve_shared import subjects
from migserve_shared.messages import EVENT_KINDS
from migserve_shared.permissions import (
    JS_ACK,
    JS_API,
    NatsUser,
    Role,
    cluster_users,
    event_family,
    inbox_prefix,
    kv_stream,
    may_publish,
    may_subscribe,
    user,
    user_name,
)

BEGIN = "# BEGIN migserve authorization"
END = "# END migserve authorization"
K8S_SECRET = "nats-credentials"
#: the bridge sidecars' environment (MIGSERVE_K8S_BRIDGE_ENV_SECRET of the kubernetes runtime)
K8S_BRIDGE_ENV_SECRET = "nats-bridge-env"
K8S_NAMESPACE = "migserve"
K8S_NATS_FILE = Path(__file__).resolve().parents[2] / "k8s" / "base" / "nats.yaml"
_K8S_INDENT = "    "  # the block sits inside `nats.conf: |` of the ConfigMap


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def new_password(length: int = 40) -> str:
    """A random password nats-server reads back unchanged from an environment
    variable: letters and digits, starting with a letter (the server parses a
    variable's value as a config value: a leading digit or '-' makes it a number
    or an error). 40 characters of 62 symbols: about 238 bits."""
    alphabet = _LETTERS + "0123456789"
    return secrets.choice(_LETTERS) + "".join(secrets.choice(alphabet) for _ in range(length - 1))


def quote(text: str) -> str:
    """A double-quoted NATS config string (JSON escaping; NATS reads it the same)."""
    return json.dumps(text)


def k8s_password_var(user: str) -> str:
    """The environment variable of the NATS pod that holds ``user``'s password."""
    return "NATS_PASSWORD_" + user.upper().replace("-", "_")


def render_authorization(users: Sequence[NatsUser], passwords: Mapping[str, str]) -> str:
    """The ``authorization { users = [...] }`` block.

    ``passwords`` maps each user name to its value as written in the config:
    a quoted literal (``quote(pw)``) or a variable reference (``$VAR``).
    """
    lines = ["authorization {", "  users = ["]
    for u in users:
        what = f"role {u.role.value}" + (f", node {u.node}" if u.node is not None else "")
        lines += [
            f"    # {u.name}: {what}",
            "    {",
            f"      user: {quote(u.name)}",
            f"      password: {passwords[u.name]}",
            "      permissions: {",
            *_allow("publish", u.permissions.publish),
            *_allow("subscribe", u.permissions.subscribe),
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _allow(direction: str, subjects: Sequence[str]) -> list[str]:
    return [
        f"        {direction}: {{",
        "          allow: [",
        *(f"            {quote(s)}" for s in subjects),
        "          ]",
        "        }",
    ]


def render_k8s_block(agent_nodes: Sequence[str] | None = None) -> str:
    """The marked authorization block of k8s/base/nats.yaml (unindented)."""
    users = cluster_users(agent_nodes)
    body = render_authorization(users, {u.name: f"${k8s_password_var(u.name)}" for u in users})
    header = (
        f"{BEGIN}: generated from migserve_shared.permissions by\n"
        "# `uv run python -m migserve_cli.nats_auth --write-k8s`; do not edit by hand.\n"
        f"# Passwords: environment variables from the Secret {K8S_SECRET} (docs/security.md).\n"
    )
    return header + body + END + "\n"


def render_k8s_secrets(agent_nodes: Sequence[str] | None = None) -> str:
    """The Secrets ``nats-credentials`` (one random password per user) and
    ``nats-bridge-env`` (the bridge user for engine Pods' sidecars), as YAML."""
    passwords = {u.name: new_password() for u in cluster_users(agent_nodes)}
    bridge = user_name(Role.BRIDGE)
    docs = [
        _secret(K8S_SECRET, passwords),
        _secret(
            K8S_BRIDGE_ENV_SECRET,
            {"MIGSERVE_NATS_USER": bridge, "MIGSERVE_NATS_PASSWORD": passwords[bridge]},
        ),
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def _secret(name: str, data: Mapping[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": K8S_NAMESPACE},
        "type": "Opaque",
        "stringData": dict(data),
    }


def extract_block(conf: str) -> str:
    """The marked block of a nats.conf text (unindented), or '' when absent."""
    lines = conf.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if not starts or not ends or ends[0] < starts[0]:
        return ""
    block = lines[starts[0] : ends[0] + 1]
    indent = len(block[0]) - len(block[0].lstrip())
    return "".join(line[indent:] if line.strip() else "\n" for line in block)


def replace_block(text: str, block: str, *, indent: str = _K8S_INDENT) -> str:
    """``text`` (a nats.yaml) with its marked block replaced by ``block``."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if not starts or not ends:
        raise ValueError(f"no '{BEGIN}' ... '{END}' block to replace")
    new = [indent + line if line.strip() else "\n" for line in block.splitlines(keepends=True)]
    return "".join(lines[: starts[0]] + new + lines[ends[0] + 1 :])


# The capability table of docs/security.md --------------------------------------------
DOCS_FILE = K8S_NATS_FILE.parents[2] / "docs" / "security.md"
DOCS_BEGIN = "<!-- BEGIN generated capability table -->"
DOCS_END = "<!-- END generated capability table -->"
_N1, _N2 = "node-1", "node-2"


def _capabilities() -> list[tuple[str, str, str]]:
    """(what, "pub" or "sub", a subject that doing it needs)."""
    cmd, jobs, events = subjects.COMMANDS_STREAM, subjects.JOBS_STREAM, subjects.EVENTS_STREAM
    caps = [
        ("submit inference jobs", "pub", subjects.infer("m")),
        ("cancel jobs", "pub", subjects.cancel("j")),
        ("take jobs (pull from a model's consumer)", "pub",
         f"{JS_API}.CONSUMER.MSG.NEXT.{jobs}.{subjects.jobs_consumer('m')}"),
        ("answer jobs on the gateway's inboxes", "pub", f"{inbox_prefix('gateway')}.x.1"),
        ("hear cancels", "sub", subjects.cancel("j")),
        ("read a model's job backlog", "pub",
         f"{JS_API}.CONSUMER.INFO.{jobs}.{subjects.jobs_consumer('m')}"),
        ("send commands to agents", "pub", subjects.agent_commands(_N1)),
        ("take node-1's commands", "pub",
         f"{JS_API}.CONSUMER.MSG.NEXT.{cmd}.{subjects.agent_consumer(_N1)}"),
        ("take node-2's commands", "pub",
         f"{JS_API}.CONSUMER.MSG.NEXT.{cmd}.{subjects.agent_consumer(_N2)}"),
        ("ack node-2's commands", "pub",
         f"{JS_ACK}.{cmd}.{subjects.agent_consumer(_N2)}.1.1.1.1.0"),
        ("see commands on the wire", "sub", subjects.agent_commands(_N1)),
        ("consume events (durable consumer)", "pub",
         f"{JS_API}.CONSUMER.MSG.NEXT.{events}.scaler"),
    ]  # fmt: skip
    for family in sorted({event_family(k) for k in EVENT_KINDS}):
        caps.append((f"publish `{family}` events", "pub", f"{subjects.PREFIX}.evt.{family}.x.y"))
    for bucket in subjects.ALL_BUCKETS:
        caps.append((f"read KV `{bucket}`", "pub", f"{JS_API}.STREAM.MSG.GET.{kv_stream(bucket)}"))
        key = subjects.node_key(_N1) if bucket == subjects.KV_NODES else "k"
        caps.append((f"write KV `{bucket}` (key {key})", "pub", f"$KV.{bucket}.{key}"))
    caps += [
        ("write node-2's inventory", "pub", f"$KV.{subjects.KV_NODES}.{subjects.node_key(_N2)}"),
        ("create the command stream if missing", "pub", f"{JS_API}.STREAM.CREATE.{cmd}"),
        ("create other streams and buckets if missing", "pub", f"{JS_API}.STREAM.CREATE.{jobs}"),
        ("update a stream's settings", "pub", f"{JS_API}.STREAM.UPDATE.{jobs}"),
        ("delete or purge a stream", "pub", f"{JS_API}.STREAM.PURGE.{cmd}"),
        ("read another user's inbox", "sub", f"{inbox_prefix('someone')}.x"),
    ]
    return caps


def render_capability_table() -> str:
    """A Markdown table: what each NATS user may do, probed from its permissions."""
    users = [
        user(Role.GATEWAY), user(Role.SCALER), user(Role.WATCHER), user(Role.BRIDGE),
        user(Role.AGENT, node=_N1), user(Role.AGENT), user(Role.ADMIN),
    ]  # fmt: skip
    head = "| capability | " + " | ".join(f"`{u.name}`" for u in users) + " |"
    lines = [head, "|" + " --- |" * (len(users) + 1)]
    for what, direction, subject in _capabilities():
        check = may_publish if direction == "pub" else may_subscribe
        cells = ["yes" if check(u.permissions, subject) else "-" for u in users]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_docs_table(text: str, table: str) -> str:
    start, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    return text[:start] + "\n" + table + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m migserve_cli.nats_auth", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--agent-nodes", help="comma-separated nodes: one agent user each")
    parser.add_argument(
        "--write-k8s", action="store_true", help=f"rewrite the block in {K8S_NATS_FILE}"
    )
    parser.add_argument(
        "--k8s-secrets",
        action="store_true",
        help=f"print the Secrets {K8S_SECRET} and {K8S_BRIDGE_ENV_SECRET} with new passwords",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help=f"rewrite the capability table in {DOCS_FILE}"
    )
    args = parser.parse_args(argv)
    nodes = [n for n in args.agent_nodes.split(",") if n] if args.agent_nodes else None
    if args.write_docs:
        DOCS_FILE.write_text(replace_docs_table(DOCS_FILE.read_text(), render_capability_table()))
        print(f"rewrote the capability table of {DOCS_FILE}")
        return 0
    if args.k8s_secrets:
        sys.stdout.write(render_k8s_secrets(nodes))
        return 0
    block = render_k8s_block(nodes)
    if not args.write_k8s:
        sys.stdout.write(block)
        return 0
    K8S_NATS_FILE.write_text(replace_block(K8S_NATS_FILE.read_text(), block))
    print(f"rewrote the authorization block of {K8S_NATS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
