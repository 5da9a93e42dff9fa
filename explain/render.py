"""Show an explanation: coloured words in a terminal, an HTML audit report, or JSON."""
from __future__ import annotations

import html
import json

from explain.attribution import Explanation

# The one colour legend, everywhere (terminal, HTML report, web app): red toward the intent, purple against.
TOWARD, AGAINST = "red", "purple"
LEGEND = f"{TOWARD}: toward it, {AGAINST}: against"
_ANSI = {TOWARD: [None, 224, 217, 210, 203, 160], AGAINST: [None, 189, 183, 141, 98, 54]}  # xterm-256, light to dark
_RGB = {TOWARD: "220,38,38", AGAINST: "126,34,206"}


def colour_of(score: float) -> str:
    return TOWARD if score > 0 else AGAINST


def _ansi(score: float) -> str:
    """A background for each word: red toward the intent, purple against; stronger = darker."""
    level = min(5, int(abs(score) * 5 + 0.5))
    if level == 0:
        return ""
    return f"\033[48;5;{_ANSI[colour_of(score)][level]}m\033[30m"


def terminal(e: Explanation, colour: bool = True) -> str:
    words = " ".join((_ansi(w.score) + w.word + "\033[0m") if colour and _ansi(w.score) else w.word for w in e.words)
    lines = [
        f"intent: {e.intent}  (confidence {e.confidence:.3f}; the bot chose {e.predicted})",
        f"words:  {words}",
        "scores: " + ", ".join(f"{w.word} {w.score:+.2f}" for w in sorted(e.words, key=lambda w: -abs(w.score))[:8]),
        f"integrated gradients: {e.n_steps} steps, baseline {e.baseline}; "
        f"P({e.intent}) {e.baseline_probability:.3f} -> {e.confidence:.3f}, attributions sum {e.attribution_sum:.3f}, "
        f"convergence delta {e.delta:.1e}",
    ]
    if e.earlier_turns:
        lines.insert(2, f"{e.earlier_turns.word}: {e.earlier_turns.score:+.2f} (the earlier user turns read before the "
                        "message, scored as one item)")
    cut = [w.word for w in e.words if not w.read]
    if cut:
        lines.append(f"not read: the last {len(cut)} word(s) were cut by the model's length limit and have no score")
    if e.reply:
        lines.append("reply:  " + ", ".join(f"{w['word']} {w['score']:+.2f}" for w in e.reply["words"]))
    return "\n".join(lines)


def as_json(e: Explanation) -> str:
    return json.dumps(e.to_dict(), indent=2, ensure_ascii=False)


def _span(word: str, score: float) -> str:
    colour = f"rgba({_RGB[colour_of(score)]},{abs(score):.2f})"
    return (f'<span class="w" style="background:{colour}" title="{score:+.3f}">{html.escape(word)}</span>')


def html_report(e: Explanation) -> str:
    """A self-contained HTML page; every piece of user text is escaped."""
    words = " ".join(_span(w.word, w.score) if w.read else f'<span class="w u" title="not read">{html.escape(w.word)}</span>'
                     for w in e.words)
    if e.earlier_turns:
        words = _span(e.earlier_turns.word, e.earlier_turns.score) + " " + words
    cut = sum(not w.read for w in e.words)
    rows = "".join(f"<tr><td>{html.escape(w.word)}</td><td>{w.score:+.3f}</td><td>{w.raw:+.4f}</td></tr>" if w.read else
                   f"<tr><td>{html.escape(w.word)}</td><td colspan=2>not read</td></tr>" for w in e.words)
    reply = ""
    if e.reply:
        reply = ("<h2>What shaped the reply</h2><p>" + " ".join(_span(w["word"], w["score"]) for w in e.reply["words"])
                 + f"</p><p class=m>{html.escape(e.reply['method'])}</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Candor explanation: {html.escape(e.intent)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:50em;margin:2em auto}}.w{{padding:2px 3px;border-radius:3px}}
p.t{{font-size:1.4em;line-height:2}}.u{{color:#888;text-decoration:line-through}}.m{{color:#555}}td{{padding:2px 10px}}</style></head><body>
<h1>Intent <code>{html.escape(e.intent)}</code> — confidence {e.confidence:.3f}</h1>
<p class=m>The bot chose <code>{html.escape(e.predicted)}</code>. {TOWARD.capitalize()} words pushed toward
<code>{html.escape(e.intent)}</code>, {AGAINST} words against it.</p>
<p class=t>{words}</p>{f"<p class=m>{html.escape(e.earlier_turns.word)}: the earlier user turns the classifier read before this message, scored as one item ({e.earlier_turns.score:+.3f}, attribution {e.earlier_turns.raw:+.4f}).</p>" if e.earlier_turns else ""}{f"<p class=m>Not read: the last {cut} word(s), struck through, were cut by the model's length limit and have no score.</p>" if cut else ""}
<table><tr><th>word</th><th>score [-1, 1]</th><th>attribution</th></tr>{rows}</table>
<p class=m>{html.escape(e.method)}, {e.n_steps} steps, baseline: {html.escape(e.baseline)}.
P(intent) {e.baseline_probability:.3f} at the baseline, {e.confidence:.3f} for the text; attributions sum to
{e.attribution_sum:.4f}, convergence delta {e.delta:.1e}.</p>{reply}
</body></html>
"""
