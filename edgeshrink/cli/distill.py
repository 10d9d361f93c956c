"""`edgeshrink distill`: heal a pruned model by training it to imitate the original."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgeshrink.cli.common import JSON_OPTION, Context, FiniteFloat, emit_json, pass_context
from edgeshrink.cli.prune import parse_layer_list
from edgeshrink.distillation import DistillOutcome, distill_model
from edgeshrink.profiles import get_profile
from edgeshrink.report.table import render_pairs, render_table
from edgeshrink.util import human_bytes, terminal_safe


class ProgressBar:
    """Progress lines, with the training's steps as one bar redrawn in place on a
    terminal (step, loss, tokens/s, ETA) and as a line every 10% elsewhere."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.drawn = False
        self.last_tenth = -1

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if message.startswith("training: "):
            self.bar(message)
            return
        self.end_bar()
        click.echo(click.style(f"· {terminal_safe(message)}", dim=True), err=True)

    def bar(self, message: str) -> None:
        if self.tty:
            click.echo(f"\r{message[:200]}\x1b[K", err=True, nl=False)
            self.drawn = True
            return
        tenth = int(message.split("[", 1)[1].split("%", 1)[0]) // 10 if "[" in message else 0
        if tenth != self.last_tenth:
            self.last_tenth = tenth
            click.echo(f"· {message}", err=True)

    def end_bar(self) -> None:
        if self.drawn:
            click.echo("", err=True)
            self.drawn = False


