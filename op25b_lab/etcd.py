"""A real, throw-away etcd member on loopback, for the fleet tests, `make demo-fleet` and bench.

Debian's `etcd-server` (3.4) is started with a temporary data directory and free ports on
127.0.0.1, plus a Unix socket, so that lab gateways in their own network namespaces can reach
it too: `expose(lab, ns)` starts a socat inside that namespace listening on the namespace's
own 127.0.0.1:PORT and forwarding to the socket (nothing is added to the host's network).
Readiness is a real v3 request answered, never a sleep. `kill()` SIGKILLs the member by pid
(the "etcd died" failure); `start()` again brings it back on the same data and ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from op25b_lab.lab import Lab

ETCD_PATHS = ("/usr/bin/etcd", "/usr/local/bin/etcd")


def etcd_binary() -> str | None:
    found = shutil.which("etcd")
    if found:
        return found
    return next((p for p in ETCD_PATHS if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Tls:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(directory: Path) -> Tls:
    """Generate the certificates with openssl (EC P-256, valid one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)

    d = directory
    run("req", "-x509", *key, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        "-days", "1", "-subj", "/CN=op25b-test-ca")  # fmt: skip
    for who, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        ext = d / f"{who}.ext"
        san = "subjectAltName=IP:127.0.0.1\n" if who == "server" else ""
        ext.write_text(san + f"extendedKeyUsage={usage}\n")
        run("req", *key, "-keyout", str(d / f"{who}.key"), "-out", str(d / f"{who}.csr"),
            "-subj", f"/CN=op25b-test-{who}")  # fmt: skip
        run("x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
            "-out", str(d / f"{who}.pem"), "-extfile", str(ext))  # fmt: skip
    return Tls(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


class EtcdServer:
    """One etcd member; `url` is the client URL on the host's loopback. With `tls`, clients
    must speak HTTPS and present a certificate signed by the test CA."""

    def __init__(self, prefix: str = "/op25b", *, tls: bool = False) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd not installed (Debian package etcd-server; scripts/bootstrap)")
        self.binary = binary
        self.workdir = Path(tempfile.mkdtemp(prefix="op25b-etcd-"))
        self.data_dir = self.workdir / "data"
        self.port = free_port()
        self.peer_port = free_port()
        self.prefix = prefix
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "etcd.log"
        self.tls = make_tls(self.workdir / "tls") if tls else None

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def store_url(self) -> str:
        """The op25b-ctl --store URL for this member."""
        return f"{'etcds' if self.tls else 'etcd'}://127.0.0.1:{self.port}{self.prefix}"

    @property
    def socket_file(self) -> Path:
        # etcd names a unix listener "unix://NAME:PORT" and creates the file NAME:PORT in its cwd
        return self.workdir / f"etcd.sock:{self.port}"

    @property
    def socket_path(self) -> Path:
        """A colon-free name for the socket (socat reads ':' as the start of its options)."""
        return self.workdir / "client.sock"

    def start(self, deadline: float = 30.0) -> Self:
        """Start (or restart) the member and return once it answers a v3 request."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        with contextlib.suppress(FileNotFoundError):
            self.socket_file.unlink()  # a killed member leaves its socket file behind
        if not self.socket_path.is_symlink():
            self.socket_path.symlink_to(self.socket_file.name)
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary,
            "--name", "op25b-test",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"{self.client_url},unix://etcd.sock:{self.port}",
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"op25b-test={peer}",
            "--initial-cluster-state", "new",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.tls is not None:
            argv += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--client-cert-auth",
                "--trusted-ca-file", str(self.tls.ca),
            ]  # fmt: skip
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.monotonic() + deadline
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited ({self.proc.returncode}): {self.tail()}")
            if time.monotonic() >= end:
                raise RuntimeError(f"etcd not answering after {deadline}s: {self.tail()}")
            time.sleep(0.05)  # poll interval for a real request, not a readiness guess
        return self

    def answers(self) -> bool:
        """True if the member serves a real v3 range request right now."""
        req = urllib.request.Request(
            f"{self.client_url}/v3/kv/range",
            data=json.dumps({"key": "AA=="}).encode(),
            method="POST",
        )
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(req, timeout=1, context=context) as resp:
                return bool(resp.status == 200 and "header" in json.loads(resp.read()))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL the member by pid (no graceful shutdown: the 'etcd died' failure)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def expose(self, lab: Lab, ns: str, deadline: float = 10.0) -> None:
        """Make the member reachable as 127.0.0.1:PORT inside namespace `ns` of `lab`
        (a socat there, tracked and killed by the lab), and wait until it forwards."""
        lab.start(
            ns,
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr",
                f"UNIX-CONNECT:{self.socket_path}",
            ],
        )
        end = time.monotonic() + deadline
        while lab.run(
            ns, ["socat", "-u", "/dev/null", f"TCP:127.0.0.1:{self.port}"], check=False
        ).returncode:
            if time.monotonic() >= end:
                raise RuntimeError(f"etcd not reachable inside {ns} after {deadline}s")
            time.sleep(0.05)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()
