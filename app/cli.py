"""The `irqlab` command line."""

from __future__ import annotations

import argparse

from app.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="irqlab")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser(
        "serve", help="run the HTTP service",
        description="Serve app.main:app with uvicorn. Defaults come from IRQLAB_HOST, "
                    "IRQLAB_PORT and IRQLAB_LOG_LEVEL; flags override them.")
    serve.add_argument("--host", default=settings.host,
                       help=f"bind address (IRQLAB_HOST, now {settings.host})")
    serve.add_argument("--port", type=int, default=settings.port,
                       help=f"TCP port (IRQLAB_PORT, now {settings.port})")
    serve.add_argument("--log-level", default=settings.log_level,
                       choices=["critical", "error", "warning", "info", "debug", "trace"],
                       help=f"log level (IRQLAB_LOG_LEVEL, now {settings.log_level})")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        import uvicorn

        uvicorn.run("app.main:app", host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
