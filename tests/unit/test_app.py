"""The Faust application as built for the worker (no broker needed)."""

from __future__ import annotations

import logging

import faust

from stream_processors.app import app


def _root_logger_set_up_by(worker: faust.Worker, name: str, level: int) -> logging.Logger:
    """What Faust's worker does to the root logger at startup (mode calls this hook once
    it has configured logging at ``level``), on a logger of the test's own."""
    logger = logging.getLogger(name)
    logger.handlers = [logging.StreamHandler()]
    logger.setLevel(level)
    worker.on_setup_root_logger(logger, level)
    return logger


def test_a_worker_at_warn_keeps_its_loggers_at_warn() -> None:
    # Faust's own worker turns the root logger to DEBUG at warn and above, to spin its
    # terminal spinner on every record: every debug line of Faust and aiokafka was then
    # built and handled (a third of the consumer thread's busy time).
    stock = _root_logger_set_up_by(faust.Worker(app, loglevel="warn"), "test-stock", logging.WARN)
    assert stock.level == logging.DEBUG  # what the fix is for; fails if Faust changes it

    ours = _root_logger_set_up_by(app.Worker(loglevel="warn"), "test-ours", logging.WARN)
    assert ours.level == logging.WARN
    assert not ours.isEnabledFor(logging.DEBUG) and not ours.isEnabledFor(logging.INFO)
    assert [h.level for h in ours.handlers] == [logging.NOTSET]  # no spinner's handler
