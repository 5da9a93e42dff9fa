"""Privacy audits: the exposure and membership arithmetic against hand computations, and a tiny bot whose
non-private model exposes its repeated canary (so the audit has teeth)."""
import json
import math
import random

import pytest
import yaml

from bot.model import read_card
from safety.canaries import exposure, make, planted
from safety.membership import auc, roc, tpr_at
from tests.conftest import tiny_bot_dict


def test_exposure_by_rank_is_log2_of_candidates_over_rank():
    candidates = [float(k) for k in range(1, 1024)]  # 1023 random secrets with log-perplexities 1..1023
    top = exposure(0.5, candidates, space_bits=20)  # better than every candidate: rank 1 of 1024
    assert top["rank"] == 1 and top["of"] == 1024 and top["exposure_sampled"] == pytest.approx(10.0)
    mid = exposure(255.5, candidates, space_bits=20)  # 255 candidates beat it: rank 256 -> log2(1024/256) = 2
    assert mid["rank"] == 256 and mid["exposure_sampled"] == pytest.approx(2.0)


def test_extrapolated_exposure_follows_the_fitted_tail():
    rng = random.Random(0)
    candidates = [rng.gauss(50.0, 4.0) for _ in range(20000)]
    # the normal (a skew-normal with no skew) puts 1/100 of its mass below mean - 2.3263 sd
    e = exposure(50.0 - 2.3263 * 4.0, candidates, space_bits=23.25)
    assert e["exposure"] == pytest.approx(math.log2(100), abs=0.35)
    assert exposure(50.0, candidates, 23.25)["exposure"] == pytest.approx(1.0, abs=0.1)  # the median: 1 bit
    assert exposure(-1e6, candidates, 23.25)["exposure"] == 23.25  # capped at log2 |R|


def test_membership_auc_and_roc_on_a_hand_made_case():
    members, others = [3.0, 2.0, 1.0], [0.0, 2.0]
    # pairs (m > o): (3,0) (3,2) (2,0) (1,0) = 4 wins, (2,2) a tie = 0.5, (1,2) a loss: 4.5 / 6
    assert auc(members, others) == pytest.approx(0.75)
    fpr, tpr = roc(members, others)
    assert (fpr, tpr) == ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    assert tpr_at(fpr, tpr, 0.0) == pytest.approx(1 / 3) and tpr_at(fpr, tpr, 0.5) == 1.0


def test_canaries_are_random_and_planted_as_often_as_asked():
    canaries = make([0, 1, 4], per_level=2, digits=7)
    assert len({c.secret for c in canaries}) == 6 and all(len(c.secret.split()) == 7 for c in canaries)
    records = planted(canaries, "track_order")
    assert len(records) == 2 * (0 + 1 + 4)  # controls are never planted
    assert all(c.secret in r.reply and c.secret not in r.text for c in canaries for r in records if c.secret in r.reply)


def test_non_private_tiny_bot_exposes_its_repeated_canary_and_the_audits_write_reports(tmp_path, capsys):
    from ui.cli import main

    bot = tmp_path / "tiny.yaml"
    bot.write_text(yaml.safe_dump(tiny_bot_dict(epochs=15, reply_weight=1.0, reply_batch_size=8), sort_keys=False))
    out = tmp_path / "audit"
    assert main(["audit", "canaries", str(bot), "--modes", "plain", "--repeats", "0,16", "--per-level", "1",
                 "--digits", "5", "--candidates", "400", "-o", str(out), "-q", "--card", str(out / "plain")]) == 0
    report = json.loads((out / "canaries.json").read_text())
    (run,) = report["runs"]
    by = {c["repeats"]: c for c in run["canaries"]}
    assert by[16]["exposure"] > 8 and by[16]["rank"] == 1  # memorised: it beats every random secret
    assert by[0]["exposure"] < by[16]["exposure"]
    assert (out / "canaries.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "| plain | ∞ (no DP) | 16 |" in printed and "0 (control)" in printed

    assert main(["audit", "membership", str(out / "plain"), "-n", "200"]) == 0
    result = json.loads((out / "plain" / "reports" / "membership.json").read_text())
    assert 0 <= result["auc"] <= 1 and result["members"] == result["non_members"] >= 10
    card = read_card(out / "plain")
    assert set(card["audits"]) == {"canaries", "membership"}
    md = (out / "plain" / "model_card.md").read_text()
    assert "## Privacy audits" in md and "Membership inference" in md and "16x" in md
