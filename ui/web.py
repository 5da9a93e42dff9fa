"""The Gradio web app: Chat, Audit and Model tabs over one ChatService.

Every piece of user text shown in the page is HTML-escaped here (chat) or rendered as plain text
by the component (highlights, tables). The Audit tab is shown only to auditors (`ui/auth.Access`),
and each audit handler and the export route check the request again.
"""
from __future__ import annotations

import csv
import html
import json
import uuid
from pathlib import Path

import gradio as gr
from gradio.themes.utils.fonts import LocalFont

from bot.card import Card, Privacy
from bot.spec import EARLIER, OUT_OF_SCOPE
from bot.store import Filter
from bot.turn import Answer
from explain.render import LEGEND
from safety.guard import Rejected
from ui.auth import Access, gradio_user, identity
from ui.http import locked_message
from ui.service import ChatService

EXAMPLES = ["I want to cancel my order", "where is my package?", "how do I get a refund",
            "my card 4111 1111 1111 1111 was charged twice, email me at jo@example.com"]
CSS = "#decision {min-height: 4em}"
REFUSED = "⚠ Not sent: "  # how a refused message's reply starts: it is no turn of the conversation
MODEL_EVENTS = "model"  # one concurrency group for every event that runs the model (chat, retry, API)
# Gradio's default theme loads a font from Google; this one uses the fonts Gradio serves itself (no third party)
THEME = gr.themes.Default(font=[LocalFont("IBM Plex Sans"), "ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=[LocalFont("IBM Plex Mono"), "ui-monospace", "monospace"])
MODEL_CONCURRENCY = 16  # model events in flight: they wait in the batcher (ui/service.py) and run in batches


def _user(text: str) -> str:
    """Shown as typed, never as markup."""
    return html.escape(text).replace("\n", "<br>")


def _typed(shown: str) -> str:
    """Back from `_user` to what was typed (for retry and undo)."""
    return html.unescape((shown or "").replace("<br>", "\n"))


def highlights(words: list) -> list[tuple[str, float | None]]:
    """(word, score) pairs as HighlightedText wants them, with plain spaces between the words."""
    out: list[tuple[str, float | None]] = []
    for i, (w, s) in enumerate(words):
        if i:
            out.append((" ", None))
        out.append((w, None if s is None else float(s)))  # None: a word the model never read, shown unmarked
    return out


def decision_markdown(a: Answer) -> str:
    fallback = f"**yes** ({a.fallback_reason})" if a.fallback else "no"
    lines = [f"**Intent:** `{a.intent}` · **confidence** {a.confidence:.2f} · **fallback:** {fallback}"]
    if a.distance is not None:
        lines.append(f"**Distance to the training examples:** {a.distance:.3f} (the bot falls back as unfamiliar "
                     f"beyond {a.distance_threshold:.3f})")
    if a.redacted_types:
        lines.append(f"Redacted before logging: {', '.join(sorted(set(a.redacted_types)))}")
    if a.attributions and a.attributions[0][0] == EARLIER:
        lines.append(f"**{EARLIER}:** the classifier read your earlier message(s) before this one; its colour is how "
                     "much it pushed toward the intent, on the same scale as the words.")
    unread = sum(s is None for _, s in a.attributions)
    if unread:
        lines.append(f"**Not read:** the last {unread} word(s) were cut by the model's length limit; they are shown "
                     "unmarked and played no part in the decision.")
    delta = f"explanation delta {a.explanation_delta:.1e}" if a.explanation is not None else "explanation coming"
    lines.append(f"<small>turn #{a.turn_id} · model {a.model_version} · {delta}</small>")
    return "\n\n".join(lines)


def audit_filter(intent_, lo_, hi_, fallback_, since_, until_) -> Filter:
    """The Audit tab's filters (bot/store.py `Filter.parse`; also the export route's and `GET /v1/turns`' parameters)."""
    try:
        return Filter.parse(intent_, lo_, hi_, fallback_, since_, until_)
    except ValueError as e:
        raise gr.Error(str(e)) from None


AUDIT_HEADERS = ["id", "time", "session", "text", "intent", "confidence", "fallback"]
HEADER_PRIVACY = ("Before anything is logged, personal details (names, addresses, dates of birth, contact, card and "
                  "account numbers, IDs, passwords) are replaced by placeholders; the redactor is measured, not perfect, "
                  "and can miss an unusual name.")


def _table(rows: list[dict]) -> list[list]:
    return [[r["id"], r["time"], r["session"][:8], r["text"], r["intent"], round(r["confidence"], 3),
             "yes" if r["fallback"] else "no"] for r in rows]


def build(service: ChatService, access: Access) -> gr.Blocks:
    name = service.card.get("bot", {}).get("name", "bot")
    with gr.Blocks(title=f"Candor · {name}", css=CSS, analytics_enabled=False, theme=THEME) as app:
        privacy = Privacy.of(service.card)  # the guarantee is worded by the card alone (bot/card.py)
        guarantee = f" {privacy.headline()}." if privacy.dp else ""
        gr.Markdown(f"# Candor · {html.escape(name)}\nEvery reply comes with the words that chose its intent. "
                    f"{HEADER_PRIVACY}{guarantee}", elem_id="header")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                _chat_tab(service)
            with gr.Tab("Audit", id="audit"):
                locked = gr.Markdown(locked_message(access), elem_id="audit-locked")
                with gr.Column(visible=False) as panel:
                    _audit_tab(service, access)
            with gr.Tab("Model", id="model"):
                _model_tab(service)

        def show_audit(request: gr.Request):
            ok = access.may_audit(request)
            return gr.update(visible=not ok), gr.update(visible=ok)

        app.load(show_audit, None, [locked, panel], api_name=False, queue=False)

        def api_respond(message: str, request: gr.Request, wait_for_explanation: bool = False) -> dict:
            """One turn: reply, intent, confidence, fallback (text already redacted), as soon as they are decided; its
            word attributions too with `wait_for_explanation` (otherwise empty: the Audit tab shows them)."""
            try:
                answer = service.respond(message, conversation_id(request, "api-"))
                return (service.explained(answer) if wait_for_explanation else answer).to_dict()
            except Rejected as e:
                raise gr.Error(str(e)) from None

        gr.api(api_respond, api_name="respond", concurrency_limit=MODEL_CONCURRENCY, concurrency_id=MODEL_EVENTS)
    return app


def conversation_id(request: gr.Request, prefix: str = "") -> str:
    """Whose conversation a request continues: the server-issued identity's (the signed-in user, or the client id
    this server signed: ui/auth.py) and the Gradio session's. Conversations are shared by replicas, so a session hash
    the client chose must never reach another identity's."""
    owner = identity(request)
    if owner is None:  # ui/http.SessionOwners refuses a queue join without one: only a direct call gets here
        raise gr.Error("No identity: reload the page.")
    session = request.session_hash or uuid.uuid4().hex  # no session: a turn without history
    return f"{prefix}{owner}/{session}"


def _refused(history: list, index: int) -> bool:
    """Whether the user message at `index` was refused (its reply is the refusal)."""
    nxt = history[index + 1] if index + 1 < len(history) else None
    return bool(nxt) and nxt.get("role") == "assistant" and str(nxt.get("content", "")).startswith(REFUSED)


def turns_in(history: list) -> int:
    """Turns of the conversation in a chat history: user messages that were not refused."""
    return sum(1 for i, m in enumerate(history) if m.get("role") == "user" and not _refused(history, i))


def _chat_tab(service: ChatService) -> None:
    words_label = f"Words that chose the intent ({LEGEND})"
    turn = gr.State(None)  # the Answer just sent, until its explanation is shown
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(type="messages", height=460, elem_id="chatbot", show_label=False,
                                 render_markdown=False, sanitize_html=True, show_copy_button=True)
            msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, elem_id="message",
                             max_length=service.max_chars, submit_btn=True)
            gr.Examples(EXAMPLES, inputs=msg, label="Try")
            clear = gr.Button("Clear conversation", size="sm")
        with gr.Column(scale=2):
            decision = gr.Markdown("Send a message to see how the bot decides.", elem_id="decision")
            words = gr.HighlightedText(label=words_label,
                                       elem_id="attributions", combine_adjacent=False, show_legend=False,
                                       show_inline_category=False)
            ranking = gr.Label(label="Top intents", num_top_classes=5, elem_id="ranking")

    outputs = [chatbot, msg, decision, words, ranking, turn]
    explaining = "Finding the words that chose the intent…"

    def send(message: str, history: list, request: gr.Request):
        """The reply as soon as it is decided (and streamed, in generate mode); `fill` adds the explanation."""
        history = list(history or [])
        if not (message or "").strip():
            yield history, "", gr.update(), gr.update(), gr.update(), None
            return
        history.append({"role": "user", "content": _user(message)})
        history.append({"role": "assistant", "content": "…"})
        yield history, "", gr.update(), gr.update(), gr.update(), None
        try:
            for part in service.respond_stream(message, conversation_id(request)):
                if isinstance(part, str):
                    history[-1] = {"role": "assistant", "content": _user(part)}
                    yield history, "", gr.update(), gr.update(), gr.update(), None
                else:  # the user's bubble now shows what the bot read: Gradio keeps session values in memory
                    history[-2] = {"role": "user", "content": _user(part.text)}
                    history[-1] = {"role": "assistant", "content": _user(part.reply)}
                    yield (history, "", decision_markdown(part), gr.update(value=None, label=explaining),
                           {i: p for i, p in part.ranking}, part)
        except Rejected as e:
            history[-1] = {"role": "assistant", "content": _user(f"{REFUSED}{e}.")}
            history[-2] = {"role": "user", "content": _user(message[:200] + ("…" if len(message) > 200 else ""))}
            yield (history, message if len(message) <= service.max_chars else "", gr.update(), gr.update(), gr.update(),
                   None)

    async def fill(answer):
        """The explanation of the turn just answered, once the background explainer has it (`explained_later`)."""
        if answer is None:
            return gr.update(), gr.update()
        answer = await service.explained_later(answer)
        return decision_markdown(answer), gr.update(value=highlights(answer.attributions), label=words_label)

    def undo(data: gr.UndoData, history: list, request: gr.Request):
        service.keep(conversation_id(request), turns_in(history[: data.index]))
        refused = _refused(history, data.index)
        return history[: data.index], "" if refused else _typed(history[data.index]["content"])

    def retry(data: gr.RetryData, history: list, request: gr.Request):
        if _refused(history, data.index):  # never sent (and maybe shortened): nothing to send again
            gr.Info("That message was not sent, so there is nothing to retry: edit it and send it again.")
            yield history[: data.index], gr.update(), gr.update(), gr.update(), gr.update(), None
            return
        service.keep(conversation_id(request), turns_in(history[: data.index]))
        message = _typed(history[data.index]["content"])
        yield from send(message, history[: data.index], request)

    def reset(request: gr.Request):
        service.reset(conversation_id(request))
        return [], "", "Send a message to see how the bot decides.", None, None, None

    model = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": MODEL_EVENTS}
    msg.submit(send, [msg, chatbot], outputs, api_name=False, **model).then(
        fill, turn, [decision, words], api_name=False, concurrency_limit=None, show_progress="hidden")
    chatbot.undo(undo, chatbot, [chatbot, msg], api_name=False)
    chatbot.retry(retry, chatbot, outputs, api_name=False, **model).then(
        fill, turn, [decision, words], api_name=False, concurrency_limit=None, show_progress="hidden")
    chatbot.clear(reset, None, outputs, api_name=False)
    clear.click(reset, None, outputs, api_name=False)


def _audit_tab(service: ChatService, access: Access) -> None:
    with gr.Row():
        intent = gr.Dropdown(["(any)"], value="(any)", label="Intent", elem_id="audit-intent")
        lo = gr.Slider(0, 1, value=0, step=0.01, label="Confidence at least")
        hi = gr.Slider(0, 1, value=1, step=0.01, label="Confidence at most")
        fallback = gr.Radio(["any", "yes", "no"], value="any", label="Fallback")
    with gr.Row():
        since = gr.Textbox(label="From (YYYY-MM-DD, UTC unless an offset is given)", placeholder="any")
        until = gr.Textbox(label="To (YYYY-MM-DD)", placeholder="any")
        page = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="audit-page")
        search = gr.Button("Search", variant="primary", elem_id="audit-search")
    matched = gr.Markdown("", elem_id="audit-count")
    table = gr.Dataframe(headers=AUDIT_HEADERS, datatype=["number", "str", "str", "str", "str", "number", "str"],
                         interactive=False, wrap=True, elem_id="audit-table", label="Turns (newest first)",
                         column_widths=["6%", "17%", "9%", "40%", "15%", "8%", "5%"])
    with gr.Row():
        turn_id = gr.Number(label="Turn #", precision=0, elem_id="audit-turn-id")
        open_btn = gr.Button("Open turn", elem_id="audit-open")
        csv_btn = gr.Button("Export CSV", elem_id="audit-export-csv")
        json_btn = gr.Button("Export JSON", elem_id="audit-export-json")
    gr.Markdown("<small>Exports are streamed to your browser, not kept on the server. The session column is a "
                "keyed hash, not the chat's session id.</small>")
    detail_words = gr.HighlightedText(label="Attributions of this turn", combine_adjacent=False,
                                      show_inline_category=False, elem_id="audit-words")
    with gr.Row():
        right = gr.Dropdown([*service.bot.model.intents, OUT_OF_SCOPE], label="Right intent for this turn",
                            elem_id="audit-right-intent")
        correct_btn = gr.Button("Save correction", elem_id="audit-correct")
    corrected = gr.Markdown("", elem_id="audit-corrected")
    gr.Markdown("<small>Corrections stay in the audit store with the turn's redacted text; `candor data corrections "
                "BOT.yaml --audit-db DB` adds them to the bot file for the next training.</small>")
    detail = gr.JSON(label="Turn", elem_id="audit-detail")
    filters = [intent, lo, hi, fallback, since, until]

    def require_auditor(request: gr.Request) -> None:
        if not access.may_audit(request):
            raise gr.Error("Only auditors may read the audit log.")

    def do_search(intent_, lo_, hi_, fallback_, since_, until_, page_, request: gr.Request):
        require_auditor(request)
        f = audit_filter(intent_, lo_, hi_, fallback_, since_, until_)
        total, size = service.store.count(f), f.limit
        pages = max(1, -(-total // size))
        page_ = min(max(1, int(page_ or 1)), pages)
        rows = service.store.query(f, offset=(page_ - 1) * size)
        shown = (f"showing {(page_ - 1) * size + 1}–{(page_ - 1) * size + len(rows)}, page {page_} of {pages}"
                 if rows else "none shown")
        choices = ["(any)", *service.store.intents()]
        return (gr.update(choices=choices), _table(rows), f"**{total}** turns match; {shown}. Exports include "
                "every matching turn.", page_)

    def do_open(value, request: gr.Request):
        require_auditor(request)
        row = service.turn(int(value or 0))
        if row is None:
            raise gr.Error(f"no turn #{value}")
        return highlights(row["attributions"]), row

    def do_select(evt: gr.SelectData, request: gr.Request):
        require_auditor(request)
        row = service.turn(int(evt.row_value[0]))
        return (row["id"], highlights(row["attributions"]), row) if row else (None, None, None)

    def export_js(fmt: str) -> str:
        """The browser downloads `/audit/export` with the current filters (the route checks the role)."""
        return ("(intent, lo, hi, fallback, since, until) => { const q = new URLSearchParams({fmt: '" + fmt + "', "
                "intent: intent || '', min: lo, max: hi, fallback: fallback, since: since || '', until: until || ''}); "
                "const a = document.createElement('a'); a.href = 'audit/export?' + q.toString(); a.download = ''; "
                "document.body.appendChild(a); a.click(); a.remove(); return []; }")

    def do_correct(value, intent_, request: gr.Request):
        require_auditor(request)
        if not value or not intent_:
            raise gr.Error("Open a turn and choose its right intent first.")
        try:
            row = service.store.correct(int(value), intent_, gradio_user(request) or "auditor")
        except KeyError:
            raise gr.Error(f"no turn #{value}") from None
        return f"Turn #{row['id']}: corrected from {row['intent']} to **{row['correct_intent']}**.", row

    search.click(do_search, [*filters, page], [intent, table, matched, page], api_name=False)
    correct_btn.click(do_correct, [turn_id, right], [corrected, detail], api_name=False)
    open_btn.click(do_open, turn_id, [detail_words, detail], api_name=False)
    table.select(do_select, None, [turn_id, detail_words, detail], api_name=False)
    csv_btn.click(None, filters, None, js=export_js("csv"), api_name=False)
    json_btn.click(None, filters, None, js=export_js("json"), api_name=False)


def _lowest_f1(reports: Path, k: int = 5) -> str:
    """The intents with the lowest test F1, from `candor eval`'s per-intent report (the card keeps no per-intent data)."""
    path = reports / "intent_report.json"
    if not path.is_file():
        return ""
    report = json.loads(path.read_text(encoding="utf-8"))
    worst = sorted(((n, v["f1-score"]) for n, v in report.items() if isinstance(v, dict) and "confused_with" in v),
                   key=lambda kv: kv[1])[:k]
    return "Lowest F1: " + ", ".join(f"`{n}` {f1:.2f}" for n, f1 in worst) if worst else ""


def _adversarial_examples(reports: Path, k: int = 8) -> str:
    """A few successful adversarial examples from `candor attack`, as a Markdown table (text escaped)."""
    from safety.attack_report import CSV

    path = reports / CSV
    if not path.is_file():
        return ""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[:k]
    if not rows:
        return "The attacks found no adversarial example."

    def cell(text: str) -> str:
        return html.escape(text).replace("|", "&#124;")

    return ("Examples the attacks found (`" + str(path.name) + "` has them all):\n\n"
            "| recipe | original | adversarial | intent → decided | fell back |\n|---|---|---|---|---|\n"
            + "\n".join(f"| {r['recipe']} | {cell(r['original'])} | {cell(r['perturbed'])} | "
                        f"`{r['true_intent']}` → `{r['predicted_intent']}` | {'yes' if r['fallback'] == 'True' else 'no'} |"
                        for r in rows))


def _model_tab(service: ChatService) -> None:
    """The model card's sections (bot/card.py), each shown once: the card, the privacy guarantee with its audits,
    robustness (with examples of the attacks that worked) and evaluation (with its plots)."""
    if not service.card:
        gr.Markdown("No model card found.", elem_id="model-card")
        return
    card, reports = Card.of(service.card), service.model_dir / "reports"
    gr.Markdown(card.markdown(("model", "training", "limitations")), elem_id="model-card")
    gr.Markdown(card.markdown(("privacy", "audits"), title=False), elem_id="model-privacy")
    gr.Markdown(card.robustness.markdown() + ("\n\n" + _adversarial_examples(reports) if card.robustness.report else ""),
                elem_id="model-robustness")
    plots = sorted(reports.glob("*.png")) if reports.is_dir() else []
    if card.evaluation.metrics:
        gr.Markdown("\n\n".join(filter(None, [card.evaluation.markdown(), _lowest_f1(reports)])), elem_id="model-eval")
    if plots:
        with gr.Row():
            for p in plots:
                gr.Image(str(p), label=p.stem.replace("_", " "), show_download_button=True, interactive=False)
    if not card.evaluation.metrics:
        gr.Markdown(f"Run `candor eval {service.model_dir}` to add test metrics and plots here.")
