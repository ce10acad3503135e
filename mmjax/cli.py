"""Command line: `mmjax train | eval | sample | export | import | verify | data build | compile`.

Each command imports what it runs when it runs (jax, orbax, tfds, grain are seconds to
load), so `mmjax --help` and a config error answer at once: this module imports only the
config, the errors and the light constants of mmjax.
"""

import argparse
import json
import os
import sys

from mmjax import config as config_lib
from mmjax.convert import FORMATS
from mmjax.data import DEFAULT_DATA_DIR
from mmjax.errors import (BadData, BuildError, CheckpointError, ConfigError, DataDirError,
                          MeshError, MissingFilesystem, TopologyError, TrainingDiverged)


def _parser():
    parser = argparse.ArgumentParser(prog="mmjax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a config (resumes from WORKDIR's checkpoints)",
                           epilog="Override any config key with --config.KEY=VALUE, "
                                  "e.g. --config.train.batch_size=256")
    train.add_argument("--config", default=None,
                       help="config file (default: the embedded configs/smoke_clip.py)")
    train.add_argument("--workdir", default=None, help="default: runs/<config name>")
    train.add_argument("--load_weights_only", action="store_true",
                       help="WORKDIR's checkpoints are of another model config: start this one "
                            "from their parameters (the earlier steps move to "
                            "checkpoints/earlier-*)")
    for p in (train, sub.add_parser("eval", help="evaluate the newest checkpoint in WORKDIR")):
        if p is not train:
            p.add_argument("--workdir", required=True)
            p.add_argument("--evals", default=None,
                           help="TYPE:DATASET[:SPLIT],... to evaluate instead of the run's "
                                "config.evals, e.g. zeroshot:my_photos,retrieval:my_pairs:validation")
        p.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
        p.add_argument("--coordinator", default=None,
                       help="multi-host: host:port of process 0 (TPU VMs and SLURM need none)")
        p.add_argument("--num_processes", type=int, default=None)
        p.add_argument("--process_id", type=int, default=None)
    export = sub.add_parser("export", help="write WORKDIR's parameters as params-only orbax, "
                                           "safetensors, open_clip or transformers BERT weights")
    export.add_argument("--workdir", required=True)
    export.add_argument("--step", type=int, default=None, help="default: the newest checkpoint")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, help="a directory (a .safetensors file for safetensors)")
    export.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                        help="cast the parameters (params and safetensors formats)")
    imp = sub.add_parser("import", help="start a new WORKDIR (a step-0 checkpoint for eval / train) "
                                        "from exported, open_clip or transformers BERT weights",
                         epilog="open_clip / hf_bert take the model from the weights and the rest "
                                "from --config; --config.KEY=VALUE overrides apply")
    imp.add_argument("--format", required=True, choices=FORMATS)
    imp.add_argument("--src", required=True, help="what `mmjax export` wrote, an open_clip local "
                                                  "dir or a transformers BERT dir")
    imp.add_argument("--workdir", required=True)
    imp.add_argument("--config", default=None, help="base config for open_clip / hf_bert (default: "
                                                    "the embedded smoke config of that task)")
    imp.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    verify = sub.add_parser(
        "verify", help="check WORKDIR's checkpoints against the checksums saved with them: one "
                       "JSON line naming each bad array; exit 1 if a step is corrupt",
        epilog="Reads on this host's CPU and changes nothing (safe next to a running job). "
               "Exit 0: every step checked is intact; 1: a step is corrupt; 2: an error.")
    verify.add_argument("--workdir", required=True)
    verify.add_argument("--step", type=int, default=None, help="default: every step")
    _data_parser(sub)
    _compile_parser(sub)
    _sample_parser(sub)
    return parser


def _sample_parser(sub):
    sample = sub.add_parser("sample", help="continue a prompt with WORKDIR's causal LM (task 'lm'), "
                                           "or caption an image (task 'clip+caption'): the text on stdout")
    sample.add_argument("--workdir", required=True, help="a run, or an `mmjax export --format params` dir")
    sample.add_argument("--prompt", default=None, help="required without --image")
    sample.add_argument("--image", default=None,
                        help="an image file: its caption (after --prompt, if given) by a captioner")
    sample.add_argument("--step", type=int, default=None, help="default: the newest checkpoint")
    sample.add_argument("--max_new_tokens", type=int, default=None,
                        help="default 32; captions: what the context length leaves")
    sample.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    sample.add_argument("--top_k", type=int, default=0, help="0: off")
    sample.add_argument("--top_p", type=float, default=1.0, help="1: off")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--data_dir", default=DEFAULT_DATA_DIR)


