"""tensorflow-model-optimization benchmark: pruning, clustering and QAT against the baseline.

    python benchmarks/tfmot.py --manifests recipes/fsdd/data/manifests/split [--model models/fsdd]
    python benchmarks/tfmot.py --data-dir ../shared/data/fsdd      # prepares FSDD manifests first
        [--epochs 3] [--techniques finetune prune cluster qat] [--work DIR] [--cache-dir DIR]
        [--out benchmarks/results/tfmot.json]

Fine-tunes the model with each technique (tfmot_sparsity.py, tfmot_quantization.py) for --epochs passes over the
train, train_connected and train_nonspeech manifests, then exports:
    baseline   dynamic (export_model), int8 as export_model makes it (frontend quantized too),
               int8 with the frontend kept float (export_int8): post-training quantization
    finetuned  the control: the same fine-tuning with no technique; dynamic, int8 with float
               frontend (post-training int8 of the model QAT starts from, fine-tuned alike)
    pruned     dynamic, int8 with float frontend
    clustered  dynamic, int8 with float frontend
    qat        int8 with float frontend, from the QAT network's learned ranges
and reports, per variant: the Keras model's WER/CER, each .tflite's WER/CER (1 thread), raw and
gzip -9 size, conversion time and fine-tuning time (wall and process CPU seconds: CPU time is
what a busy machine does not inflate), on the isolated-digit (test.jsonl)
and connected-digit (test_connected.jsonl) test sets. Prints a Markdown table and writes
JSON (and the table beside it, .md). Run it under ``nice`` on a shared machine.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import asr  # noqa: E402,F401  (selects tf_keras before TensorFlow and tfmot load)

DEFAULT_EPOCHS = 3  # fine-tuning passes per technique; about 12 min in all on 2 idle cores
TRAIN_SETS = ("train", "train_connected", "train_nonspeech")
DEV_SETS = ("dev", "dev_connected")
TEST_SETS = {"isolated": "test", "connected": "test_connected"}
CALIBRATION_SET = "train"  # full-int8 calibration manifest (its first 200 utterances)
TFLITE_THREADS = 1


def keras_rates(model_dir, test_examples: dict) -> dict:
    """{set: {"wer", "cer"}} of the Keras model (greedy) on cached test features."""
    from asr.checkpoint import load_model_dir
    from asr.data import make_dataset
    from benchmarks.tfmot_finetuning import dev_error_rates

    config, stats, _, net = load_model_dir(model_dir)
    return {name: dev_error_rates(net, config, make_dataset(ex, config.features, stats, config.training, train=False))
            for name, ex in test_examples.items()}


def tflite_rates(path: Path, test_audio: dict) -> dict:
    """{set: {"wer", "cer"}} of a .tflite (asr.runtime, greedy, TFLITE_THREADS threads)."""
    from asr.evaluation import error_rates
    from asr.runtime import TFLiteModel

    model = TFLiteModel(path, num_threads=TFLITE_THREADS)
    out = {}
    for name, (refs, audios) in test_audio.items():
        rates = error_rates(refs, [model.transcribe(a) for a in audios])
        out[name] = {"wer": rates["wer"], "cer": rates["cer"]}
    return out


def size_of(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9))}


def export_all(model_dir, work: Path, name: str, modes, calibration, test_audio) -> dict:
    """Export ``model_dir`` in each of ``modes`` and score every file."""
    from export.convert import export_model
    from benchmarks.tfmot_quantization import export_int8

    out = {}
    for mode in modes:
        path = work / f"{name}.{mode}.tflite"
        start, cpu_start = time.perf_counter(), time.process_time()
        if mode == "int8_float_frontend":
            export_int8(model_dir, path, calibration)
        else:
            export_model(model_dir, path, mode, calibration if mode == "int8" else None)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        out[mode] = {**size_of(path), "convert_seconds": round(seconds, 1), "convert_cpu_seconds": round(cpu, 1),
                     **tflite_rates(path, test_audio)}
        print(f"  {name} {mode}: {out[mode]['bytes'] / 1e6:.3f} MB, gzip {out[mode]['gzip_bytes'] / 1e6:.3f} MB, "
              f"WER {100 * out[mode]['isolated']['wer']:.2f}% / {100 * out[mode]['connected']['wer']:.2f}%", flush=True)
    return out


def markdown(report: dict) -> str:
    lines = [
        "| variant | export | size | gzip | isolated WER | isolated CER | connected WER | connected CER | "
        "fine-tune wall / CPU | convert wall / CPU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        k = v["keras"]
        lines.append(
            f"| {name} | keras (float) | - | - | {100 * k['isolated']['wer']:.2f}% | {100 * k['isolated']['cer']:.2f}% | "
            f"{100 * k['connected']['wer']:.2f}% | {100 * k['connected']['cer']:.2f}% | "
            f"{v['finetune_seconds']:.0f} / {v['finetune_cpu_seconds']:.0f} s | - |"
        )
        for mode, r in v["tflite"].items():
            lines.append(
                f"| {name} | {mode} | {r['bytes'] / 1e6:.3f} MB | {r['gzip_bytes'] / 1e6:.3f} MB | "
                f"{100 * r['isolated']['wer']:.2f}% | {100 * r['isolated']['cer']:.2f}% | "
                f"{100 * r['connected']['wer']:.2f}% | {100 * r['connected']['cer']:.2f}% | - | "
                f"{r['convert_seconds']:.0f} / {r['convert_cpu_seconds']:.0f} s |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifests", type=Path, help="folder with train/dev/test(_connected) .jsonl (FSDD split)")
    source.add_argument("--data-dir", type=Path, help="FSDD copy holding recordings/ (manifests prepared in --work)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fsdd")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--techniques", nargs="+", default=["finetune", "prune", "cluster", "qat"],
                        choices=["finetune", "prune", "cluster", "qat"], help="finetune: the control")
    parser.add_argument("--sparsity", type=float, default=None, help="pruning target (default: tfmot_sparsity.PRUNE_SPARSITY)")
    parser.add_argument("--clusters", type=int, default=None, help="clusters per kernel (default: tfmot_sparsity.CLUSTERS)")
    parser.add_argument("--work", type=Path, default=None, help="keep model dirs and .tflite files here (default: temp)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "tfmot-cache",
                        help="log-mel feature cache, reused across runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tfmot.json")
    args = parser.parse_args()

    from asr.audio import load_audio
    from asr.checkpoint import load_model_dir, read_model_meta
    from asr.data import load_examples
    from asr.manifest import read_manifest
    from asr.report import machine
    from asr.text import normalize_text
    from benchmarks import tfmot_finetuning, tfmot_quantization, tfmot_sparsity

    sparsity = args.sparsity or tfmot_sparsity.PRUNE_SPARSITY
    clusters = args.clusters or tfmot_sparsity.CLUSTERS
    temp = None if args.work else tempfile.TemporaryDirectory()
    work = args.work or Path(temp.name)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.manifests:
        split = args.manifests
    else:
        from asr.corpora import fsdd

        fsdd.prepare(args.data_dir, work / "manifests")
        split = work / "manifests" / "split"
    train = [split / f"{n}.jsonl" for n in TRAIN_SETS if (split / f"{n}.jsonl").exists()]
    dev = [split / f"{n}.jsonl" for n in DEV_SETS if (split / f"{n}.jsonl").exists()]
    calibration = split / f"{CALIBRATION_SET}.jsonl"

    config, _, _, _ = load_model_dir(args.model)
    test_audio, test_examples = {}, {}
    for name, stem in TEST_SETS.items():
        utts = read_manifest(split / f"{stem}.jsonl", check_audio=True)
        test_audio[name] = ([normalize_text(u.text) for u in utts], [load_audio(u.audio) for u in utts])
        test_examples[name] = load_examples([split / f"{stem}.jsonl"], config.features, config.vocabulary, (1.0,),
                                            args.cache_dir)[0]

    report = {"model": str(args.model), "manifests": str(split), "epochs": args.epochs, "sparsity": sparsity,
              "clusters": clusters, "tflite_threads": TFLITE_THREADS, "variants": {}}
    print("baseline", flush=True)
    report["variants"]["baseline"] = {
        "model_dir": str(args.model),
        "finetune_seconds": 0.0,
        "finetune_cpu_seconds": 0.0,
        "keras": keras_rates(args.model, test_examples),
        "tflite": export_all(args.model, work, "baseline", ("dynamic", "int8", "int8_float_frontend"), calibration,
                             test_audio),
    }
    runs = {
        "finetune": ("finetuned", lambda out: tfmot_finetuning.finetune_only(args.model, train, dev, out, args.epochs,
                                                                     args.cache_dir), ("dynamic", "int8_float_frontend")),
        "prune": ("pruned", lambda out: tfmot_sparsity.prune(args.model, train, dev, out, sparsity, args.epochs, args.cache_dir),
                  ("dynamic", "int8_float_frontend")),
        "cluster": ("clustered", lambda out: tfmot_sparsity.cluster(args.model, train, dev, out, clusters, args.epochs,
                                                              args.cache_dir), ("dynamic", "int8_float_frontend")),
        "qat": ("qat", lambda out: tfmot_quantization.qat(args.model, train, dev, out, args.epochs, args.cache_dir),
                ("int8_float_frontend",)),
    }
    for technique in args.techniques:
        name, run, modes = runs[technique]
        print(name, flush=True)
        model_dir = run(work / name)
        opt = read_model_meta(model_dir)["optimization"]
        _, _, _, net = load_model_dir(model_dir)
        entry = {"model_dir": str(model_dir), "finetune_seconds": opt["seconds"],
                 "finetune_cpu_seconds": opt["cpu_seconds"], "optimization": opt}
        if technique == "prune":
            entry["sparsity_per_kernel"] = tfmot_sparsity.sparsity_report(net)
        if technique == "cluster":
            entry["unique_values_per_kernel"] = tfmot_sparsity.unique_values(net)
        entry["keras"] = keras_rates(model_dir, test_examples)
        entry["tflite"] = export_all(model_dir, work, name, modes, calibration, test_audio)
        report["variants"][name] = entry
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["machine"] = machine()
    table = markdown(report)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {args.out} ({report['total_seconds']:.0f} s)")
    if temp:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
