"""``ct-triage token create|list|revoke``: the HTTP API's tokens (stored hashed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ct_triage.server.api.auth import Role, TokenStore
from ct_triage.server.api.config import ApiConfig
from ct_triage.server.cli.common import Subparsers
from ct_triage.server.settings import Settings

__all__ = ["add_parser", "run"]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Manage API tokens in ``<data_dir>/api-tokens.db``.

    Parameters
    ----------
    args
        Parsed arguments (``token_command`` and its options, see :func:`add_parser`).
    settings
        The process settings (``data_dir``).

    Returns
    -------
    int
        The exit status.
    """
    data_dir = Path(settings.data_dir).resolve()
    used = any((data_dir / name).exists() for name in ("jobs.db", "spool", "audit.jsonl"))
    db = ApiConfig.from_settings(settings).tokens_db.resolve()
    store = TokenStore(db)
    try:
        if args.token_command == "create":
            info, token = store.create(name=args.name, role=Role(args.role))
            print(f"Token {info.id} ({info.role}, {info.name!r}) created. It is shown once:")
            print(token)
            print(
                f"Stored in {db}: valid for a `ct-triage serve` whose data folder is "
                f"{data_dir} (CT_TRIAGE_DATA_DIR).",
                file=sys.stderr,
            )
            if not used:
                print(
                    f"Note: no server has used {data_dir} yet. If yours runs with another "
                    "data folder, run this command with CT_TRIAGE_DATA_DIR set to it (or from "
                    "the folder it was started in): this token will not work there.",
                    file=sys.stderr,
                )
        elif args.token_command == "list":
            for t in store.list():
                state = f"revoked {t.revoked_at:%Y-%m-%d}" if t.revoked_at else "active"
                print(f"{t.id}  {t.role:<8}  {state:<18}  {t.name}")
        else:
            info = store.revoke(args.id)
            print(f"Token {info.id} ({info.name!r}) revoked.")
    finally:
        store.close()
    return 0


def add_parser(sub: Subparsers) -> None:
    """Add ``token create|list|revoke`` to the CLI."""
    tk = sub.add_parser("token", help="create, list or revoke HTTP API tokens")
    tsub = tk.add_subparsers(dest="token_command", required=True)
    c = tsub.add_parser("create", help="create a token (printed once, stored hashed)")
    c.add_argument("--role", choices=[r.value for r in Role], required=True)
    c.add_argument("--name", required=True, help='who uses it, e.g. "ward 3"')
    tsub.add_parser("list", help="list tokens (id, name, role; never the secret)")
    r = tsub.add_parser("revoke", help="revoke a token by id")
    r.add_argument("id", help="the token id (the 12 hex digits after 'ctt_')")
    tk.set_defaults(func=run)
