"""``fslm-edge serve``: load the stacks, bind the socket, run uvicorn."""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import load_target_config
from ..engine import DecoderPool
from ..errors import InputError
from ..stack import Stack
from .app import Settings, create_app
from .workers import ModelWorkers


class _StopRequested(Exception):
    """SIGTERM, after uvicorn has finished its graceful shutdown."""


def _stop_requested(_signum, _frame) -> None:
    raise _StopRequested


def load_models(refs: Sequence[str], workers: int, overrides: Mapping[str, Any], max_waiting: int,
                log=print, parallel: int = 1, merge_adapters: bool = False,
                merge_type: str | None = None) -> dict[str, ModelWorkers]:
    """Each stack file or model reference ``workers`` times, keyed by its
    ``[stack] name``. With several workers each runs llama.cpp on one thread
    (the cores are shared between them). With ``parallel`` > 1, that many
    instances share one batched decoder per model file (``engine.batch``): the
    requests they answer at once are decoded together, on the stack's threads.
    ``merge_adapters``: every stage on a file of its own (``merge_type``
    weights, Q8_0 unless given) with its adapter merged in (``convert.merged``),
    so each stage gets a decoder of its own."""
    if workers < 1 or parallel < 1:
        raise InputError("--workers and --parallel must be at least 1")
    if merge_type is not None and not merge_adapters:
        raise InputError("--merge-type sets the weights of the --merge-adapters files: give --merge-adapters too")
    if workers > 1 and parallel > 1:
        raise InputError("--workers and --parallel are two ways to answer requests at once: give one of them")
    common = {**overrides, **({"stack.threads": 1} if workers > 1 else {})}
    models: dict[str, ModelWorkers] = {}
    try:
        for ref in refs:
            decoders = None
            settings = common
            if merge_adapters:
                from ..convert.merged import MERGE_TYPES, merged_overrides

                settings = {**common, **merged_overrides(load_target_config(ref, common or None), log=log,
                                                              qtype=merge_type or MERGE_TYPES[0])}
            if parallel > 1:
                config = load_target_config(ref, settings or None)
                decoders = DecoderPool(parallel, config.context_size, config.n_threads, config.gpu_layers)
            stacks = [Stack.load(ref, settings or None, decoders=decoders)]
            name = stacks[0].config.name
            if name in models:
                stacks[0].close()
                if decoders is not None:
                    decoders.close()
                raise InputError(f"{ref}: the model id '{name}' is served already (from another STACK); "
                                 "give the stack another [stack] name")
            # closed with the others on failure
            models[name] = ModelWorkers.create(name, stacks, max_waiting, decoders)
            stacks.extend(Stack.load(ref, settings or None, decoders=decoders)
                          for _ in range(max(workers, parallel) - 1))
            models[name] = ModelWorkers.create(name, stacks, max_waiting, decoders)
            how = (f"{parallel} requests at once, batched" if parallel > 1
                   else f"{workers} worker{'s' if workers > 1 else ''}")
            log(f"fslm-edge: loaded '{name}' from {ref} ({how}, "
                f"stages: {', '.join(s.name for s in stacks[0].config.stages)})")
    except BaseException:
        for loaded in models.values():
            loaded.close()
        raise
    return models


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: a free one, printed at start)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise InputError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(refs: Sequence[str], host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          workers: int = 1, parallel: int = 1, max_waiting: int = 16, timeout_s: float = 300.0,
          max_body_bytes: int = 1 << 20, merge_adapters: bool = False, merge_type: str | None = None,
          overrides: Mapping[str, Any] | None = None, debug: bool = False) -> None:
    import uvicorn

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if max_waiting < 0 or timeout_s <= 0 or max_body_bytes <= 0:
        raise InputError("--queue must be >= 0, --timeout and --max-body positive")
    if not is_loopback(host) and not api_key:
        log(f"warning: listening on {host} without an API key: anyone who can reach this machine can use "
            "the server; set --api-key KEY (or FSLM_EDGE_API_KEY)")
    sock = bind(host, port)
    try:
        models = load_models(refs, workers, overrides or {}, max_waiting, log, parallel, merge_adapters,
                             merge_type)
    except BaseException:
        sock.close()
        raise
    try:
        settings = Settings(api_key=api_key or None, timeout_s=timeout_s, max_body_bytes=max_body_bytes)
        config = uvicorn.Config(create_app(models, settings), log_level="info" if debug else "warning",
                                access_log=debug, timeout_graceful_shutdown=5)
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log(f"fslm-edge: serving {', '.join(models)} at http://{shown}:{bound_port}/v1 (Ctrl-C stops)")
        previous = signal.signal(signal.SIGTERM, _stop_requested)  # uvicorn re-raises it after its shutdown
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except (KeyboardInterrupt, _StopRequested):  # the way a server is meant to be stopped: exit 0
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        log("fslm-edge: stopped")
    finally:
        sock.close()
        for loaded in models.values():
            loaded.close()
