"""`model-tools`: convert, inspect, verify, evaluate, warmup, image, train, serve.

Every user error (missing file, not a Keras model, labels count != output size, unwritable output) prints one
`error: ...` line and exits 2, leaving nothing half-written behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from model_interface.contract import BOOK_LABELS
from model_interface.preprocessing import PREPROCESSINGS

EXIT_USAGE = 2


def _labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("labels must be a comma-separated list")
    return labels


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("batch sizes must be comma-separated integers") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="model-tools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="Keras .h5/.keras -> SavedModel at <out>/<name>/<version>/")
    convert.add_argument("source", type=Path, help="the .h5 (legacy tf.keras) or .keras (Keras 3) model")
    convert.add_argument("--out", type=Path, required=True, help="model base dir parent (e.g. models)")
    convert.add_argument("--name", default="clothing-model", help="model name (TF Serving --model_name)")
    convert.add_argument("--version", type=int, default=1, help="numeric version directory")
    convert.add_argument("--labels", type=_labels, default=list(BOOK_LABELS), help="comma-separated, output order")
    convert.add_argument("--scaling", default="xception", choices=["xception", "caffe", "none"])
    convert.add_argument("--uint8-signature", action="store_true", help="add serving_uint8 (scaling in-graph)")
    convert.add_argument("--bytes-signature", action="store_true", help="add serving_bytes (decode+resize in-graph)")

    inspect = sub.add_parser("inspect", help="signatures, model contract JSON, chart values, gateway env")
    inspect.add_argument("model", type=Path, help="model base dir (<out>/<name>) or a version dir")
    inspect.add_argument(
        "--format",
        choices=["text", "json", "values", "models", "env"],
        default="text",
        help="values: the chart's model block; models: an entry of its models list, with versions and a stable label",
    )
    inspect.add_argument("--name", help="override the model name")
    inspect.add_argument("--labels", type=_labels, help="override/add labels (comma-separated)")
    inspect.add_argument("--scaling", choices=["xception", "caffe", "none"])
    inspect.add_argument(
        "--preprocessing", choices=PREPROCESSINGS, help="the preprocessing the model was validated with (see evaluate)"
    )
    inspect.add_argument("--output", type=Path, help="write to this file instead of stdout")

    verify = sub.add_parser("verify", help="compare the source model and the SavedModel on images")
    verify.add_argument("source", type=Path)
    verify.add_argument("saved_model", type=Path)
    verify.add_argument("images", type=Path, nargs="+")
    verify.add_argument("--tolerance", type=float, default=1e-3, help="max |delta logit| allowed")

    evaluate = sub.add_parser("evaluate", help="top-1 and per-class accuracy on a labelled folder (<class>/<image>)")
    evaluate.add_argument("saved_model", type=Path)
    evaluate.add_argument("folder", type=Path, help="one folder per class, named as the model's labels")
    evaluate.add_argument(
        "--preprocessing",
        choices=PREPROCESSINGS,
        action="append",
        help="the gateway's preprocessing to evaluate with; repeat for several (default: each)",
    )

    warmup = sub.add_parser("warmup", help="write assets.extra/tf_serving_warmup_requests")
    warmup.add_argument("saved_model", type=Path)
    warmup.add_argument("images", type=Path, nargs="+")
    warmup.add_argument("--batch-sizes", type=_batch_sizes, default=[1], help="e.g. 1,8,32")

    image = sub.add_parser("image", help="the build context (<out>/<name>/<version>/, Dockerfile) of a model image")
    image.add_argument("model", type=Path, help="model base dir (its latest version) or a version dir")
    image.add_argument("--out", type=Path, required=True, help="a new directory for the build context")
    image.add_argument("--name", help="model name in the image (default: the model's)")
    image.add_argument("--version", type=int, help="version number in the image (default: the model's)")

    train = sub.add_parser("train", help="train the clothing classifier (writes <out>/clothing-model.h5)")
    train.add_argument("--data", type=Path, required=True, help="clothing-dataset-small dir (train/, validation/)")
    train.add_argument("--out", type=Path, required=True)
    train.add_argument("--size", type=int, default=128)
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--seed", type=int, default=42)

    sub.add_parser("serve", help="the TF-Serving-compatible model server (takes TF Serving's flags)", add_help=False)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run one parsed subcommand; raises the tools' own errors for main() to report."""
    if args.command == "convert":
        from model_tools.convert import convert

        target, contract = convert(
            args.source, args.out, args.name, args.version, args.labels, args.scaling,
            args.uint8_signature, args.bytes_signature,
        )  # fmt: skip
        print(
            f"wrote {target} (input {contract.input_name} {list(contract.input_size)}, output {contract.output_name})"
        )
        return 0
    if args.command == "inspect":
        from model_tools.inspect_model import gateway_env, inspect, models_entry, values_snippet

        text, contract = inspect(args.model, args.name, args.labels, args.scaling, args.preprocessing)
        rendered = {
            "text": lambda: text + "\nModel contract:\n" + contract.to_json(),
            "json": contract.to_json,
            "values": lambda: values_snippet(contract),
            "models": lambda: models_entry(contract, args.model),
            "env": lambda: gateway_env(contract),
        }[args.format]()
        if args.output:
            args.output.write_text(rendered)
        else:
            sys.stdout.write(rendered)
        return 0
    if args.command == "verify":
        from model_tools.verify import verify

        report = verify(args.source, args.saved_model, args.images)
        for name, delta in report.signatures.items():
            print(f"{name}: max |delta logit| = {delta:.3g}")
        print(f"top-1 agreement: {report.top1_agreement:.0%} over {report.images} image(s)")
        if not report.ok(args.tolerance):
            print(f"FAIL: beyond tolerance {args.tolerance}", file=sys.stderr)
            return 1
        return 0
    if args.command == "evaluate":
        from model_tools.evaluate import evaluate, table

        sys.stdout.write(table(evaluate(args.saved_model, args.folder, args.preprocessing or list(PREPROCESSINGS))))
        return 0
    if args.command == "warmup":
        from model_tools.warmup import write_warmup

        path, count = write_warmup(args.saved_model, args.images, args.batch_sizes)
        print(f"wrote {count} warmup record(s) to {path}")
        return 0
    if args.command == "image":
        from model_tools.image import write_image_context

        name, version = write_image_context(args.model, args.out, args.name, args.version)
        print(f"wrote {args.out}/{name}/{version}/ and {args.out}/Dockerfile; build and push it, then list it in")
        print("tfServing.modelSource.modelImages.images:")
        print(f'  - {{model: {name}, version: {version}, repository: REGISTRY/{name}-model, tag: "{version}"}}')
        return 0
    if args.command == "train":
        from model_tools.train import train

        summary = train(args.data, args.out, args.size, args.epochs, args.batch_size, args.seed)
        print(f"validation accuracy {summary['val_accuracy']:.3f} in {summary['train_seconds']} s")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `model-tools` command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from model_tools.server import main as serve

        return serve(argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from model_interface.contract import ContractError
    from model_tools.convert import ConvertError

    try:
        return run(args)
    except (ConvertError, ContractError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
