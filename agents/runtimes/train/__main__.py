"""``python -m agents.runtimes.train --config FILE [--device auto|cpu|cuda]``.

The node agent starts this as a Workload subprocess and reads its stdout; every way the run
can end maps to one final event and one exit code (see :mod:`agents.runtimes.train.progress`).
"""

from __future__ import annotations

import argparse
import sys
import traceback

from agents.runtimes.train.checkpointing import checkpoint_target
from agents.runtimes.train.config import ConfigError, load_config
from agents.runtimes.train.progress import EXIT_BAD_CONFIG, EXIT_ERROR, Reporter
from agents.runtimes.train.stop import StopFlag


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m agents.runtimes.train", description=__doc__)
    parser.add_argument("--config", required=True, help="JSON file: model, data, steps, batchSize, ...")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one training job; returns the process exit code."""
    args = parse_args(argv)
    reporter = Reporter(steps=0, tokens_per_step=0)
    # Installed before torch is imported (slow), so a SIGTERM during start-up still ends with a
    # ``stopped`` line rather than a bare kill.
    stop = StopFlag().install()
    try:
        config = load_config(args.config)
        reporter = Reporter(steps=config.steps, tokens_per_step=0)
        for warning in config.warnings:
            reporter.emit("warning", message=warning)
            reporter.log(f"warning: {warning}")
        target = checkpoint_target(config)  # before torch: a missing directory fails at once too
        # Imported only now: torch takes seconds to load, and a bad config should fail at once.
        from agents.runtimes.train.loop import pick_device, train

        outcome = train(config, pick_device(args.device), reporter, stop, target)
    except ConfigError as exc:
        reporter.emit("failed", message=str(exc), field=exc.field)
        reporter.log(f"bad config: {exc}")
        return EXIT_BAD_CONFIG
    except Exception as exc:  # the parent needs a failed line whatever went wrong
        reporter.log(traceback.format_exc().rstrip())
        reporter.emit("failed", message=f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    if outcome.signal is not None:
        reporter.emit("stopped", step=outcome.step, loss=outcome.loss, signal=outcome.signal)
        reporter.log(f"stopped by signal {outcome.signal} after step {outcome.step}")
        return 128 + outcome.signal
    reporter.emit("succeeded", step=outcome.step, loss=outcome.loss, seconds=round(reporter.elapsed(), 3))
    # No loss when a job restarted after its last checkpoint had no step left to run.
    loss = f"loss {outcome.loss:.4f}" if outcome.loss is not None else "no step left to run"
    reporter.log(f"succeeded after {outcome.step} steps in {reporter.elapsed():.1f}s, {loss}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
