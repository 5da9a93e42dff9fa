"""TextAttack's attack recipes for an intent classifier, and which of them run offline.

A recipe that needs a resource Candor cannot have offline (word embeddings or sentence encoders
fetched on first use, masked language models from a model hub) is listed with the reason and
refused, never skipped silently or replaced by something else. `candor attack --list` prints this
table; nothing here imports TextAttack.
"""
from __future__ import annotations

from dataclasses import dataclass

from bot.spec import ADVERSARIAL_RECIPES


@dataclass(frozen=True)
class Recipe:
    name: str  # what `--recipe` takes
    cls: str  # class in textattack.attack_recipes
    perturbs: str  # what it changes
    paper: str
    missing: str = ""  # why it cannot run here; "" = runs offline

    @property
    def available(self) -> bool:
        return not self.missing


_COUNTER_FITTED = "counter-fitted word embeddings (downloaded from TextAttack's S3 bucket on first use)"
_USE = "the Universal Sentence Encoder (TensorFlow Hub)"
_BERT = "a BERT masked language model (Hugging Face Hub)"

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("deepwordbug", "DeepWordBugGao2018", "characters: swap, substitute, delete, insert (edit distance ≤ 30)",
           "Gao et al. 2018"),
    Recipe("pruthi", "Pruthi2019", "characters: one keyboard typo (swap, delete, insert, QWERTY neighbour) in one word",
           "Pruthi et al. 2019"),
    Recipe("pwws", "PWWSRen2019", "words: WordNet synonyms, by probability-weighted word saliency", "Ren et al. 2019"),
    Recipe("leap", "LEAP2023", "words: WordNet synonyms, particle swarm search (thousands of queries per message)",
           "Yang et al. 2023"),
    Recipe("textfooler", "TextFoolerJin2019", "words: embedding neighbours", "Jin et al. 2019",
           f"needs {_COUNTER_FITTED} and {_USE}"),
    Recipe("bae", "BAEGarg2019", "words: BERT masked-LM replacements", "Garg & Ramakrishnan 2019",
           f"needs {_BERT} and {_USE}"),
    Recipe("bert-attack", "BERTAttackLi2020", "words: BERT masked-LM replacements", "Li et al. 2020",
           f"needs {_BERT} and {_USE}"),
    Recipe("a2t", "A2TYoo2021", "words: embedding neighbours", "Yoo & Qi 2021",
           f"needs {_COUNTER_FITTED} and a Sentence-BERT model (Hugging Face Hub)"),
    Recipe("textbugger", "TextBuggerLi2018", "characters and words", "Li et al. 2018",
           f"needs GloVe embeddings (TextAttack's S3 bucket) and {_USE}"),
    Recipe("alzantot", "GeneticAlgorithmAlzantot2018", "words: embedding neighbours, genetic search",
           "Alzantot et al. 2018", f"needs {_COUNTER_FITTED}"),
    Recipe("faster-alzantot", "FasterGeneticAlgorithmJia2019", "words: embedding neighbours, genetic search",
           "Jia et al. 2019", f"needs {_COUNTER_FITTED} and a Learning-to-Write language model (S3)"),
    Recipe("iga", "IGAWang2019", "words: embedding neighbours, improved genetic search", "Wang et al. 2019",
           f"needs {_COUNTER_FITTED}"),
    Recipe("pso", "PSOZang2020", "words: HowNet sememe substitutes, particle swarm", "Zang et al. 2020",
           "needs HowNet sememe data (OpenHowNet downloads it on first use)"),
    Recipe("clare", "CLARE2020", "words: masked-LM replace, insert, merge", "Li et al. 2020",
           f"needs a DistilRoBERTa masked language model (Hugging Face Hub) and {_USE}"),
    Recipe("checklist", "CheckList2020", "words: names, locations, numbers, contractions", "Ribeiro et al. 2020",
           "needs flair's NER tagger (Hugging Face Hub) for names and locations"),
    Recipe("kuleshov", "Kuleshov2017", "words: embedding neighbours", "Kuleshov et al. 2018",
           "needs GloVe-based thought vectors (S3) and GPT-2 (Hugging Face Hub)"),
    Recipe("hotflip", "HotFlipEbrahimi2017", "words: gradient-guided swaps", "Ebrahimi et al. 2017",
           f"needs {_COUNTER_FITTED}, NLTK's POS tagger and a word-level embedding layer (Candor's GPT-2 uses BPE)"),
    Recipe("input-reduction", "InputReductionFeng2018", "words: deletes words while the prediction stays",
           "Feng et al. 2018", "not an attack on accuracy (it finds the fewest words that keep the decision); "
           "`candor explain` shows which words decide"),
]}


class UnavailableRecipe(ValueError):
    pass


def check(names: list[str]) -> list[Recipe]:
    """The recipes for `names`, or an error that says which are unknown or cannot run offline, and why."""
    problems = []
    for n in names:
        if n not in RECIPES:
            problems.append(f"unknown recipe '{n}' (offline: {', '.join(offline())})")
        elif not RECIPES[n].available:
            problems.append(f"recipe '{n}' is unavailable: it {RECIPES[n].missing}"
                            if RECIPES[n].missing.startswith("needs") else f"recipe '{n}' is not offered: {RECIPES[n].missing}")
    if problems:
        raise UnavailableRecipe("; ".join(problems))
    return [RECIPES[n] for n in names]


def offline() -> list[str]:
    return [r.name for r in RECIPES.values() if r.available]


def table() -> str:
    """What `candor attack --list` prints."""
    rows = [("recipe", "status", "perturbs", "paper")]
    for r in RECIPES.values():
        rows.append((r.name, "offline" if r.available else "UNAVAILABLE", r.perturbs, r.paper))
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(row[i].ljust(width[i]) for i in range(3)) + "  " + row[3] for row in rows]
    lines.append("")
    lines += [f"{r.name}: unavailable — {r.missing}." for r in RECIPES.values() if not r.available]
    lines.append("")
    lines.append(f"Adversarial training (robustness.adversarial_recipe) can use: {', '.join(ADVERSARIAL_RECIPES)}.")
    return "\n".join(lines)
