"""`python -m app`: serve with gunicorn and production settings (port 5005), as `make serve` does.

`python -m app --dev` runs Flask's development server with the debugger instead — for
development on your own machine only, never exposed (it binds 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import sys

from app.launch import gunicorn_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--dev", action="store_true", help="Flask development server with debug (127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=5005)
    args = parser.parse_args(argv)
    if args.dev:
        from app import create_app

        app = create_app()
        app.run(host="127.0.0.1", port=args.port, debug=True)
        return 0
    command = gunicorn_command()
    if not os.environ.get("SHELFCAST_BIND", "").strip():  # empty: unset, as app/gunicorn_conf.py reads it
        command[1:1] = ["--bind", f"127.0.0.1:{args.port}"]
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
