"""Membership inference on the intent model: can an attacker tell training records from held-out ones?

Loss-threshold attack (Yeom et al., CSF 2018): the lower the intent loss of a record, the likelier it was
trained on. Members are the model's training records, non-members its held-out validation records and
the bot file's in-scope test examples — the same split the trainer made (`bot.train.training_split`),
read as served. The same number of each is scored. Reported: AUC of the attack (0.5 = no better than a
coin), the true-positive rate at 1% false positives (the low-FPR regime that matters, Carlini et al.
2022), and the ROC curve. A reference-model attack (LiRA) would need shadow models trained on
overlapping data: tens of trainings, not affordable on 2 CPU cores, so it is not offered.
"""
from __future__ import annotations

import random

import torch

from bot.classify import predict, predict_proba


def losses(model, enc, records) -> list[float]:
    """Intent cross-entropy of each record (text, intent)."""
    probs = predict_proba(model, enc, [r.text for r in records])
    y = torch.tensor([model.intents.index(r.intent) for r in records])
    return (-probs[torch.arange(len(records)), y].clamp_min(1e-12).log()).tolist()


def roc(member_scores: list[float], other_scores: list[float]) -> tuple[list[float], list[float]]:
    """(FPR, TPR) points of the attack 'member if score ≥ t', for every threshold t (higher = member)."""
    scored = sorted([(s, 1) for s in member_scores] + [(s, 0) for s in other_scores], key=lambda x: -x[0])
    pos, neg = len(member_scores), len(other_scores)
    fpr, tpr, tp, fp = [0.0], [0.0], 0, 0
    for k, (s, label) in enumerate(scored):
        tp, fp = tp + label, fp + 1 - label
        if k + 1 == len(scored) or scored[k + 1][0] != s:  # ties move together
            fpr.append(fp / neg), tpr.append(tp / pos)
    return fpr, tpr


def auc(member_scores: list[float], other_scores: list[float]) -> float:
    """P(a member's score > a non-member's) + ½ P(tie): the Mann-Whitney form of the ROC area."""
    wins = sum((m > o) + 0.5 * (m == o) for m in member_scores for o in other_scores)
    return wins / (len(member_scores) * len(other_scores))


def tpr_at(fpr: list[float], tpr: list[float], max_fpr: float) -> float:
    return max(t for f, t in zip(fpr, tpr) if f <= max_fpr)


def attack(model, enc, members, non_members, n: int, seed: int = 0, neighbours=None) -> dict:
    """Score `n` members and `n` non-members (or as many as the smaller side has). With the model's distance-rule
    index (bot/neighbours.py), the same records are also attacked by their distance, which the served bot shows:
    an indexed record is one of its own nearest examples, so the lower the distance, the likelier a member."""
    k = min(n, len(members), len(non_members)) // 10 * 10  # a round number: no exact count of held-out records
    if k < 10:
        raise ValueError(f"membership audit needs at least 10 members and 10 non-members; have {len(members)} and "
                         f"{len(non_members)}")
    rng = random.Random(seed)
    ins, outs = rng.sample(members, k), rng.sample(non_members, k)
    s_in = [-x for x in losses(model, enc, ins)]  # higher score = more likely a member
    s_out = [-x for x in losses(model, enc, outs)]
    fpr, tpr = roc(s_in, s_out)
    mean_in, mean_out = -sum(s_in) / k, -sum(s_out) / k
    out = {"attack": "loss threshold (intent cross-entropy)", "members": k, "non_members": k,
           "auc": auc(s_in, s_out), "tpr_at_1pct_fpr": tpr_at(fpr, tpr, 0.01),
           "tpr_at_10pct_fpr": tpr_at(fpr, tpr, 0.10), "mean_loss_members": mean_in,
           "mean_loss_non_members": mean_out, "roc": {"fpr": fpr, "tpr": tpr}}
    if neighbours is not None:
        d_in, d_out = ([-x for x in predict(model, enc, [r.text for r in rs], neighbours)[1].tolist()]
                       for rs in (ins, outs))
        fpr, tpr = roc(d_in, d_out)
        out["distance"] = {"attack": "distance threshold (the distance rule's distance, as served)",
                           "auc": auc(d_in, d_out), "tpr_at_1pct_fpr": tpr_at(fpr, tpr, 0.01),
                           "tpr_at_10pct_fpr": tpr_at(fpr, tpr, 0.10), "roc": {"fpr": fpr, "tpr": tpr}}
    return out
