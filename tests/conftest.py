"""Shared fixtures: a tiny synthetic bot and tiny GPT-2 settings that train in seconds."""
from __future__ import annotations

import collections
import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_MODEL = {"base": "scratch", "n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 400, "max_length": 64,
              "dropout": 0.0}

_PHRASES = {
    "cancel_order": ["cancel my order", "stop my purchase", "I want to cancel the order", "cancel order please"],
    "track_order": ["where is my package", "track my order", "has my parcel shipped", "order status please"],
    "get_refund": ["I want my money back", "refund please", "how do I get a refund", "return money for purchase"],
    "contact_human_agent": ["talk to a human", "connect me with an agent", "I need a real person", "speak to someone"],
}
_PREFIX = ["", "hi, ", "hello ", "please ", "hey there ", "excuse me, ", "quick question: "]
_SUFFIX = ["", " now", " today", " thanks", " asap", "?", " please", " right away"]


TINY_OUT_OF_SCOPE = ("reserve a hotel room in paris", "what's the score of the game", "recommend a good novel",
                     "set an alarm for seven", "translate hello into french", "how tall is mount everest")


def tiny_bot_dict(n_per_intent: int = 24, **training) -> dict:
    intents, test = {}, []
    for name, phrases in _PHRASES.items():
        combos = [p + core + s for core, p, s in itertools.product(phrases, _PREFIX, _SUFFIX)]
        combos = list(dict.fromkeys(combos))[:: max(1, len(combos) // (n_per_intent + 4))]
        intents[name] = {"examples": combos[:n_per_intent],
                         "responses": [f"Sure, I can help with {name.replace('_', ' ')}.",
                                       f"Let me take care of {name.replace('_', ' ')} for you."]}
        test += [{"text": t, "intent": name} for t in combos[n_per_intent:n_per_intent + 3]]
    test += [{"text": "what is the weather on mars", "intent": "out_of_scope"}]
    return {
        "name": "tiny", "fallback": "Sorry, could you rephrase?",
        # reads the earlier turn, as the demo bot does; no distance rule: the templated tiny bot's validation split
        # lies within 0.05 of its training examples, so the rule would refuse any message worded otherwise
        # (the tests of the distance rule switch it on: `trained_tiny_distance`)
        "settings": {"classify_context": 1, "distance_quantile": 0},
        "model": dict(TINY_MODEL),
        "training": {"seed": 0, "epochs": 6, "pretrain_epochs": 1, "batch_size": 16, "learning_rate": 3e-3,
                     "val_fraction": 0.15, "patience": 10, "checkpoint_every": 0, "reply_batch_size": 4,
                     # outlier exposure on the bot file's own examples only: the bundled 12,000-text corpus (used by
                     # the demo test) would cost every tiny training a TF-IDF pass
                     "outlier_corpus": "none", **training},
        "intents": intents, "out_of_scope": list(TINY_OUT_OF_SCOPE), "test": test,
    }


def dp_bot_file(tmp_path: Path, training: dict | None = None, **privacy) -> Path:
    """The tiny bot under DP with a small public corpus (so the tokenizer and LM pre-training are quick)."""
    pub = tmp_path / "public.txt"
    pub.write_text("\n".join(["where is my parcel", "cancel the order", "money back please", "talk to someone"] * 30))
    bot = tiny_bot_dict(**{"epochs": 3, "reply_batch_size": 4, **(training or {})})
    # the DP-SGD epochs are the training dict's (3 unless given), the head random unless asked: DP-SGD as the
    # tests of its mechanics expect it; the product's defaults (prototypes only) are tested by name
    bot["privacy"] = {"enabled": True, "target_epsilon": 8.0, "logical_batch": 16, "physical_batch": 8,
                      "public_corpus": str(pub), "epochs": bot["training"]["epochs"], "head_init": "random", **privacy}
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False))
    return path


@pytest.fixture
def tiny_bot_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bot_dict(), sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory) -> Path:
    """A tiny bot trained once for the whole session."""
    from bot.spec import load_bot
    from bot.train import train

    tmp = tmp_path_factory.mktemp("trained")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_bot_dict(epochs=40, reply_batch_size=8, reply_weight=1.0), sort_keys=False),
                    encoding="utf-8")
    spec, _ = load_bot(path)
    return train(spec, tmp / "model", progress=False, log=lambda *a: None)


@pytest.fixture(scope="session")
def trained_tiny_distance(tmp_path_factory) -> Path:
    """The tiny bot with the distance rule (the default outside the tests), trained once for the whole session."""
    from bot.spec import load_bot
    from bot.train import train

    tmp = tmp_path_factory.mktemp("trained-distance")
    bot = tiny_bot_dict(epochs=12, reply_weight=0.0)
    bot["settings"]["distance_quantile"] = 0.99
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(bot, sort_keys=False), encoding="utf-8")
    spec, _ = load_bot(path)
    return train(spec, tmp / "model", progress=False, log=lambda *a: None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], cwd: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`candor serve ARGS` in the background; returns the process and what it printed up to the URL line."""
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", *args, "--no-browser"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline, seen = time.time() + 240, []
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if "Running on local URL" in line:
            break
        if not line and proc.poll() is not None:
            break
    else:
        proc.kill()
    if proc.poll() is not None or "Running on local URL" not in "".join(seen):
        proc.kill()
        pytest.fail("the app did not start:\n" + "".join(seen))
    # Keep reading what it prints: a full pipe would block the server at its next log line.
    threading.Thread(target=lambda: collections.deque(proc.stdout, maxlen=200), daemon=True).start()
    return proc, "".join(seen)


def pytest_addoption(parser):
    parser.addoption("--training-precision", choices=("fp32", "bf16"), default=None,
                     help="train every model the bot file leaves in fp32 (the default) in this precision instead, "
                          "in this process and the `candor` subprocesses alike (DP training stays fp32)")


def pytest_configure(config):
    """Under pytest-xdist (the README's `-n 2`) two workers share the cores: each trains its in-process models on
    one thread, so the two do not oversubscribe them (subprocesses, such as the demo bot's training, keep theirs).
    `--training-precision` reaches every training run through the environment, subprocesses included."""
    if config.getoption("--training-precision"):
        os.environ["CANDOR_TRAINING_PRECISION"] = config.getoption("--training-precision")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def in_ci() -> bool:
    """CI is running (.ci/run sets CI=true unless the CI service set it): fail, never skip, on a missing tool,
    and run the short forms of the slowest tests."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


class Postgres:
    """A throwaway PostgreSQL server (Debian's `postgresql`) on a temporary directory and a local port."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb") else [])
        if not found:
            if in_ci():
                pytest.fail("PostgreSQL is not installed: apt-get install postgresql (.ci/run does it)")
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="candor-pg-"))  # not under pytest's root-only temp dir
        self.as_owner = []
        if os.getuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(self.dir, "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.dir / "data", free_port()
        self._run("initdb", "-D", self.data, "-U", "candor", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", self.data, "-l", self.dir / "log", "-w", "-t", "60", "start", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off")

    def _run(self, tool: str, *args) -> None:
        done = subprocess.run([*self.as_owner, str(self.bin / tool), *map(str, args)], capture_output=True, text=True,
                              check=False)
        if done.returncode:
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}")

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        from sqlalchemy import create_engine, text

        name = "t_" + uuid.uuid4().hex[:12]
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(text(f"CREATE DATABASE {name}"))
        engine.dispose()
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://candor@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    server = Postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty audit database: a SQLite file, then a real PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite")
    return request.getfixturevalue("postgres").new_database()
