"""Fixtures shared by tests/ and features/."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A plan asks the Hub for download sizes; no test may reach the real one (tests that need a Hub serve their own).
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:1")
# Started in the background by a shell without job control (`make test &`), the suite inherits SIGINT ignored, and
# so would every rbee process it starts: the tests that press Ctrl-C on one would see nothing happen. A handler
# is not inherited across exec (an ignored signal is), so setting Python's own here gives each child its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from tests.models import fetch_smollm2

pytest_plugins = ["tests.proof.plugin"]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch_smollm2(tmp_path_factory.mktemp("smollm2"))


@pytest.fixture(scope="session")
def smollm2_folder(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a Hugging Face folder (float32 safetensors from its GGUF), for torch: a real model's logits,
    whose margins float noise between batch sizes does not cross (a random model's near-ties do)."""
    from tests.models import smollm2_folder as convert

    return convert(smollm2, tmp_path_factory.mktemp("smollm2-hf"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama (HF safetensors folder), made on the spot from Python's own sources."""
    from tests.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_llama_gguf(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny llama as an f32 GGUF, for llama.cpp and ctransformers."""
    from tests.models import tiny_llama_gguf as convert

    return convert(tiny_llama, tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.gguf")


TEST001_SCENARIOS = 62


def pytest_configure(config: pytest.Config) -> None:
    """`@test001-N` on a scenario in features/ names the original rbee's test-001 scenario N it covers."""
    for number in range(1, TEST001_SCENARIOS + 1):
        config.addinivalue_line("markers", f"test001-{number}: covers scenario {number} of the original test-001")


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS.append(int(exitstatus))


def pytest_unconfigure(config: pytest.Config) -> None:
    """MLX aborts the interpreter's teardown ("terminate called without an active exception") once it has run in a
    second thread, as the in-process engine tests make it: after everything is reported, leave without it."""
    import os
    import sys

    if "mlx.core" in sys.modules and _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