@click.command()
@click.argument("teacher", type=click.Path(path_type=Path))
@click.option("--student", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A pruned copy of TEACHER to heal (e.g. made by `edgeshrink prune`).")  # fmt: skip
@click.option("--layers", "n_layers", type=click.IntRange(1, None), default=None,
              help="Prune this many blocks first (the removal prune's scoring picks), then heal.")  # fmt: skip
@click.option(
    "--remove", default=None, help="Prune exactly these blocks first (0-based, e.g. 7,8)."
)
@click.option("--text", "text_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Unlabeled in-domain text: ~90% trains, the rest judges "
              "[default: the calibration text edgeshrink ships, judged on its evaluation text].")  # fmt: skip
@click.option("--steps", type=click.IntRange(1, None), default=None, help="Train this many steps.")
@click.option("--minutes", type=FiniteFloat(0.01, None), default=None,
              help="Train for this long [default: 5 when --steps is not given].")  # fmt: skip
@click.option("--train", "train", type=click.Choice(["all", "near-cuts"]), default="all", show_default=True,
              help="What trains: every block, or the blocks beside each cut and the output head.")  # fmt: skip
@click.option("--temperature", type=FiniteFloat(0.1, 20), default=2.0, show_default=True,
              help="Temperature of the KL divergence to the teacher.")  # fmt: skip
@click.option("--alpha", type=FiniteFloat(0, 10), default=0.0, show_default=True,
              help="Weight of the next-token loss added to the KL term.")  # fmt: skip
@click.option(
    "--lr", type=FiniteFloat(1e-8, 1), default=3e-4, show_default=True, help="AdamW learning rate."
)
@click.option(
    "--batch", type=click.IntRange(1, 256), default=4, show_default=True, help="Chunks per step."
)
@click.option(
    "--ctx",
    type=click.IntRange(16, 1 << 16),
    default=256,
    show_default=True,
    help="Tokens per chunk.",
)
@click.option("--seed", type=int, default=0, show_default=True,
              help="With --steps, the same seed gives the same student.")  # fmt: skip
@click.option("--quant", "-q", default=None,
              help="The healed model's type [default: the student's own; float models stay F16].")  # fmt: skip
@click.option("--profile", "-p", "profile_id", default=None,
              help="Shrink for this device: the type plan chooses (unless --quant).")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The healed model [default: ./MODEL-healedN-TYPE.gguf].")  # fmt: skip
@click.option(
    "--threads", type=click.IntRange(1, 1024), default=None, help="Threads [default: all cores]."
)
@click.option("--resume", is_flag=True, help="Go on from the checkpoint an interrupted run left.")
@click.option("--force", is_flag=True, help="Train again even if an identical healed model exists.")
@JSON_OPTION
@pass_context
def distill(obj: Context, teacher: Path, student: Path | None, n_layers: int | None, remove: str | None,
            text_file: Path | None, steps: int | None, minutes: float | None, train: str,
            temperature: float, alpha: float, lr: float, batch: int, ctx: int, seed: int,
            quant: str | None, profile_id: str | None, output: Path | None, threads: int | None,
            resume: bool, force: bool, as_json: bool) -> None:  # fmt: skip
    """Train a smaller student to imitate TEACHER: heal a pruned model.

    \b
    edgeshrink distill model.gguf --student model-pruned.gguf --text corpus.txt --minutes 10
    edgeshrink distill model.gguf --layers 4 --text corpus.txt --steps 400
    edgeshrink distill model.gguf --layers 2 --train near-cuts -q Q4_K_M -p raspberry-pi-5-8gb

    The student is the teacher with blocks removed, initialised from its weights. The
    teacher's next-token distributions over the text are computed once with llama.cpp
    (top-k and the rest's mass), and the student (PyTorch, on the CPU) learns them:
    KL(teacher || student) at a temperature. Part of the text is held out: the
    student's KL divergence, perplexity and same top token there are printed before
    and after. Ctrl-C keeps the last good checkpoint; --resume goes on from it.
    Needs `pip install 'edgeshrink[distill]'`.
    """
    chosen = [
        m for m, on in (("--student", student), ("--layers", n_layers), ("--remove", remove)) if on
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "say which student to train: one of --student FILE, --layers N or --remove 7,8"
            + (f" ({' and '.join(chosen)} exclude each other)" if chosen else "")
        )
    if steps is None and minutes is None:
        minutes = 5.0
    say = ProgressBar(as_json)
    training = {
        "steps": steps, "minutes": minutes, "train": train, "temperature": temperature,
        "alpha": alpha, "lr": lr, "batch": batch, "ctx": ctx, "seed": seed,
    }  # fmt: skip
    outcome = distill_model(
        teacher, student=student, n_layers=n_layers,
        remove=parse_layer_list(remove) if remove else None,
        text=text_file.read_text(encoding="utf-8") if text_file else None, training=training,
        quant=quant, profile=get_profile(profile_id, obj.profiles_dirs) if profile_id else None,
        output=output, threads=threads, resume=resume, force=force,
        progress=say,
    )  # fmt: skip
    say.end_bar()
    if as_json:
        emit_json(outcome.to_dict())
        return
    show(outcome)


def show(outcome: DistillOutcome) -> None:
    rows = []
    if outcome.before.get("kind") == "embedding-cosine":
        headers = ["STUDENT", "COSINE", "COS P05", "COS MIN"]
        for label, q in (("unhealed", outcome.before), ("healed", outcome.after)):
            rows.append(
                [
                    label,
                    f"{q['cosine_mean']:.5f}",
                    f"{q['cosine_p05']:.5f}",
                    f"{q['cosine_min']:.5f}",
                ]
            )
        click.echo(
            f"held-out embeddings against the teacher's ({outcome.after['n_inputs']} sentences):"
        )
    else:
        headers = ["STUDENT", "KLD", "PPL RATIO", "SAME TOP"]
        for label, q in (("unhealed", outcome.before), ("healed", outcome.after)):
            rows.append([label, f"{q['kld_mean']['value']:.4f}", f"{q['ppl_ratio']['value']:.3f}",
                         f"{100 * q['same_top']['value']:.1f}%"])  # fmt: skip
        click.echo(f"held-out quality against the teacher ({outcome.after['n_scored']} tokens):")
    click.echo(render_table(headers, rows, right=(1, 2, 3)))
    facts, art = outcome.facts, outcome.result.artifact
    click.echo(f"{'reused' if outcome.result.reused else 'wrote'} {art.path}")
    pairs = [("layers removed", ", ".join(map(str, outcome.layers)) or "unknown"), ("type", art.quant),
             ("size", human_bytes(art.size_bytes)), ("unhealed", outcome.unhealed)]  # fmt: skip
    if facts:
        pairs += [
            ("training", f"{facts['steps']} steps in {facts['seconds']:.0f} s, "
                         f"{facts['tokens_per_s']:,.0f} tok/s, loss {facts['first_loss']:.4f} -> {facts['last_loss']:.4f}"),
            ("peak memory", f"{facts['peak_rss_mb']:,.0f} MB"
                            + (f" (estimated {estimate:,.0f} MB)" if (estimate := facts.get("memory_estimate_mb")) else "")),
        ]  # fmt: skip
    pairs.append(("manifest", art.manifest_path))
    click.echo(render_pairs(pairs))


COMMANDS = [distill]

__all__ = ["COMMANDS", "distill"]
