"""Results tables from a recipe's experiment folder: ``python -m asr.report EXP_DIR``.

Reads ``EXP_DIR/<experiment>/eval*/<test set>/summary.json`` (eval/ of the Keras model,
eval-tflite/ of its export, ...) and ``EXP_DIR/<experiment>/train.log`` and prints a Markdown
table: one row per (experiment, evaluation, test set) with WER, CER, word counts and the model
that was evaluated, as its summary records it (a row is never labelled with another model than
the one measured), then the training time of each experiment.
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def machine() -> str:
    """One line naming this machine: CPU model and logical core count."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()}"


def results_table(exp_dir) -> str:
    exp_dir = Path(exp_dir)
    rows = ["| experiment | test set | decoder | WER | CER | words | utterances | model evaluated |",
            "|---|---|---|---|---|---|---|---|"]
    for summary in sorted(exp_dir.glob("*/eval*/*/summary.json")):
        s = json.loads(summary.read_text())
        experiment, test = summary.parts[-4], summary.parts[-2]
        rows.append(f"| {experiment} | {test} | {decoder_label(s)} | {100 * s['wer']:.2f}% | {100 * s['cer']:.2f}% | "
                    f"{s['words']} | {s['utterances']} | {s.get('model', 'not recorded')} |")
    lines = ["\n".join(rows), "", "| experiment | epochs | best epoch | training time | train audio |", "|---|---|---|---|---|"]
    for log in sorted(exp_dir.glob("*/train.log")):
        epochs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        if not epochs:
            continue
        best = _best_epoch(log.parent, epochs)
        total = sum(e.get("epoch_seconds", 0.0) for e in epochs)
        hours = epochs[-1].get("train_audio_seconds", 0.0) / 3600
        lines.append(f"| {log.parent.name} | {len(epochs)} | {best['epoch']} | {total / 60:.1f} min | {hours:.2f} h |")
    lines += ["", f"Machine: {machine()}."]
    return "\n".join(lines)


def decoder_label(summary: dict) -> str:
    """How an evaluation decoded, from its summary's "decoder" (absent: greedy, as before)."""
    d = summary.get("decoder") or {"kind": "greedy"}
    if d.get("kind") != "beam":
        return "greedy"
    parts = [f"beam {d.get('beam', '')}".strip()]
    if d.get("lexicon") != "none":
        parts.append("lexicon" if d.get("lexicon") else "model's lexicon")
    if d.get("lm") and d.get("lm") != "none":
        parts.append(f"LM x{d.get('lm_weight', 0):g}")
    elif not d.get("lm"):
        parts.append(f"model's LM x{d.get('lm_weight', 0):g}")
    if d.get("word_score"):
        parts.append(f"word score {d['word_score']:g}")
    return ", ".join(parts)


def _best_epoch(exp: Path, epochs: list[dict]) -> dict:
    """The epoch training kept as best: the one EXP/best/model.json names (chosen by
    training.selection), else the lowest dev loss of train.log."""
    try:
        number = json.loads((exp / "best" / "model.json").read_text())["epoch"]
        return next(e for e in epochs if e["epoch"] == number)
    except (OSError, ValueError, KeyError, StopIteration):
        return min(epochs, key=lambda e: e["dev_loss"])


def eval_table(eval_dir, sets=None, title: str = "Results", notes=()) -> str:
    """Markdown: a title, one row per test set (WER, CER, words, utterances, the model its
    summary says was evaluated) read from ``eval_dir/<set>/summary.json``, then ``notes`` and
    the machine. ``sets`` fixes the rows and their order (default: every folder with a
    summary); a set with no summary gets a row saying it was not measured."""
    eval_dir = Path(eval_dir)
    if sets is None:
        sets = sorted(p.parent.name for p in eval_dir.glob("*/summary.json"))
    rows = [f"# {title}", "", "| test set | decoder | WER | CER | words | utterances | model evaluated |",
            "|---|---|---|---|---|---|---|"]
    for name in sets:
        path = eval_dir / name / "summary.json"
        if not path.is_file():
            rows.append(f"| {name} | | not measured | not measured | | | |")
            continue
        s = json.loads(path.read_text())
        rows.append(f"| {name} | {decoder_label(s)} | {100 * s['wer']:.2f}% | {100 * s['cer']:.2f}% | {s['words']} | "
                    f"{s['utterances']} | {s.get('model', 'not recorded')} |")
    rows += [""] + [f"{n}" for n in notes] + ([""] if notes else []) + [f"Machine: {machine()}.", ""]
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m asr.report EXP_DIR")
    print(results_table(sys.argv[1]))
