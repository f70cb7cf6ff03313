"""Command line: ``dicom-service serve | process | conformance | phantoms | train | eval | audit | echo``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_service import __version__
from dicom_service.config import HttpSettings, Settings, apply_overrides, load_settings, make_folder
from dicom_service.domain import ConfigError
from dicom_service.tls_reload import ReloadingServerContext
from dicom_service.training.cli_eval import add_eval_parser
from dicom_service.training.cli_train import add_train_parser

log = logging.getLogger("dicom_service")


def _without_library_tracebacks(record: logging.LogRecord) -> bool:
    """Keep pynetdicom's line, drop the traceback it attaches (its message says enough)."""
    if record.name.startswith("pynetdicom") and record.exc_info:
        record.exc_info, record.exc_text = None, None
    return True


def setup_logging(level: str) -> None:
    """Log lines with time, level and module; never patient data (by convention)."""
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if level != "DEBUG":  # pynetdicom logs a traceback for every refused TLS handshake or connection
        for handler in logging.getLogger().handlers:
            handler.addFilter(_without_library_tracebacks)
    # highdicom logs a line at INFO for every element it adds to every object it builds
    logging.getLogger("highdicom").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def _flag_changes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings the command line's flags set, section → {key: value}."""
    changes: dict[str, dict[str, Any]] = {}
    if getattr(args, "data", None):
        changes["storage"] = {"path": args.data}
    if getattr(args, "dicom_port", None) is not None:
        changes["dicom"] = {"port": args.dicom_port}
    if getattr(args, "http_port", None) is not None:
        changes["http"] = {"port": args.http_port}
    return changes


def _settings(args: argparse.Namespace) -> Settings:
    """File and environment, then the flags on top of both (validated like the rest)."""
    return apply_overrides(load_settings(args.config), _flag_changes(args))