def _sample(args):
    import mmjax
    try:
        if args.prompt is None and args.image is None:
            raise ValueError("sample needs --prompt (a causal LM) or --image (a captioner)")
        images = None
        if args.image is not None:
            from PIL import Image
            with Image.open(os.path.expanduser(args.image)) as image:
                images = [image.copy()]
        model = mmjax.load(args.workdir, step=args.step, data_dir=os.path.expanduser(args.data_dir))
        text, = model.generate(None if args.prompt is None else [args.prompt],
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, seed=args.seed, images=images)
    except (ValueError, OSError, CheckpointError, ConfigError, DataDirError) as e:
        print(f"mmjax: error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0


def _verify(args):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # numpy on the host: no accelerator needed
    from mmjax import checkpoint_verify, paths
    try:
        result = checkpoint_verify.verify(paths.join(args.workdir, "checkpoints"), args.step)
    except (CheckpointError, FileNotFoundError, MissingFilesystem) as e:
        print(f"mmjax: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


def _data_parser(sub):
    data = sub.add_parser("data", help="datasets in the data dir")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    build = data_sub.add_parser(
        "build", help="turn your images+captions, image folder or text into a tfds ArrayRecord "
                      "dataset in the data dir (prints one JSON summary line)",
        epilog="SOURCE kinds: a table (.csv/.tsv/.jsonl/.parquet naming local images and captions), "
               "webdataset shards ('dir/{00000..00099}.tar' or a glob), an image folder "
               "(root/CLASS/*.jpg, or root/train|val/CLASS/), text (.txt files or a .jsonl with a "
               "'text' field), conll (tagged sentences: WORD ... TAG lines, a blank line between "
               "sentences; .conll/.bio/.iob files, or --kind conll). Benchmarks from files you have (nothing is downloaded): imagenet "
               "(ILSVRC2012_img_val.tar or its folder -> split 'validation', labels from --labels), "
               "karpathy (dataset_coco.json or dataset_flickr30k.json + --images: one record per "
               "image with its captions; splits test, validation, and train for the train/restval "
               "images --images holds). Both are detected (a tar or folder of "
               "ILSVRC2012_val_*.JPEG; a .json SOURCE). Rerunning with the same source and options "
               "does nothing.")
    build.add_argument("source", metavar="SOURCE")
    build.add_argument("--name", required=True, help="dataset name (letters, digits, _)")
    build.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
    build.add_argument("--kind", default=None,
                       choices=("table", "webdataset", "imagefolder", "text", "imagenet",
                                "karpathy", "conll"),
                       help="default: inferred from SOURCE")
    build.add_argument("--max_side", type=int, default=None,
                       help="resize larger images so the longer side is N (re-encoded as JPEG q95, "
                            "PNG when transparent); default: images stored as given")
    build.add_argument("--val_fraction", type=float, default=None,
                       help="fraction of train moved to 'validation' by a hash of the record key "
                            "(default 0.01, 0 when the source names its splits)")
    build.add_argument("--overwrite", action="store_true",
                       help="replace an existing dataset of that name (after the new one is built)")
    build.add_argument("--workers", type=int, default=None, help="default: min(CPUs, 8)")
    build.add_argument("--max_bad_fraction", type=float, default=0.01,
                       help="abort when more records than this are bad (default 0.01)")
    build.add_argument("--image_column", default=None,
                       help="table column of image paths or bytes (default: image, image_path, "
                            "filepath, path, file, filename, jpg, png, webp)")
    build.add_argument("--caption_column", default=None,
                       help="table caption column (default: caption, text, title); the text field "
                            "of a JSONL corpus (default: text)")
    build.add_argument("--split_column", default=None,
                       help="table column of train/val/validation/test (default: split, if present)")
    build.add_argument("--text_unit", default=None, choices=("file", "block"),
                       help="text: a document per .txt file, or per blank-line-separated block "
                            "(default: block for one file, file for several)")
    build.add_argument("--tag_scheme", default=None,
                       help="conll: the tags' scheme, bio or iobes (default: detected, iobes when "
                            "a tag starts E- or S-)")
    build.add_argument("--labels", default=None,
                       help="imagenet: one WordNet id per line in image order, or Kaggle's "
                            "LOC_val_solution.csv (default: tensorflow-datasets' "
                            "validation_labels.txt)")
    build.add_argument("--images", default=None,
                       help="karpathy: where the images are, comma-separated zips (val2014.zip), "
                            "uncompressed tars (flickr30k-images.tar) or folders")


def _data(args):
    from mmjax.data import build
    columns = {k: getattr(args, k) for k in ("image_column", "caption_column", "split_column",
                                             "text_unit", "tag_scheme")}
    try:
        summary = build.build(args.source, args.name, args.data_dir, kind=args.kind,
                              max_side=args.max_side, val_fraction=args.val_fraction,
                              overwrite=args.overwrite, workers=args.workers,
                              max_bad_fraction=args.max_bad_fraction, labels=args.labels,
                              images=args.images, **columns)
    except (BuildError, OSError, MissingFilesystem) as e:
        print(f"mmjax: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0


def _export_or_import(args, overrides):
    from mmjax import export
    try:
        if args.command == "export":
            if overrides:
                raise ConfigError("export takes the config saved with the checkpoint; "
                                  "drop the --config.* flags")
            result = export.export(args.workdir, args.format, args.out, args.step, args.dtype)
        else:
            result = export.import_weights(args.format, args.src, args.workdir,
                                           os.path.expanduser(args.data_dir), args.config, overrides)
    except (ConfigError, DataDirError, MeshError, CheckpointError, ValueError, ImportError,
            FileNotFoundError, FileExistsError, PermissionError) as e:
        print(f"mmjax: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


def _compile_parser(sub):
    comp = sub.add_parser(
        "compile", help="compile a config's train step for a TPU slice on this machine: per-device "
                        "memory, FLOPs, a step-time bound, whether it fits (one JSON line)",
        epilog="Needs libtpu in its own environment: launch/install.sh compile. Override any "
               "config key with --config.KEY=VALUE. Exits 0 whether or not the step fits.")
    comp.add_argument("--config", default=None,
                      help="config file (default: the embedded configs/smoke_clip.py)")
    comp.add_argument("--topology", required=True,
                      help="a TPU slice as Cloud TPU names it: v5p-256, v4-32, v5e-16, v6e-256")
    comp.add_argument("--num_slices", type=int, default=1,
                      help="multi-slice: the slices share the mesh's dcn_* axes (default: dcn_data)")
    comp.add_argument("--mfu", type=float, default=0.4,
                      help="the model FLOPs utilisation of the second step-time figure (default 0.4)")


def _compile(args, overrides):
    from mmjax import aot
    try:
        config = config_lib.load(args.config, overrides)
        result = aot.compile_config(config, args.topology, args.num_slices, args.mfu)
    except (ConfigError, MeshError, TopologyError) as e:
        print(f"mmjax: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


def main(argv=None):
    from mmjax import allocator
    reexec = argv is None
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a for a in argv if a.startswith("--config.")]
    args = _parser().parse_args([a for a in argv if not a.startswith("--config.")])
    try:
        # Before any step: XLA's per-step temporaries stay mapped. A preload re-executes the
        # command line, so only when this is the command line (after parsing it: `--help`
        # and a usage error answer without re-executing).
        allocator.configure(reexec=reexec)
    except ValueError as e:
        print(f"mmjax: error: {e}", file=sys.stderr)
        return 2
    if args.command in ("export", "import"):
        return _export_or_import(args, overrides)
    if args.command == "data":
        return _data(args)
    if args.command == "compile":
        return _compile(args, overrides)
    if args.command == "sample":
        if overrides:
            print("mmjax: error: sample takes the config saved in WORKDIR; drop the --config.* flags",
                  file=sys.stderr)
            return 2
        return _sample(args)
    if args.command == "verify":
        if overrides:
            print("mmjax: error: verify reads the checkpoints as saved; drop the --config.* flags",
                  file=sys.stderr)
            return 2
        return _verify(args)
    try:
        data_dir = os.path.expanduser(args.data_dir)
        if args.command == "train":
            config = config_lib.load(args.config, overrides)
            name = os.path.splitext(os.path.basename((args.config or config_lib.DEFAULT_CONFIG).split(":")[0]))[0]
            workdir = args.workdir or os.path.join("runs", name)
        else:
            if overrides:
                raise ConfigError("eval takes the config saved in WORKDIR; drop the --config.* flags")
            workdir = args.workdir
            from mmjax import paths
            path = paths.join(workdir, "config.json")
            if not paths.resolve(path).is_file():
                raise FileNotFoundError(f"{path} not found: --workdir must be a directory that "
                                        f"`mmjax train` wrote")
            config = config_lib.from_json(path)
            if args.evals:
                from mmjax import eval as evaluators
                config.evals = evaluators.from_command_line(args.evals, data_dir)
                config_lib.validate(config)

        # Imported here so `mmjax --help` and config errors answer fast.
        import jax
        from mmjax.sharding import initialize_distributed
        initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        from mmjax.train.loop import evaluate_checkpoint, train
        if args.command == "train":
            results = train(config, workdir, data_dir, weights_only=args.load_weights_only)
        else:
            results = evaluate_checkpoint(config, workdir, data_dir)
    except (ConfigError, MeshError, DataDirError, CheckpointError, FileNotFoundError,
            PermissionError, TrainingDiverged, BadData, MissingFilesystem) as e:
        print(f"mmjax: error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in results.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
