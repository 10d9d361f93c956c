"""A device whose SSH server accepts TCP and never answers: the lab retries it as its
suite says, then shows it failed, with the tries it really made."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from support import run_cli

from edgeshrink.testmodels import make_llama_gguf


@pytest.fixture
def silent_port() -> int:
    """A real TCP listener on 127.0.0.1 that accepts and then says nothing."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_device_that_never_handshakes_is_retried_then_failed(
    silent_port: int, tmp_path: Path
) -> None:
    make_llama_gguf(tmp_path / "nano.gguf", size="nano", ftype="f32")
    (tmp_path / "lab.toml").write_text(
        f'[[device]]\nname = "silent"\nhost = "127.0.0.1"\nport = {silent_port}\n'
        'user = "root"\nprofile = "raspberry-pi-5-8gb"\n'
    )
    (tmp_path / "suite.toml").write_text(
        'name = "s"\n[run]\nretries = 1\nretry_delay_s = 0\n[[job]]\nname = "j"\n'
        'model = "nano.gguf"\nquant = "Q8_0"\n[job.bench]\nreps = 1\nprompt_tokens = 8\n'
        "gen_tokens = 4\n"
    )
    run = run_cli("lab", "run", "-i", "lab.toml", "-s", "suite.toml", cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stdout + run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("silent"))
    cells = row.split()
    assert cells[2] == "failed"
    assert "device failed after 2 attempt(s)" in row
    assert cells[7] == "2", row  # the TRIES column: two tries, not 0
