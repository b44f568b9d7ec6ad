"""A collector candidate process for ``bench_failover``: the HA ingest side on
PostgreSQL (``collector.store.ha_ingest``), printing READY and LEAD lines."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from collector.store.ha_ingest import start_ha_ingest
from protos.tls import ServerTls


async def serve(args: argparse.Namespace) -> None:
    tls = None
    if args.tls_cert is not None and args.tls_key is not None:
        tls = ServerTls(args.tls_cert, args.tls_key)
    ha = await start_ha_ingest(
        args.name,
        args.url,
        Path(args.registry),
        args.listen,
        lease_seconds=args.lease,
        renew_seconds=args.renew,
        tls=tls,
        insecure_plaintext=args.insecure_plaintext,
    )
    ha.elector.add_listener(lambda term: print(f"LEAD {term}", flush=True))
    print(f"READY {ha.port} {ha.elector.role}", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--lease", type=float, default=1.0)
    p.add_argument("--renew", type=float, default=0.2)
    p.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate")
    p.add_argument("--tls-key", type=Path, help="and this key")
    p.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="serve plain text (an explicit opt-out, logged loudly)",
    )
    args = p.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
