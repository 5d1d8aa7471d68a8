"""``mole users``: manage frontend users. The only way (with MOLE_BOOTSTRAP_ADMIN) to make
an admin.

    mole users create NAME [--admin] [--password-stdin]
    mole users passwd NAME [--password-stdin]
    mole users delete NAME
    mole users list
    mole users disable NAME | enable NAME | grant-admin NAME | revoke-admin NAME

Names are matched without regard to case, as logins are. A deleted or disabled user's
tokens stop working within the frontend's user cache TTL (a few seconds).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from mole.frontend.passwords import PasswordHasher
from mole.frontend.settings import settings_from_env
from mole.frontend.users import UserError, UserStore


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory (default MOLE_DATA_DIR or ~/.cache/mole)",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="add a user")
    create.add_argument("username")
    create.add_argument("--admin", action="store_true", help="grant the admin role")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else prompt, or MOLE_USER_PASSWORD)",
    )
    passwd = sub.add_parser("passwd", help="set a user's password")
    passwd.add_argument("username")
    passwd.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (else prompt, or MOLE_USER_PASSWORD)",
    )
    sub.add_parser("delete", help="remove a user").add_argument("username")
    sub.add_parser("list", help="list users and roles")
    for action in ("disable", "enable", "grant-admin", "revoke-admin"):
        sub.add_parser(action, help=f"{action} a user").add_argument("username")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get("MOLE_USER_PASSWORD"):
        return os.environ["MOLE_USER_PASSWORD"]
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("validation_error", "the passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.data_dir is not None:
        env["MOLE_DATA_DIR"] = str(args.data_dir.resolve())
    settings = settings_from_env(env)
    store = UserStore(settings.users_db, PasswordHasher(settings.argon2_profile))
    try:
        if args.action == "create":
            user = store.create(args.username, _password(args), admin=args.admin)
            role = "admin" if user.is_admin else "user"
            print(f"created {role} {user.username} in {settings.users_db}")
        elif args.action == "list":
            for user in store.list():
                flags = [
                    f for f, on in (("admin", user.is_admin), ("disabled", user.disabled)) if on
                ]
                print(f"{user.username}\t{','.join(flags) or '-'}")
        elif args.action == "passwd":
            if store.get(args.username) is None:  # before asking for a password
                raise UserError("not_found", f"no user {args.username!r}")
            store.set_password(args.username, _password(args))
            print(f"passwd: {args.username}")
        elif args.action == "delete":
            store.delete(args.username)
            print(f"delete: {args.username}")
        else:
            change = {
                "disable": {"disabled": True},
                "enable": {"disabled": False},
                "grant-admin": {"admin": True},
                "revoke-admin": {"admin": False},
            }
            store.set_flags(args.username, **change[args.action])
            print(f"{args.action}: {args.username}")
    except UserError as err:
        print(f"mole users: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
