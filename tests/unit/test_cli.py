"""ui/cli.py and the verbs' arguments (ui/verbs/*: `add_arguments`, `run`): every verb parses, the train verb's
bot-file overrides land in the settings dataclasses' fields, MODEL is positional everywhere (`-m` kept for
`candor explain`). Nothing is trained or loaded."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from bot.spec import BotSpec, demo_bot_path
from ui import cli
from ui.verbs import DEFAULT_MODEL
from ui.verbs.train import OVERRIDES, _flag, apply_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def candor():
    return cli.parser()


def _spec() -> BotSpec:
    return BotSpec(name="b", intents={}, fallback="sorry")


# A command line per verb (and action) with what it must parse to.
COMMANDS = [
    (["train", "bot.yaml", "-o", "out", "--resume", "--device", "cpu", "--keep-checkpoints", "-q", "--nproc", "2",
      "--attack-report"],
     "train", dict(bot="bot.yaml", out="out", resume=True, device="cpu", keep_checkpoints=True, quiet=True, nproc=2,
                   attack_report=True, epochs=None, dp=None, adversarial=None)),
    (["train"], "train", dict(bot=None, out=None, resume=False, device="auto", nproc=1, attack_report=False)),
    (["eval", "m", "--bot", "b.yaml", "-o", "r", "--no-redact", "--target-oos-recall", "0.9", "--replies",
      "--reply-limit", "0", "--apply-threshold"],
     "evaluate", dict(model="m", bot="b.yaml", out="r", no_redact=True, target_oos_recall=0.9, replies=True,
                      reply_limit=0, apply_threshold=True)),
    (["eval"], "evaluate", dict(model=DEFAULT_MODEL, target_oos_recall=0.8, reply_limit=200)),
    (["redact", "a", "b", "--json", "-v"], "redact", dict(text=["a", "b"], json=True, verbose=True)),
    (["chat", "m", "--mode", "generate", "--device", "cuda"], "chat", dict(model="m", mode="generate", device="cuda")),
    (["chat"], "chat", dict(model=DEFAULT_MODEL, mode=None, device="cpu")),
    (["serve", "m", "--host", "::1", "--port", "80", "--auth-file", "u", "--audit-db", "d", "--device", "cuda",
      "--explain-steps", "8", "--no-browser"],
     "serve", dict(model="m", host="::1", port=80, auth_file="u", audit_db="d", device="cuda", explain_steps=8,
                   no_browser=True)),
    (["serve"], "serve", dict(model=None, host="127.0.0.1", port=7860)),  # None: the demo, trained first if missing
    (["attack", "m", "--recipe", "pwws", "-n", "5", "--time-budget", "9.5", "--query-budget", "7", "--bot", "b",
      "--seed", "3", "--list", "-q"],
     "attack", dict(model="m", recipe="pwws", n=5, time_budget=9.5, query_budget=7, bot="b", seed=3, list=True,
                    quiet=True)),
    (["attack"], "attack", dict(model=DEFAULT_MODEL, recipe="deepwordbug,pruthi,pwws", n=200, seed=0)),
    (["privacy", "report", "m"], "privacy", dict(privacy_verb="report", model="m")),
    (["privacy", "report"], "privacy", dict(model=DEFAULT_MODEL)),
    (["audit", "canaries", "b.yaml", "--repeats", "0,2", "--per-level", "1", "--digits", "3", "--candidates", "60",
      "--modes", "dp", "--epsilon", "4", "--epochs", "2", "--intent", "i", "-o", "o", "--card", "c", "-q"],
     "audit", dict(audit_verb="canaries", bot="b.yaml", repeats="0,2", per_level=1, digits=3, candidates=60,
                   modes="dp", epsilon=4.0, epochs=2, intent="i", out="o", card="c", quiet=True)),
    (["audit", "membership", "m", "--bot", "b", "-n", "10", "--seed", "1"],
     "audit", dict(audit_verb="membership", model="m", bot="b", n=10, seed=1)),
    (["audit", "membership"], "audit", dict(model=DEFAULT_MODEL, n=1000)),
    (["pretrain-public", "o", "--source", "sgd:f", "--source", "csv:g", "--epochs", "1", "--pretrain-epochs", "0",
      "--max-per-label", "9", "--seed", "2", "--device", "cpu", "-q"],
     "pretrain", dict(out="o", source=["sgd:f", "csv:g"], epochs=1, pretrain_epochs=0, max_per_label=9, seed=2,
                      device="cpu", quiet=True)),
    (["data", "validate", "b.yaml"], "data", dict(data_verb="validate", file="b.yaml")),
    (["data", "import", "sgd", "d1", "d2", "-o", "b.yaml", "--name", "n", "--services", "Banks_1"],
     "data", dict(data_verb="import", format="sgd", source=["d1", "d2"], out="b.yaml", name="n", services="Banks_1")),
]


@pytest.mark.parametrize("argv,module,expected", COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_each_verb_parses_its_own_arguments_and_runs_its_own_module(candor, argv, module, expected):
    module = importlib.import_module(f"ui.verbs.{module}")
    for p in (candor, cli.parser(argv[0])):  # the whole parser, and the one main() builds for this verb alone
        args = p.parse_args(argv)
        assert {k: getattr(args, k) for k in expected} == expected
        assert args.run is module.run


@pytest.mark.parametrize("verb", [v for v, _, _ in cli.VERBS])
def test_every_verb_has_help(candor, verb, capsys):
    with pytest.raises(SystemExit) as done:
        candor.parse_args([verb, "--help"])
    assert done.value.code == 0 and f"candor {verb}" in capsys.readouterr().out


def test_main_imports_only_the_verb_it_runs():
    """`candor --help` and `candor redact` start without loading PyTorch (the other verbs' modules)."""
    code = ("import contextlib, io, sys; from ui.cli import main\n"
            "for argv in (['--help'], ['redact', '--bogus']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), "
            "contextlib.redirect_stderr(io.StringIO()): main(argv)\n"
            "print(sorted(m for m in ('torch', 'ui.verbs.train', 'ui.verbs.explain', 'ui.verbs.redact') "
            "if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "['ui.verbs.redact']", res.stdout + res.stderr[-1000:]


def test_a_bad_verb_or_flag_is_a_usage_error(candor):
    for argv in (["bogus"], ["chat", "--bogus"], ["eval", "--reply-limit", "-1"], ["train", "--epochs", "2.5"],
                 ["train", "--head-init", "zeros"]):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2, argv


# ---------------------------------------------------------------- train: the bot-file overrides

# Every flag `candor train` has always had for a bot-file setting, and the field it sets.
FLAGS = {"--epochs": ("training", "epochs"), "--pretrain-epochs": ("training", "pretrain_epochs"),
         "--seed": ("training", "seed"), "--checkpoint-every": ("training", "checkpoint_every"),
         "--base": ("model", "base"), "--dp": ("privacy", "enabled"),
         "--target-epsilon": ("privacy", "target_epsilon"), "--delta": ("privacy", "delta"),
         "--max-grad-norm": ("privacy", "max_grad_norm"), "--logical-batch": ("privacy", "logical_batch"),
         "--physical-batch": ("privacy", "physical_batch"), "--lora-rank": ("privacy", "lora_rank"),
         "--head-init": ("privacy", "head_init"), "--prototype-share": ("privacy", "prototype_share"),
         "--dp-epochs": ("privacy", "epochs"), "--ngram-share": ("privacy", "ngram_share"),
         "--public-corpus": ("privacy", "public_corpus"), "--augment": ("robustness", "augment"),
         "--augment-share": ("robustness", "augment_share"), "--adversarial": ("robustness", "adversarial"),
         "--adversarial-recipe": ("robustness", "adversarial_recipe")}
# A value for each, of the field's type, unlike the field's default.
GIVEN = {"--epochs": ("7", 7), "--pretrain-epochs": ("0", 0), "--seed": ("11", 11), "--checkpoint-every": ("5", 5),
         "--base": ("gpt2", "gpt2"), "--dp": (None, True), "--target-epsilon": ("3", 3.0), "--delta": ("1e-6", 1e-6),
         "--max-grad-norm": ("0.5", 0.5), "--logical-batch": ("64", 64), "--physical-batch": ("16", 16),
         "--lora-rank": ("4", 4), "--head-init": ("random", "random"), "--prototype-share": ("0.25", 0.25),
         "--dp-epochs": ("3", 3), "--ngram-share": ("0.75", 0.75),
         "--public-corpus": ("pub.txt", "pub.txt"), "--augment": ("charswap, typo,", ["charswap", "typo"]),
         "--augment-share": ("0.5", 0.5), "--adversarial": (None, True), "--adversarial-recipe": ("pwws", "pwws")}


def test_every_override_flag_is_derived_from_a_settings_field(candor):
    train = candor._subparsers._group_actions[0].choices["train"]
    assert set(FLAGS) <= {flag for action in train._actions for flag in action.option_strings}
    assert {_flag(o): (o[0], o[1]) for o in OVERRIDES} == FLAGS


def test_override_flags_land_in_the_bot_files_settings_with_the_fields_types(candor):
    argv = ["train"]
    for flag, (text, _) in GIVEN.items():
        argv += [flag] if text is None else [flag, text]
    spec = _spec()
    apply_overrides(spec, candor.parse_args(argv))
    defaults = _spec()
    for flag, (section, name) in FLAGS.items():
        value, default = getattr(getattr(spec, section), name), getattr(getattr(defaults, section), name)
        assert value == GIVEN[flag][1] and type(value) is type(default), flag


def test_flags_not_given_leave_the_bot_file_as_it_is(candor):
    spec = _spec()
    spec.privacy.enabled, spec.robustness.adversarial, spec.training.epochs = True, True, 3  # as a bot file says
    before = dataclasses.replace(spec).to_dict()
    apply_overrides(spec, candor.parse_args(["train", "bot.yaml", "-q"]))
    assert spec.to_dict() == before


def test_override_help_shows_the_settings_defaults(candor, capsys):
    with pytest.raises(SystemExit):
        candor.parse_args(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for words in ("ε to reach over the planned epochs (default 8)", "records per step (default 256)",
                  "deepwordbug (default), pruthi or pwws", "DP-SGD alone (needs --dp-epochs); default prototype", "whole private step); --epochs",
                  "augmented in a step (default 0.3)", "fine-tuning epochs (overrides the bot file)"):
        assert words in shown


def test_serve_trains_the_demo_bot_with_a_plain_training_call(tmp_path, monkeypatch):
    """No model and none named: `candor serve` trains the bundled demo bot into models/support_demo, resuming."""
    import bot.train
    from safety.guard import served_text

    class Stop(Exception):
        pass

    calls = []

    def train(spec, out, **kw):
        calls.append((spec, out, kw))
        raise Stop

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bot.train, "train", train)
    with pytest.raises(Stop):
        cli.main(["serve", "--no-browser"])
    (spec, out, kw), = calls
    assert spec.name == "support_demo" and spec.path == str(demo_bot_path())
    assert Path(out) == Path(DEFAULT_MODEL) and kw["resume"] is True and kw["read"] is served_text


def test_the_demo_bot_is_measured_after_training_so_its_model_tab_shows_numbers(tmp_path, monkeypatch):
    """`train_demo` (what `candor serve` runs without a model) trains, then runs `candor eval` and a short
    `candor attack` on the model, in that order."""
    import bot.train
    import ui.verbs.attack
    import ui.verbs.evaluate
    from ui.verbs.serve import DEMO_ATTACK, train_demo

    calls = []
    monkeypatch.setattr(bot.train, "train", lambda spec, out, **kw: calls.append(("train", str(out))))
    monkeypatch.setattr(ui.verbs.evaluate, "run", lambda args: calls.append(("eval", args.model)) or 0)
    monkeypatch.setattr(ui.verbs.attack, "run", lambda args: calls.append(("attack", args.model, args.n,
                                                                           args.time_budget)) or 0)
    train_demo(tmp_path / "demo")
    n, budget = int(DEMO_ATTACK[DEMO_ATTACK.index("-n") + 1]), float(DEMO_ATTACK[DEMO_ATTACK.index("--time-budget") + 1])
    assert calls == [("train", str(tmp_path / "demo")), ("eval", str(tmp_path / "demo")),
                     ("attack", str(tmp_path / "demo"), n, budget)]


def test_serve_refuses_a_named_directory_without_a_model(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path / "nomodel"), "--no-browser"]) == 1
    assert "not a trained model directory" in capsys.readouterr().err


# ---------------------------------------------------------------- explain: MODEL positional, -m kept


@pytest.mark.parametrize("argv,model,text", [
    (["explain", "m", "cancel my order"], "m", "cancel my order"),
    (["explain", "cancel my order"], DEFAULT_MODEL, "cancel my order"),
    (["explain", "-m", "m", "cancel my order"], "m", "cancel my order"),
    (["explain", "cancel my order", "-m", "m", "--json"], "m", "cancel my order"),
    (["explain", "--model", "m", "cancel my order"], "m", "cancel my order"),
    (["explain", "--evaluate", "m"], "m", None),
    (["explain", "--evaluate", "-m", "m"], "m", None),
    (["explain", "--evaluate"], DEFAULT_MODEL, None),
    (["explain"], DEFAULT_MODEL, None),
])
def test_explain_takes_model_positionally_or_with_m(candor, argv, model, text):
    from ui.verbs.explain import model_and_text

    assert model_and_text(candor.parse_args(argv)) == (model, text)


def test_explain_refuses_two_models(capsys):
    assert cli.main(["explain", "-m", "a", "b", "cancel my order"]) == 2
    assert "MODEL given twice" in capsys.readouterr().err
