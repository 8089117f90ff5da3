"""The Gradio page: Blocks wiring only. Every handler is a few lines over `Engine`; per-visitor state is a
`Session` in `gr.State`. Four steps: teach (label pairs), where you are (the simplex), generate, profile.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

from ..model.generation import DEFAULT_FADE, DEFAULT_STRENGTH, MAX_STRENGTH, Sampling
from .engine import Engine
from .session import ORDERS, ProfileError, Session
from .views import (KEYS_HELP, OUTPUT_HELP, PLOT_HELP, pair_markdown, progress_text, safe_markdown, scores_markdown,
                    simplex_figure, timing_markdown)

PRESETS = {"concise": [1, 0, 0], "structured": [0, 1, 0], "warm": [0, 0, 1], "balanced": [1, 1, 1],
           "concise + warm": [1, 0, 1]}
EXAMPLES = ["How can I get better at waking up early?", "Explain what a neural network is.",
            "Plan a relaxed weekend in a new city.", "Any tips for keeping houseplants alive?",
            "Write a short note thanking a colleague for their help."]
OUTPUTS = ("steered", "base", "in_context")
# A/B/S/U press the teach buttons while the pair area (or nothing in particular) has focus, never while typing;
# a click goes through the buttons' own path, so the pair-id guard and trigger_mode="once" apply to keys too
KEYS_JS = """() => {
  const keys = {a: "#btn-a", b: "#btn-b", s: "#btn-skip", u: "#btn-undo"};
  document.addEventListener("keydown", (e) => {
    const sel = keys[(e.key || "").toLowerCase()];
    if (!sel || e.repeat || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target, teach = document.querySelector("#teach");
    if (t.closest && t.closest("input, textarea, select, [contenteditable='true']")) return;
    if (!teach || !(t === document.body || teach.contains(t))) return;
    const button = document.querySelector(sel);
    if (button && !button.disabled) { e.preventDefault(); button.click(); }
  });
}"""
CSS = """.gradio-container {max-width: 1400px !important}
.model-text {overflow-wrap: anywhere; word-break: break-word}
.model-text pre {white-space: pre-wrap}"""


def build_demo(engine: Engine) -> gr.Blocks:
    """The app for one engine (tests build it around small models too)."""

    def teach_view(session: Session, show_bayes: bool):
        pos = engine.position(session)
        pair = engine.pair_text(session.current) if session.current is not None else None
        return (session, pair_markdown(pair and pair["prompt"]), safe_markdown(pair["a"]) if pair else "",
                safe_markdown(pair["b"]) if pair else "",
                -1 if session.current is None else session.current, progress_text(len(session.labels),
                                                                                  len(session.skipped)),
                simplex_figure(pos, session.trail, show_bayes), pos.summary())

    def start(session: Session, order: str, show_bayes: bool):
        """Show the first pair of a fresh or restored session (page load)."""
        session.order = order if order in ORDERS else "informative"
        if session.current is None:
            session.seed = time.time_ns() % 2**32
            engine.next_pair(session)
        return teach_view(session, show_bayes)

    def label(choice: str, shown: float, session: Session, order: str, show_bayes: bool):
        """Record a click; a click on a pair no longer on screen (a double click) changes nothing."""
        session.order = order if order in ORDERS else "informative"
        if shown is not None and int(shown) == session.current:
            engine.label(session, choice)
        return teach_view(session, show_bayes)

    def labeller(choice: str):
        def click(shown: float, session: Session, order: str, show_bayes: bool):
            return label(choice, shown, session, order, show_bayes)
        return click

    def undo(session: Session, show_bayes: bool):
        engine.undo(session)
        return teach_view(session, show_bayes)

    def set_point(concise: float, structured: float, warm: float, session: Session, show_bayes: bool):
        if min(concise, structured, warm) < 0 or concise + structured + warm <= 0:
            raise gr.Error("Set at least one weight above zero (weights cannot be negative).")
        if session.labels:
            gr.Warning("Your labels take precedence over a set point: reset to steer by the point alone.")
        session.target = [float(concise), float(structured), float(warm)]
        return teach_view(session, show_bayes)

    def preset(name: str):
        return PRESETS.get(name, PRESETS["balanced"])

    def reset(show_bayes: bool):
        session = Session(seed=time.time_ns() % 2**32)
        engine.next_pair(session)
        return teach_view(session, show_bayes)

    def generate(prompt: str, in_context: bool, max_new_tokens: float, temperature: float, top_k: float,
                 repetition_penalty: float, greedy: bool, strength: float, session: Session):
        """Stream steered | base | in-context side by side, then score each output."""
        sampling = Sampling(int(max_new_tokens), float(temperature), int(top_k), float(repetition_penalty),
                            bool(greedy))
        try:
            sampling.check()
            strength = float(strength)
            note = engine.prompt_note(prompt if isinstance(prompt, str) else "")
        except ValueError as e:
            raise gr.Error(str(e)) from e
        if note:
            gr.Warning(note)
        if not session.labels and session.target is None:
            gr.Warning("No labels yet: the steered model uses the average user. Label a few pairs or set a point.")
        start, texts = time.monotonic(), {}

        def view(done: bool = False, scores: dict | None = None) -> tuple[str, ...]:
            """Each output as safe markdown, and under it its timing (and, at the end, its scores)."""
            shown = [n for n in OUTPUTS if n in texts]
            timing = {n: timing_markdown(engine.count_tokens(texts[n]), time.monotonic() - start,
                                         sampling.max_new_tokens, done, done and session.stop) for n in shown}
            notes = {n: "\n\n".join(filter(None, [timing[n], scores_markdown((scores or {}).get(n))])) for n in shown}
            return (*(safe_markdown(texts[n], "") if n in texts else "" for n in OUTPUTS),
                    *(notes.get(n, "") for n in OUTPUTS))

        try:
            for texts in engine.stream(session, prompt, sampling, in_context=bool(in_context), strength=strength):
                yield view()
        except ValueError as e:  # a steering strength out of range, from an API client
            raise gr.Error(str(e)) from e
        except RuntimeError as e:
            raise gr.Error(f"{e}. Your labels are kept; try again.") from e
        yield view(done=True, scores=engine.score(session, prompt, texts))

    def stop(session: Session) -> None:
        engine.stop(session)

    def export(session: Session) -> str:
        path = Path(tempfile.mkdtemp(prefix="npdemo-")) / "npdemo-profile.json"
        try:
            path.write_text(engine.export_profile(session))
        except OSError as e:
            raise gr.Error(f"Could not write the profile ({e.strerror or e}); your labels are kept.") from e
        return str(path)

    def import_profile(file, session: Session, show_bayes: bool):
        if file is None:
            raise gr.Error("Choose a profile JSON file first.")
        try:
            restored = engine.import_profile(Path(file if isinstance(file, str) else file.name).read_bytes())
        except (ProfileError, OSError) as e:
            raise gr.Error(f"Profile not imported: {e}. Your current labels are kept.") from e
        restored.order = session.order
        return teach_view(restored, show_bayes)

    with gr.Blocks(title="npdemo: few-shot steerable alignment") as demo:
        session = gr.State(Session())
        gr.Markdown("# Few-shot steerable alignment\nLabel about ten response pairs. A neural-process encoder turns "
                    "your choices into a latent vector; the plot shows where you sit between **concise**, "
                    "**structured** and **warm**, and the same latent steers a small LLM through FiLM layers.")
        with gr.Row():
            with gr.Column(scale=3, min_width=320, elem_id="teach"):
                gr.Markdown("## 1 · Teach")
                pair_md = gr.Markdown(elem_id="pair-prompt")
                with gr.Row():
                    with gr.Column(min_width=280):
                        a_box = text_view("Response A", "resp-a")
                    with gr.Column(min_width=280):
                        b_box = text_view("Response B", "resp-b")
                shown = gr.Number(value=-1, visible=False, precision=0)
                with gr.Row():
                    a_btn = gr.Button("A is better", variant="primary", elem_id="btn-a")
                    b_btn = gr.Button("B is better", variant="primary", elem_id="btn-b")
                    skip_btn = gr.Button("Skip", elem_id="btn-skip")
                    undo_btn = gr.Button("Undo", elem_id="btn-undo")
                progress = gr.Markdown(elem_id="progress")
                gr.Markdown(KEYS_HELP, elem_id="keys-help")
                order = gr.Radio(list(ORDERS), value="informative", label="Next pair",
                                 info="informative: the pair the model is least sure about; random: any pair")
            with gr.Column(scale=2, min_width=320):
                gr.Markdown("## 2 · Where you are")
                plot = gr.Plot(label="Your preference simplex", elem_id="simplex")
                summary = gr.Markdown(elem_id="summary")
                gr.Markdown(PLOT_HELP, elem_id="plot-help")
                show_bayes = gr.Checkbox(label="Overlay the exact Bayes posterior (knows the true attributes)")
                with gr.Accordion("Steer without labelling: set a point", open=False):
                    preset_dd = gr.Dropdown(list(PRESETS), label="Preset", value=None)
                    w_c = gr.Slider(0, 1, value=1 / 3, label="concise")
                    w_s = gr.Slider(0, 1, value=1 / 3, label="structured")
                    w_w = gr.Slider(0, 1, value=1 / 3, label="warm")
                    point_btn = gr.Button("Use this point")
                    gr.Markdown("A point is turned into a latent by letting an idealised user with those weights "
                                "label the 10 pairs it feels most strongly about (weights are normalised).")
        gr.Markdown("## 3 · Generate")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="Ask anything…", scale=4, min_width=240,
                                elem_id="prompt")
            with gr.Column(scale=1, min_width=120):
                gen_btn = gr.Button("Generate", variant="primary", elem_id="btn-generate")
                stop_btn = gr.Button("Stop", elem_id="btn-stop")
        gr.Examples(EXAMPLES, inputs=[prompt])
        strength = gr.Slider(0, MAX_STRENGTH, value=DEFAULT_STRENGTH, step=0.05, label="steering strength",
                             info=f"how far your latent moves the model: 0 = the shared LoRA only, 1 = as trained "
                                  f"(default {DEFAULT_STRENGTH}, measured); it fades out over tokens "
                                  f"{DEFAULT_FADE.start + 1}-{DEFAULT_FADE.start + DEFAULT_FADE.length}, where the "
                                  f"answers the policy learnt from end",
                             elem_id="strength")
        with gr.Accordion("Sampling settings", open=False):
            in_ctx = gr.Checkbox(label="Also run the in-context baseline (your labelled pairs in the prompt; slower)")
            max_new = gr.Slider(1, 512, value=Sampling.max_new_tokens, step=1, label="max new tokens",
                                info="about 15 s for a full answer on a 2-core CPU")
            temperature = gr.Slider(0.05, 2.0, value=0.7, label="temperature")
            top_k = gr.Slider(1, 200, value=50, step=1, label="top-k")
            rep = gr.Slider(1.0, 2.0, value=1.15, label="repetition penalty")
            greedy = gr.Checkbox(label="greedy (deterministic)")
        gr.Markdown(OUTPUT_HELP, elem_id="output-help")
        with gr.Row():
            outputs, notes = [], []
            for name, title in zip(OUTPUTS, ("Steered (your latent)", "Unsteered base model", "In-context baseline")):
                with gr.Column(min_width=300):
                    outputs.append(text_view(title, f"out-{name.replace('_', '-')}"))
                    notes.append(gr.Markdown(elem_id=f"notes-{name.replace('_', '-')}"))
        gr.Markdown("## 4 · Profile")
        with gr.Row():
            export_btn = gr.Button("Export profile")
            export_file = gr.File(label="Profile JSON", interactive=False)
            import_file = gr.File(label="Import a profile", file_types=[".json"], type="filepath")
            import_btn = gr.Button("Import")
            reset_btn = gr.Button("Reset", variant="stop")

        teach_out = [session, pair_md, a_box, b_box, shown, progress, plot, summary]
        cheap = dict(concurrency_limit=4, concurrency_id="teach")
        # generations run concurrently here and the engine's batcher merges them into one batched call
        heavy = dict(concurrency_limit=16, concurrency_id="generate")
        demo.load(start, [session, order, show_bayes], teach_out, api_name="start", **cheap)
        for button, choice in ((a_btn, "a"), (b_btn, "b"), (skip_btn, "skip")):
            button.click(labeller(choice), [shown, session, order, show_bayes], teach_out, trigger_mode="once",
                         api_name=f"label_{choice}", **cheap)
        undo_btn.click(undo, [session, show_bayes], teach_out, api_name="undo", trigger_mode="once", **cheap)
        show_bayes.change(teach_view, [session, show_bayes], teach_out, api_name=False, **cheap)
        preset_dd.change(preset, preset_dd, [w_c, w_s, w_w], api_name=False)
        point_btn.click(set_point, [w_c, w_s, w_w, session, show_bayes], teach_out, api_name="set_point", **cheap)
        reset_btn.click(reset, show_bayes, teach_out, api_name="reset", **cheap)
        gen_in = [prompt, in_ctx, max_new, temperature, top_k, rep, greedy, strength, session]
        gen_btn.click(generate, gen_in, outputs + notes, api_name="generate", **heavy)
        prompt.submit(generate, gen_in, outputs + notes, api_name=False, **heavy)
        stop_btn.click(stop, session, None, api_name="stop", **cheap)
        export_btn.click(export, session, export_file, api_name="export", **cheap)
        import_btn.click(import_profile, [import_file, session, show_bayes], teach_out, api_name="import_profile",
                         **cheap)
    return demo


def text_view(title: str, elem_id: str) -> gr.Markdown:
    """Model or corpus text rendered as markdown under a title (values come through `safe_markdown`)."""
    gr.Markdown(f"**{title}**")
    return gr.Markdown(elem_id=elem_id, elem_classes="model-text", container=True, padding=True, line_breaks=True,
                       latex_delimiters=[], min_height=120, max_height=480)


def serve(demo: gr.Blocks, host: str, port: int | None, **launch) -> None:
    """Queue (bounded) and launch; show_error: a malformed API call gets its reason back, not a generic error."""
    demo.queue(max_size=128).launch(server_name=host, server_port=port, show_error=True, theme=gr.themes.Soft(),
                                    css=CSS, js=KEYS_JS, **launch)