def _bind_http(http: HttpSettings) -> socket.socket:
    """Bind the API's socket before anything loads, so that a port in use is named at once.

    Raises
    ------
    ConfigError
        Naming ``http.port`` and the address.
    """
    family = socket.AF_INET6 if ":" in http.bind_address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may follow at once
    try:
        sock.bind((http.bind_address, http.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"http.port: cannot listen on {http.bind_address}:{http.port} "
                          f"(http.bind_address, http.port): {exc.strerror or exc}") from None
    return sock


def _uvicorn_tls(contexts: ReloadingServerContext | None) -> dict[str, Any]:
    """uvicorn's TLS arguments for ``http.tls`` (none for plain HTTP).

    uvicorn takes our own context (:func:`~dicom_service.tls.server_context`: TLS 1.2+,
    ``crl``) through its ``ssl_context_factory``; asyncio keeps that one context for the
    server's life, and its SNI callback swaps in renewed files for each new connection
    (:meth:`~dicom_service.tls_reload.ReloadingServerContext.sni_context`).
    """
    if contexts is None:
        return {}
    return {"ssl_context_factory": lambda _config, _default: contexts.sni_context()}


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the DICOM node, the HTTP API and the workers in one process until Ctrl-C or SIGTERM.

    The service starts before the API serves, so that a start failure (DICOM port in use)
    is a one-line error rather than a failed ASGI lifespan; it stops after the API does
    (uvicorn hands the signal that stopped it on to the handler it found, which raises
    KeyboardInterrupt for SIGTERM as for SIGINT). Either signal is a clean stop: exit 0.
    """
    import uvicorn

    from dicom_service.api.app import create_app
    from dicom_service.service import Service

    settings = _settings(args)
    setup_logging(settings.log_level)
    service = Service(settings)
    https = ReloadingServerContext(settings.http.tls, "http.tls") if settings.http.tls is not None else None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind through service.stop(), as Ctrl-C does
    with _bind_http(settings.http) as sock:
        try:
            service.start()
            server = uvicorn.Server(uvicorn.Config(create_app(service, manage_service=False),
                                                   log_level=settings.log_level.lower(), access_log=False,
                                                   **_uvicorn_tls(https)))
            log.info("dicom-service %s: HTTP API on %s://%s:%d (docs at /docs)", __version__,
                     "https" if settings.http.tls else "http", settings.http.bind_address, sock.getsockname()[1])
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM while starting, or uvicorn passing on the one that stopped it
            pass
        finally:
            service.stop()
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    """Process DICOM files offline and write results and summary.json."""
    from dicom_service.offline import process_paths

    settings = _settings(args)
    setup_logging(settings.log_level)
    report = process_paths([Path(p) for p in args.paths], Path(args.out), settings,
                           show_progress=not args.no_progress)
    summary = Path(args.out) / "summary.json"
    if not report.groups:
        print(f"dicom-service: nothing processed: {len(report.skipped)} of {report.inputs} input files skipped "
              f"(reasons in {summary})", file=sys.stderr)
    print(json.dumps({"inputs": report.inputs, "skipped": len(report.skipped),
                      "groups": len(report.groups), "outputs": len(report.outputs),
                      "summary": str(summary)}))
    return 1 if report.failed else 0


def cmd_conformance(args: argparse.Namespace) -> int:
    """Print the accepted presentation contexts as Markdown tables (as in CONFORMANCE.md)."""
    from dicom_service.node.contexts import conformance_tables

    print(conformance_tables(), end="")
    return 0


def cmd_phantoms(args: argparse.Namespace) -> int:
    """Render a synthetic data set: implant radiographs (COCO + 16-bit PNG) or intraoral video clips.

    A count, size or worker number the generators refuse (their ``ValueError``) and an
    ``--out`` that is a file are usage errors: exit 2 with the message.
    """
    if args.kind == "video" and args.workers < 1:
        print(f"--workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    make_folder(args.out, "--out")
    try:
        return _render_phantoms(args)
    except ValueError as exc:
        print(f"dicom-service: {exc}", file=sys.stderr)
        return 2


def _render_phantoms(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.kind == "video":
        from dicom_service.training.video_phantoms import write_dataset

        total = args.train + args.val + args.test
        with tqdm(total=total, desc="rendering", unit="clip", disable=args.no_progress) as bar:
            path = write_dataset(Path(args.out), train=args.train, val=args.val, test=args.test,
                                 frames=args.frames, height=args.height, width=args.width, seed=args.seed,
                                 progress=lambda done, _total, _name: bar.update(1), workers=args.workers)
        print(json.dumps({"manifest": str(path), "clips": total, "seed": args.seed}))
        return 0

    from dicom_service.training.coco import generate_dataset

    total = args.periapical + args.panoramic
    with tqdm(total=total, desc="rendering", unit="scene", disable=args.no_progress) as bar:
        path = generate_dataset(Path(args.out), periapical=args.periapical, panoramic=args.panoramic,
                                seed=args.seed, progress=lambda done, _total, _scene: bar.update(1))
    print(json.dumps({"annotations": str(path), "scenes": total, "seed": args.seed}))
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO each configured DIMSE destination; QIDO-RS each DICOMweb one."""
    from dicom_service.config import DicomWebDestination
    from dicom_service.node.destinations import verify

    settings = _settings(args)
    setup_logging(settings.log_level)
    if not settings.destinations:
        print("no destinations configured (destinations: in the settings file): nothing to echo")
    ok = True
    for dest in settings.destinations:
        how = "QIDO-RS" if isinstance(dest, DicomWebDestination) else "C-ECHO"
        try:
            good, why = verify(dest, settings.dicom.ae_title), ""
        except ConfigError as exc:  # a TLS file of this destination: report it, check the others
            good, why = False, f": {exc}"
        ok &= good
        print(f"{dest.name}: {'ok' if good else 'FAILED'} ({how}{', TLS' if dest.tls is not None else ''}){why}")
    return 0 if ok else 1


def _utc_time(text: str) -> str:
    """``--since`` / ``--until``: :func:`dicom_service.audit.as_trail_time`; anything else is
    a usage error (exit 2)."""
    from dicom_service.audit import as_trail_time

    try:
        return as_trail_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _row_count(text: str) -> int:
    """``--limit``: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def cmd_audit(args: argparse.Namespace) -> int:
    """Print the audit trail (:mod:`dicom_service.audit`): JSON lines, or a table."""
    from dicom_service.audit import AUDIT_FILE, AuditReadError, read_events

    settings = _settings(args)
    try:
        rows = read_events(Path(settings.storage.path) / AUDIT_FILE, since=args.since, until=args.until,
                           actor=args.actor, study_uid=args.study, kind=args.kind, limit=args.limit)
    except AuditReadError as error:
        print(f"dicom-service: {error}", file=sys.stderr)
        return 2
    if args.format == "jsonl":
        for row in rows:
            print(json.dumps(row, ensure_ascii=False, sort_keys=True))
        return 0
    if args.format == "atna":
        for message in _atna_messages(settings, rows):
            print(message.decode("utf-8"))
        return 0
    for row in rows:
        subject = row["study_uid"] or row["sop_instance_uid"] or ""
        print(f"{row['time']}  {row['kind']:<17} {row['actor']:<24} {row['client']:<21} {row['action']:<44} "
              f"{row['outcome']:<9} {subject}")
    return 0


def _atna_messages(settings: Settings, rows: list[dict]) -> list[bytes]:
    """The DICOM audit messages of trail ``rows`` (:mod:`dicom_service.atna.messages`),
    as the node would send them but without patient IDs (this reads the trail only)."""
    from dicom_service.atna.lookups import destination_lookup
    from dicom_service.atna.messages import AuditSource, MessageBuilder

    repository = settings.audit_repository
    source = AuditSource(source_id=(repository.source_id if repository else None) or settings.dicom.ae_title,
                         ae_title=settings.dicom.ae_title, host=socket.gethostname(),
                         site_id=repository.site_id if repository else None)
    builder = MessageBuilder(source, destination=destination_lookup(settings.destinations))
    return [message.xml for row in rows for message in builder.messages(row)]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="dicom-service", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="YAML settings file (default: $DICOM_SERVICE_CONFIG)")
        p.add_argument("--data", type=Path, help="storage folder (overrides storage.path)")

    serve = sub.add_parser("serve", help="run the node, API and workers")
    common(serve)
    serve.add_argument("--dicom-port", type=int)
    serve.add_argument("--http-port", type=int)
    serve.set_defaults(func=cmd_serve)

    process = sub.add_parser("process", help="process DICOM files or folders offline")
    common(process)
    process.add_argument("paths", nargs="+")
    process.add_argument("--out", required=True, help="output folder")
    process.add_argument("--no-progress", action="store_true", help="no progress bar")
    process.set_defaults(func=cmd_process)

    conf = sub.add_parser("conformance", help="print the accepted presentation contexts")
    conf.set_defaults(func=cmd_conformance)

    phantoms = sub.add_parser("phantoms", help="render synthetic training data sets")
    phantoms.add_argument("kind", choices=["implants", "video"], help="which data set")
    phantoms.add_argument("--out", required=True,
                          help="output folder (implants: annotations.json + images/; video: manifest.json + splits)")
    phantoms.add_argument("--periapical", type=int, default=200, help="implants: 416x416 periapical scenes")
    phantoms.add_argument("--panoramic", type=int, default=20, help="implants: 1000x2000 panoramic scenes")
    phantoms.add_argument("--train", type=int, default=96, help="video: training clips")
    phantoms.add_argument("--val", type=int, default=12, help="video: validation clips")
    phantoms.add_argument("--test", type=int, default=24, help="video: held-out test clips")
    phantoms.add_argument("--frames", type=int, default=12, help="video: frames per clip")
    phantoms.add_argument("--height", type=int, default=240, help="video: frame rows")
    phantoms.add_argument("--width", type=int, default=320, help="video: frame columns")
    phantoms.add_argument("--seed", type=int, default=0)
    phantoms.add_argument("--workers", type=int, default=1,
                          help="video: processes rendering clips at once (the same data set whatever the number)")
    phantoms.add_argument("--no-progress", action="store_true")
    phantoms.set_defaults(func=cmd_phantoms)

    add_train_parser(sub)
    add_eval_parser(sub)

    from dicom_service.audit import KINDS

    audit = sub.add_parser("audit", help="print the audit trail: who did what with which study")
    common(audit)
    audit.add_argument("--since", type=_utc_time, help="rows at or after this ISO 8601 date or time (UTC)")
    audit.add_argument("--until", type=_utc_time, help="rows before this ISO 8601 date or time (UTC)")
    audit.add_argument("--actor", help="rows of this actor only: a person's name as configured (Family^Given...), "
                                       "'service token N', 'unauthenticated', or a calling AE title")
    audit.add_argument("--study", help="rows about this Study Instance UID only")
    audit.add_argument("--kind", choices=KINDS, help="rows of this kind only")
    audit.add_argument("--limit", type=_row_count, default=1000,
                       help="at most this many rows, the newest (default 1000)")
    audit.add_argument("--format", choices=["jsonl", "table", "atna"], default="jsonl",
                       help="one JSON object per line (default), a table, or the DICOM audit messages (IHE ATNA) "
                       "of the rows, one XML document per line, without patient IDs")
    audit.set_defaults(func=cmd_audit)

    echo = sub.add_parser("echo", help="C-ECHO the configured destinations")
    common(echo)
    echo.set_defaults(func=cmd_echo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dicom-service`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"dicom-service: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
