"""A TCP/25 prober that runs for as long as a fault or churn test does.

`python -m tests.reliability.prober --src A --dst B --out FILE` (inside the lab's `sub`
namespace) makes one connect attempt after another from A to B:25 and keeps FILE (rewritten
atomically after every attempt) with the counts per outcome and the time of every attempt
that connected. From an enforced pool every attempt must be refused (reject) or time out
(drop); one `connected` is a leaked connection. `Prober` starts it and reads FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from op25b_lab.lab import Lab, Outcome, probe

ATTEMPT_TIMEOUT = 1.0  # a dropped SYN counts as blocked after this long


def run(src: str, dst: str, port: int, out: Path) -> None:
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    counts: Counter[str] = Counter()
    leaks: list[float] = []
    tmp = out.with_name(out.name + ".tmp")
    while not stop:
        (result,) = probe([(src, dst, port)], ATTEMPT_TIMEOUT)
        counts[str(result.outcome)] += 1
        if result.outcome is Outcome.CONNECTED:
            leaks.append(time.time())
        tmp.write_text(json.dumps({"counts": counts, "leaks": leaks}))
        os.replace(tmp, out)
        time.sleep(0.005)  # pacing: a few hundred attempts a second at most


class Prober:
    """The prober as a tracked process of the lab (killed with it)."""

    def __init__(self, lab: Lab, src: str, dst: str, port: int = 25) -> None:
        self.lab = lab
        self.out = lab.workdir / f"prober-{src}-{dst}-{port}.json"
        argv = [sys.executable, "-m", "tests.reliability.prober"]
        argv += ["--src", src, "--dst", dst, "--port", str(port), "--out", str(self.out)]
        self.proc: subprocess.Popen[str] | None = lab.start(lab.ns_sub, argv)

    def state(self) -> dict[str, Any]:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prober exited:\n{self.lab.output(self.proc)}")
        try:
            return dict(json.loads(self.out.read_text()))
        except (FileNotFoundError, ValueError):
            return {"counts": {}, "leaks": []}

    def attempts(self) -> int:
        return sum(self.state()["counts"].values())

    def leaks(self) -> list[float]:
        return list(self.state()["leaks"])

    def wait_attempts(self, more: int, deadline: float = 30.0) -> int:
        """Wait until `more` attempts beyond the current count have been made."""
        target = self.attempts() + more
        end = time.monotonic() + deadline
        while (n := self.attempts()) < target:
            if time.monotonic() > end:
                raise AssertionError(f"prober made {n} of {target} attempts in {deadline}s")
            time.sleep(0.02)  # poll interval
        return n

    def stop(self) -> dict[str, Any]:
        assert self.proc is not None
        final = self.state()
        self.lab.stop(self.proc)
        self.proc = None
        return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.prober")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    run(args.src, args.dst, args.port, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
