"""`gpjobs serve`: run the GP REST server (store + scheduler + web) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys

from gpjobs.commands._common import add_config_arguments, config_from_args, named_paths

HELP = "run the TrainDeepLearningModel GP REST server"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    parser.add_argument(
        "--file-share",
        action="append",
        metavar="NAME=PATH",
        help="register a file share (/fileShares/NAME/...); repeatable",
    )
    parser.add_argument(
        "--raster-store",
        action="append",
        metavar="NAME=PATH",
        help="register a raster store (/rasterStores/NAME/...); repeatable",
    )
    parser.add_argument("--devices", help="comma list of training slots: cpu, cuda:N, auto")


def run(args: argparse.Namespace) -> int:
    from gpjobs.config import ConfigError

    try:
        config = config_from_args(
            args,
            host=args.host,
            port=args.port,
            file_shares=named_paths(args.file_share, "--file-share"),
            raster_stores=named_paths(args.raster_store, "--raster-store"),
            devices=args.devices.split(",") if args.devices else None,
        )
    except ConfigError as exc:
        print(f"gpjobs: configuration error: {exc}", file=sys.stderr)
        return 2
    if config is None:
        return 2
    from gpjobs.logging import configure_logging

    configure_logging(config.log_level)
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 130


async def serve(config) -> int:
    """Start the app, print where it listens, and stop gracefully on the first signal (fast on the second)."""
    import structlog
    from aiohttp import web

    from gpjobs.app import create_app
    from gpjobs.logging import AccessLogger

    log = structlog.get_logger("gpjobs.serve")
    app = create_app(config)
    runner = web.AppRunner(app, access_log_class=AccessLogger, handle_signals=False, shutdown_timeout=5)
    await runner.setup()  # runs cleanup_ctx startup: store, recovery, scheduler
    ssl_context = None
    if config.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"gpjobs: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    for address in runner.addresses:
        host, port = address[0], address[1]
        url = f"{config.scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        log.info(
            "listening", url=url, data_dir=str(config.data_dir), devices=config.devices, anonymous=config.auth.anonymous
        )
        print(f"gpjobs serving on {url}/arcgis/rest/services/System/RasterAnalysisTools/GPServer", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():  # second signal: leave now; boot recovery settles what is left
            log.warning("second signal: exiting without waiting", signal=signum)
            os._exit(128 + signum)
        log.info("shutting down", signal=signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    await stop.wait()
    await runner.cleanup()  # stops HTTP, then the scheduler (children checkpoint, jobs requeued), then the store
    log.info("stopped")
    return 0
