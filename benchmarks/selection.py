"""Model selection on FSDD: which dev metric (dev CTC loss or dev WER) picks the model with the
better test WER, and what the held-out speaker's WER is (the model trained without it).

    python benchmarks/selection.py --manifests recipes/fsdd/data/manifests [--splits split heldout]
        [--epochs 22] [--threads 2] [--out benchmarks/results/selection.json]

``--manifests`` is the folder ``asr prepare fsdd`` writes (the recipe's stage 1). For each split
the recipe's config (models/configs/fsdd.yaml) trains once for --epochs epochs with early
stopping off and every epoch's checkpoint kept; train.log holds each epoch's dev loss and dev
WER. Each rule then picks its model exactly as ``asr train`` would with
``training.selection`` set to it (ties in WER: the lower dev loss), early stopping with the
config's patience replayed on the logged metric, and the average of the last
``average_last`` epochs (before the stop) taking the best epoch's place when it scores better
on the rule's metric. Only the picked models are evaluated on the test sets.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asr  # noqa: E402,F401  (tf_keras before TensorFlow)

CONFIG = ROOT / "models" / "configs" / "fsdd.yaml"
# the recipe's training manifests (recipes/fsdd/run.sh lists the same, isolated digits twice)
TRAIN_FILES = ("train.jsonl", "train.jsonl", "train_connected.jsonl", "train_nonspeech.jsonl")
DEV_FILES = ("dev.jsonl", "dev_connected.jsonl")
TEST_FILES = ("test.jsonl", "test_connected.jsonl")
RULES = ("dev_loss", "dev_wer")


def rule_score(line: dict, rule: str) -> tuple[float, float]:
    from asr.training import selection_score

    return selection_score(line, rule)


def pick(history: list[dict], rule: str, patience: int) -> dict:
    """Replay asr train's selection with ``rule`` over the logged epochs: best epoch, the epoch
    training would stop after (early stopping), and the epochs the average would use."""
    best, best_score, bad, stop = 0, (float("inf"), 0.0), 0, len(history)
    for line in history:
        score = rule_score(line, rule)
        if score < best_score:
            best, best_score, bad = line["epoch"], score, 0
        else:
            bad += 1
        if bad >= patience:
            stop = line["epoch"]
            break
    return {"best_epoch": best, "best_score": list(best_score), "stopped_after": stop}


def model_of_epochs(exp: Path, config, epochs: list[int], out: Path) -> Path:
    """A model directory holding the mean of the weights of ``epochs`` (one: that epoch)."""
    from asr.checkpoint import average_checkpoints, load_model_dir, save_model_dir

    _, stats, _, net = load_model_dir(exp / "final")
    ckpts = [exp / "checkpoints" / f"epoch-{e:04d}" for e in epochs]
    average_checkpoints(ckpts, net)
    return save_model_dir(out, config, net, stats, epoch=max(epochs), averaged_epochs=epochs)


def dev_line(model: Path, manifests: Path, config, cache: Path) -> dict:
    """Dev loss (CTC, as asr train's validation) and dev WER/CER of a model directory."""
    import tf_keras as keras

    from asr.checkpoint import load_model_dir
    from asr.data import open_data
    from asr.model import make_forward
    from asr.trainer import trainer_class
    from asr.training import dev_error_rates

    _, stats, _, net = load_model_dir(model)
    source = open_data([manifests / f for f in DEV_FILES], config, train=False, cache_dir=cache)
    tc = config.training
    ds = source.dataset(stats, tc.batch_frames, tc.max_batch_size)
    trainer = trainer_class()(net, config.vocabulary.blank)
    trainer.compile(optimizer=keras.optimizers.Adam())
    loss = float(trainer.evaluate(ds, verbose=0))
    rates = dev_error_rates(make_forward(net, config.features.n_mels), (ds, source, config.vocabulary))
    return {"dev_loss": loss, "dev_wer": rates["wer"], "dev_cer": rates["cer"]}


def run_split(manifests: Path, work: Path, epochs: int) -> dict:
    from asr.config import load_config
    from asr.evaluation import evaluate
    from asr.training import train

    overrides = [f"training.epochs={epochs}", "training.early_stop_patience=100000", f"training.average_last={epochs}"]
    config = load_config(CONFIG, overrides)
    recipe = load_config(CONFIG)
    exp = work / "exp"
    train(config, [manifests / f for f in TRAIN_FILES], [manifests / f for f in DEV_FILES], exp, corpus="fsdd",
          cache_dir=work.parent / "cache")
    history = [json.loads(x) for x in (exp / "train.log").read_text().splitlines()]
    tc = recipe.training
    picks, evaluated = {}, {}

    def test_wer(name: str, model: Path) -> dict:
        if name not in evaluated:
            evaluated[name] = {
                f.removesuffix(".jsonl"): evaluate(model, manifests / f, work / "eval" / name / f)["wer"] for f in TEST_FILES
            }
        return evaluated[name]

    for rule in RULES:
        p = pick(history, rule, tc.early_stop_patience)
        best_model = model_of_epochs(exp, config, [p["best_epoch"]], work / f"epoch-{p['best_epoch']}")
        last = list(range(max(1, p["stopped_after"] - tc.average_last + 1), p["stopped_after"] + 1))
        avg_model = model_of_epochs(exp, config, last, work / f"average-{last[0]}-{last[-1]}")
        avg_line = dev_line(avg_model, manifests, config, work.parent / "cache")
        use_avg = rule_score(avg_line, rule) < tuple(p["best_score"])
        chosen = f"average-{last[0]}-{last[-1]}" if use_avg else f"epoch-{p['best_epoch']}"
        picks[rule] = {**p, "average_epochs": [last[0], last[-1]], "average_dev": avg_line, "chosen": chosen,
                       "test_wer": test_wer(chosen, work / chosen)}
        print(f"{rule}: {chosen} -> test WER {picks[rule]['test_wer']}", flush=True)
    return {"history": history, "picks": picks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifests", type=Path, required=True, help="the folder asr prepare fsdd wrote")
    parser.add_argument("--splits", nargs="+", default=["split", "heldout"])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe config's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "exp" / "selection")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "selection.json")
    args = parser.parse_args(argv)
    from asr.config import load_config
    from asr.distribute import configure_threads

    configure_threads(args.threads)
    epochs = args.epochs or load_config(CONFIG).training.epochs
    results = {"config": str(CONFIG.relative_to(ROOT)), "epochs": epochs, "splits": {}}
    for split in args.splits:
        results["splits"][split] = run_split(args.manifests / split, args.work / split, epochs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    for split, r in results["splits"].items():
        for rule, p in r["picks"].items():
            wer = ", ".join(f"{k} {100 * v:.2f}%" for k, v in p["test_wer"].items())
            print(f"{split:8s} {rule:8s} {p['chosen']:16s} {wer}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
