"""Pretraining arguments: the shared settings in one typed dataclass; each method's model settings come from
its config class (signature, types, docstring), never listed a second time.

Precedence (lowest to highest): field defaults < method defaults < ``--preset`` < ``--config FILE``
(YAML or JSON) < flags given on the command line. The resolved arguments are saved in the run dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..methods import Method, get_method, list_methods
from ..models.config_fields import BACKBONE_FIELDS
from .presets import PRESETS, describe_preset, resolve_defaults


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class PretrainArguments:
    # ---- what to train
    method: str | None = _f(None, "what to train (a registered method: hf_mixssl.methods.list_methods())",
                            group="what to train")
    preset: str | None = _f(None, "an official recipe (hf_mixssl.train.presets.PRESETS)")
    config: str | None = _f(None, "YAML/JSON file whose values become defaults")
    # ---- data
    dataset: str = _f("../shared/datasets/cifar10", "load_dataset path or Hub id, or a folder of images "
                                                   "(imagefolder)", group="data",
                      aliases=["--dataset_name", "--train_dir"])
    dataset_config: str | None = _f(None, "dataset config name")
    train_split: str = _f("train", "training split")
    eval_split: str | None = _f(None, "kNN split (default: test or validation when present); a row slice such as "
                                      "'train[:5000]' works for any split")
    train_val_split: float | None = _f(None, "hold out this fraction of the training split (its first rows, "
                                             "train[:n]) for evaluation and train on the rest (train[n:]), for "
                                             "labelled data without a test split")
    image_column: str | None = _f(None, "image column (auto-detected)")
    label_column: str | None = _f(None, "label column for kNN (auto-detected)")
    views: str | None = _f(None, "view recipe: moco_v1 | moco_v2 | moco_cifar | moco_v3 | classify | mae | "
                                 "emp_ssl (default: the method's)")
    min_crop_scale: float | None = _f(None, "RandomResizedCrop lower scale (recipe default)")
    augment_on: str = _f("auto", "where the views' colour ops run: cpu (PIL, in the data workers) | device (batched "
                                 "on the training device; workers only decode and crop) | auto (device on a GPU, "
                                 "cpu on a CPU, the faster one measured on each)", choices=["auto", "cpu", "device"])
    shuffle_buffer_size: int = _f(10_000, "streaming shuffle buffer")
    num_workers: int = _f(2, "decode/augment worker processes per rank")
    cpu_threads: int | None = _f(None, "torch threads per process when training on CPU (default: the cores this "
                                       "process may use / processes on this machine; `accelerate launch` without "
                                       "--cpu sets OMP_NUM_THREADS=1)")
    min_image_size: int = _f(4, "skip images with a side below this many pixels")
    # ---- model (the method's own settings are generated from its config class: see build_parser)
    init_backbone: str | None = _f(None, "mixup classifier: start the backbone from an exported timm encoder "
                                         "(a run dir or its encoder/ dir); its architecture, kwargs and "
                                         "preprocessing become the defaults", group="model (every method)")
    backbone_pretrained: str | None = _f(None, "start the backbone (and its momentum copy) from pretrained weights: "
                                               "hf-hub:ORG/NAME (timm), local-dir:DIR or a directory holding a timm "
                                               "export (a run dir or its encoder/), or a .safetensors file; every "
                                               "method (MAE keeps its fixed sin-cos positions)")
    sync_bn: bool = _f(False, "convert BatchNorm to SyncBatchNorm when running on several processes")
    # ---- optimisation
    per_device_batch_size: int = _f(256, "images per device per micro-step (ignored when global_batch_size is set)",
                                    group="optimisation", aliases=["--per_device_train_batch_size"])
    global_batch_size: int | None = _f(None, "images per optimizer step over all processes and accumulation steps "
                                             "(the papers' batch; presets set it): the per-device batch is this / "
                                             "(processes x gradient_accumulation_steps)")
    bn_group_size: int | None = _f(None, "MoCo v1/v2: BatchNorm statistics over groups of this many images, as the "
                                         "official per-GPU BN (ImageNet 32 = 256 / 8 GPUs): bn_splits = per-device "
                                         "batch / this, on any number of processes")
    gradient_accumulation_steps: int = _f(1, "micro-steps per optimizer step")
    max_steps: int | None = _f(None, "optimizer steps (overrides num_epochs)", aliases=["--max_train_steps"])
    num_epochs: float | None = _f(None, "epochs over the train split", aliases=["--num_train_epochs"])
    learning_rate: float = _f(0.03, "peak learning rate (x global_batch/256 with --scale_lr)")
    scale_lr: bool = _f(False, "multiply learning_rate by global_batch/256")
    min_lr: float = _f(0.0, "final learning rate of the cosine schedule")
    lr_schedule: str = _f("cosine", "cosine | constant | step (x0.1 at each --lr_decay_epochs)",
                          aliases=["--lr_scheduler_type"],
                          choices=["cosine", "constant", "step"])
    lr_by_epoch: bool = _f(False, "hold the lr for each epoch at its value at the epoch's start (MoCo v1/v2's "
                                  "adjust_learning_rate, mmcv's by_epoch schedules in OpenMixup)")
    lr_decay_epochs: list[float] | None = _f(None, "epochs at which the step schedule multiplies the lr by 0.1 "
                                                   "(MoCo v1: 120 160)")
    warmup_steps: int | None = _f(None, "linear warmup steps", aliases=["--num_warmup_steps"])
    warmup_epochs: float | None = _f(None, "linear warmup epochs")
    optimizer: str = _f("sgd", "sgd | adamw | lars", choices=["sgd", "adamw", "lars"])
    weight_decay: float = _f(1e-4, "weight decay")
    sgd_momentum: float = _f(0.9, "SGD/LARS momentum")
    nesterov: bool = _f(False, "Nesterov momentum for SGD/LARS (the MoCo recipes use plain momentum)")
    lars_trust_coeff: float | None = _f(None, "LARS trust coefficient eta (timm default 0.001)")
    lars_trust_clip: bool = _f(False, "LARS: clip the trust ratio at 1 (LARC; EMP-SSL's LARSWrapper clip=True)")
    adam_betas: list[float] | None = _f(None, "AdamW betas: beta1 beta2 (or a JSON list)")
    exclude_bias_norm_wd: bool = _f(False, "no weight decay on biases and norm parameters")
    max_grad_norm: float | None = _f(None, "clip gradients to this norm")
    channels_last: bool = _f(False, "channels-last memory layout for the model and its inputs (faster convolutions "
                                    "on GPUs with tensor cores)")
    torch_compile: bool = _f(False, "compile the model, and with --augment_on device the view ops, with torch.compile "
                                    "(opt-in: the first steps compile)")
    retain_freed_memory: bool = _f(True, "on a CPU, malloc keeps the memory it frees (faster steps: no page faults "
                                         "for each batch-sized tensor; the resident size stays at its peak)")
    # ---- run
    output_dir: str = _f("runs/moco", "run directory", group="run")
    seed: int = _f(0, "seed for model init, data order and augmentation")
    checkpointing_steps: int = _f(500, "save a resumable checkpoint every N steps (0 = only at the end)")
    save_total_limit: int = _f(2, "checkpoints kept")
    resume_from_checkpoint: str | None = _f(None, "PATH or 'latest'")
    overwrite_output_dir: bool = _f(False, "replace a previous run in output_dir (without it, a directory holding a "
                                           "run is refused unless resumed)")
    export_encoder: bool = _f(True, "export the trained backbone to <output_dir>/encoder in timm's Hub format "
                                    "(--no-export_encoder to skip)")
    push_to_hub: bool = _f(False, "upload the finished run (model, code, card; encoder to <id>-encoder) to the Hub")
    hub_model_id: str | None = _f(None, "org/name of the Hub repo for --push_to_hub")
    hub_private: bool = _f(False, "create the Hub repo as private")
    report_to: str = _f("all", "tensorboard | wandb | trackio | all (those installed) | none (comma list)")
    logging_steps: int = _f(10, "log every N steps")
    knn_every: int = _f(0, "evaluate every N steps: kNN for SSL methods, top-1 for classifiers (0 = only at "
                           "the end, -1 = never)", aliases=["--eval_every"])
    image_every: int = _f(500, "write pictures (views, mixed samples, AutoMix masks) every N steps "
                               "(0 = only at the end, -1 = never)")
    image_count: int = _f(8, "images per picture row")
    knn_random_baseline: bool = _f(False, "after the final kNN, also evaluate the same network at random "
                                          "initialisation (random_init_knn_top1) for comparison")
    monitor_probe: str | None = _f(None, "also fit this cached linear probe at every SSL evaluation and log its "
                                         "top-1 (emp_ssl: EMP-SSL's func.py probe, whose accuracy by epoch its "
                                         "preset publishes; quick: ours)", choices=["quick", "emp_ssl"])
    knn_k: int = _f(200, "kNN neighbours")
    knn_t: float = _f(0.1, "kNN temperature")
    knn_train_samples: int | None = _f(None, "cap the kNN memory bank")
    knn_test_samples: int | None = _f(None, "cap the kNN test set")
    # The method's config settings given by its defaults, a preset, --config or its own flags (resolve() fills
    # it; the config class validates it). Not a flag itself.
    model_settings: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")

        for name in ("per_device_batch_size", "global_batch_size", "bn_group_size", "gradient_accumulation_steps",
                     "max_steps", "num_epochs",
                     "learning_rate", "logging_steps", "knn_k", "knn_t", "save_total_limit"):
            positive(name)
        positive("cpu_threads")
        if self.train_val_split is not None:
            if not 0.0 < self.train_val_split < 1.0:
                raise ValueError(f"train_val_split must be a fraction in (0, 1), got {self.train_val_split!r}")
            if self.eval_split is not None:
                raise ValueError("give either --eval_split or --train_val_split, not both")
        for name in ("weight_decay", "min_lr", "checkpointing_steps", "num_workers", "warmup_steps", "warmup_epochs"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (org/name)")
        if self.max_steps is None and self.num_epochs is None:
            raise ValueError("set max_steps or num_epochs")
        if self.lr_schedule == "step" and not self.lr_decay_epochs:
            raise ValueError("lr_schedule 'step' needs lr_decay_epochs (e.g. --lr_decay_epochs 120 160)")
        if self.init_backbone and self.method != "mixup":
            raise ValueError(f"init_backbone applies to method 'mixup' (fine-tuning), not {self.method!r}")



# ------------------------------------------------------------------------------- the method's config settings
_ARG_LINE = re.compile(r"^ {8}(\w+) \((`.*?)\):\s*(.*)$")


def config_field_docs(config_cls: type) -> dict[str, str]:
    """``{field: description}`` from a config class's Google-style ``Args:`` docstring.

    Each field has its own entry ``name (`type`, defaults to ...): text`` at 8 spaces, continued by lines
    indented deeper (the transformers convention our configs follow).
    """
    docs: dict[str, list[str]] = {}
    current = None
    for line in (config_cls.__doc__ or "").splitlines():
        match = _ARG_LINE.match(line)
        if match:
            current = match.group(1)
            docs[current] = [match.group(3)]
        elif current and line.startswith(" " * 12) and line.strip():
            docs[current].append(line.strip())
        else:
            current = None
    return {name: " ".join(parts) for name, parts in docs.items()}


@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One setting of a config class: its name, type annotation, default and documentation."""

    name: str
    annotation: Any
    default: Any
    help: str

    def scalar_allowed(self) -> bool:
        return _base_type(self.annotation) in (int, float, str, bool)


def config_fields(config_cls: type) -> dict[str, ConfigField]:
    """The keyword-only settings of ``config_cls.__init__`` (everything but ``**kwargs``), documented."""
    import inspect

    hints = typing.get_type_hints(config_cls.__init__)
    docs = config_field_docs(config_cls)
    fields = {}
    for name, param in inspect.signature(config_cls.__init__).parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        fields[name] = ConfigField(name, hints.get(name, Any), param.default, docs.get(name, ""))
    return fields


def _base_type(tp: Any) -> Any:
    """The first non-None member of ``X | None`` / ``X | list[X]``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and args:
        return args[0]
    return tp


def _list_item(tp: Any) -> Any | None:
    """``X`` when ``tp`` admits ``list[X]`` (alone, or in a union), else ``None``."""
    for member in (typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)):
        if typing.get_origin(member) is list:
            return (typing.get_args(member) or (str,))[0]
        if member is list:
            return str
    return None


class _ListAction(argparse.Action):
    """Space-separated values (``--image_mean 0.5 0.5 0.5``) or one JSON list (``--image_mean '[0.5, 0.5, 0.5]'``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        item = self.const
        out = []
        for token in values:
            try:
                parsed = json.loads(token) if token.lstrip().startswith("[") else [token]
                out += [item(v) for v in parsed]
            except (ValueError, TypeError):
                parser.error(f"{option_string}: {token!r} is not a {item.__name__} (or a JSON list of them)")
        setattr(namespace, self.dest, out)


def _argparse_kwargs(tp: Any) -> dict[str, Any]:
    """argparse settings for a type: bool -> --x/--no-x, list[X] -> values or a JSON list, dict -> JSON."""
    item = _list_item(tp)
    if item is not None:
        return {"nargs": "+", "action": _ListAction, "const": item, "metavar": item.__name__.upper()}
    base = _base_type(tp)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if base in (dict, list) or typing.get_origin(base) in (dict, list):
        return {"type": json.loads, "metavar": "JSON"}
    return {"type": base if base in (int, float, str) else str}


def _coerce(value: Any, f: ConfigField) -> Any:
    """A one-element list for a field that takes a scalar (``--mix_alpha 0.2``, a preset's ``[2.0]``) -> scalar."""
    if isinstance(value, list) and len(value) == 1 and f.scalar_allowed():
        return value[0]
    return value


def config_field_names(method: Method) -> set[str]:
    return set(config_fields(method.config_class))


def method_settings(method: Method) -> dict[str, ConfigField]:
    """The settings a user may give for ``method``: its config's fields minus those the method name fixes."""
    return {n: f for n, f in config_fields(method.config_class).items() if n not in method.fixed}


def settings_of(method: Method, values: dict[str, Any]) -> dict[str, Any]:
    """The method's config settings among flat ``values`` (``None`` dropped, one-element lists made scalar where
    the field takes a scalar)."""
    settings = method_settings(method)
    return {k: _coerce(v, settings[k]) for k, v in values.items() if k in settings and v is not None}


# ------------------------------------------------------------------------------- the parser
class _ShortErrorParser(argparse.ArgumentParser):
    """Errors in two lines (the message and where to look), not a 60-line usage text before the message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists the flags; `--method M --help` "
                     f"a method's settings)\n")


def _training_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(PretrainArguments) if f.metadata.get("cli", True)]


def build_parser(method: str | None = None) -> argparse.ArgumentParser:
    """The pretraining parser: the shared flags, then one group per method of the config's own settings.

    With ``method`` given only that method's group is added (with its types and documentation); without it,
    every method's group (a setting shared with an earlier group is listed there only).
    """
    parser = _ShortErrorParser(
        description="Pretrain a hf_mixssl model (launch with `accelerate launch scripts/pretrain.py ...` or "
                    "`accelerate launch -m hf_mixssl.cli.pretrain ...`). `--method M --help` shows M's settings.",
        argument_default=argparse.SUPPRESS,  # only flags actually given override the lower layers
        allow_abbrev=False,
    )
    hints = typing.get_type_hints(PretrainArguments)
    groups: dict[str, argparse._ArgumentGroup] = {}
    group = None
    for f in _training_fields():
        title = f.metadata.get("group")
        if title:
            group = groups[title] = parser.add_argument_group(title)
        kw = _argparse_kwargs(hints[f.name])
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        names = [f"--{f.name}", *f.metadata.get("aliases", ())]
        shown = "" if f.default is None else f" (default: {f.default})"
        group.add_argument(*names, dest=f.name, help=f.metadata["help"] + shown, **kw)
    groups["run"].add_argument("--with_tracking", dest="report_to", action="store_const", const="all",
                               help="the no_trainer scripts' flag: same as --report_to all")
    added: set[str] = {f.name for f in _training_fields()}
    shared = groups["model (every method)"]
    entries = [get_method(method)] if method else [get_method(n) for n in list_methods()]
    seen_configs: set[type] = set()
    for entry in entries:
        if entry.config_class in seen_configs:
            continue
        seen_configs.add(entry.config_class)
        names = [n for n in list_methods() if get_method(n).config_class is entry.config_class]
        settings = method_settings(entry)
        own = parser.add_argument_group(
            f"{' / '.join(names)} ({entry.config_class.__name__})",
            f"settings of {entry.config_class.__name__} (its docstring has the details)")
        skipped = []
        for name, f in settings.items():
            if name in added:
                if name not in BACKBONE_FIELDS:
                    skipped.append(f"--{name}")
                continue
            shared_field = name in BACKBONE_FIELDS
            if method or not shared_field:  # the method's own default where it has one
                default = entry.defaults.get(name, f.default)
                help_text = f"{f.help} (default: {default!r})"
            else:
                help_text = f"{f.help} (default: the method's)"
            (shared if shared_field else own).add_argument(f"--{name}", dest=name, help=help_text,
                                                           **_argparse_kwargs(f.annotation))
            added.add(name)
        if skipped:
            own.description += f"; also takes {', '.join(skipped)} (listed above; `--method {names[0]} --help`)"
    return parser


def load_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config file {path!r} does not exist")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is reported with the file name
        raise ValueError(f"cannot parse --config file {path!r}: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"--config file {path!r} must hold a mapping of argument names to values")
    return values


def _method_of(cli: dict[str, Any], file_values: dict[str, Any]) -> str | None:
    method = cli.get("method", file_values.get("method"))
    preset = cli.get("preset", file_values.get("preset"))
    if method is None and preset in PRESETS:
        method = PRESETS[preset]["method"]
    return method


def parse_args(argv: list[str] | None = None) -> PretrainArguments:
    """CLI -> resolved :class:`PretrainArguments` (model settings in ``model_settings``)."""
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS)
    for name in ("--method", "--preset", "--config"):
        first.add_argument(name)
    known, _ = first.parse_known_args(argv)
    file_values = load_config_file(known.config) if getattr(known, "config", None) else {}
    method = _method_of(vars(known), file_values)
    if method is not None:
        get_method(method)  # an unknown name is an error naming the close ones, before any usage text
    parser = build_parser(method)
    preset = getattr(known, "preset", file_values.get("preset"))
    if preset in PRESETS:  # --help shows where the recipe comes from and how it differs from the official one
        parser.epilog = describe_preset(preset)
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    cli, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(_unknown_flags_message(rest, method))
    cli = vars(cli)
    merged = resolve_defaults(method, cli.get("preset", file_values.get("preset")))
    for layer in (file_values, cli):
        # A setting given at a higher layer replaces its alternative given below it (a preset's global batch and a
        # command line's --per_device_batch_size 128: the command line wins; likewise bn_splits / bn_group_size).
        for given, replaced in (("per_device_batch_size", "global_batch_size"), ("bn_splits", "bn_group_size")):
            if given in layer and replaced not in layer:
                merged[replaced] = None
        merged.update(layer)
    return resolve(merged)


def _unknown_flags_message(rest: list[str], method: str | None) -> str:
    """Name each unknown flag: a setting of another method, or the closest valid names."""
    known = [f"--{f.name}" for f in _training_fields()]
    if method:
        known += [f"--{n}" for n in method_settings(get_method(method))]
    lines = []
    for i, token in enumerate(rest):
        if not token.startswith("--"):
            if i == 0 or not rest[i - 1].startswith("--"):  # the value of an unknown flag is not news
                lines.append(f"unexpected value {token!r}")
            continue
        flag = token.split("=", 1)[0]
        owners = [n for n in list_methods() if flag[2:] in method_settings(get_method(n))]
        if owners and method:
            lines.append(f"{flag} is a setting of {', '.join(owners)}, not of {method}")
        else:
            close = difflib.get_close_matches(flag, known, n=3)
            lines.append(f"unknown flag {flag}" + (f"; did you mean {' or '.join(close)}?" if close else ""))
    return "; ".join(lines)


def resolve(values: dict[str, Any]) -> PretrainArguments:
    """Flat values (method defaults, preset, config file and flags merged) -> validated arguments.

    Keys that are arguments become arguments; keys that are settings of the method's config go into
    ``model_settings`` and are validated by building the config; anything else is an error naming the key
    (and the method it belongs to, if any).
    """
    values = dict(values)
    if values.get("method") is None:
        raise ValueError("set --method or --preset")
    method = get_method(values["method"])
    names = {f.name for f in dataclasses.fields(PretrainArguments)}
    settings = method_settings(method)
    known = {k: v for k, v in values.items() if k in names and k != "model_settings"}
    model = {**(values.get("model_settings") or {}), **settings_of(method, values)}
    # version=2 in a moco_v2 run's saved arguments is fine: the method name fixes it to that value.
    unknown = [k for k, v in values.items() if k not in names and k not in settings
               and not (k in method.fixed and v == method.fixed[k])]
    if unknown:
        owners = {k: [n for n in list_methods() if k in method_settings(get_method(n))] for k in unknown}
        detail = "; ".join(f"{k} (a setting of {', '.join(o)})" if o else k for k, o in owners.items())
        raise ValueError(f"argument(s) not valid for method {method.name!r}: {detail}; see --method "
                         f"{method.name} --help")
    if known.get("views") is None:
        known["views"] = method.views
    args = PretrainArguments(**known, model_settings=model)
    args.validate()
    try:  # the config class is the one place a setting is validated
        method.make_config(**model)
    except (TypeError, ValueError) as e:
        raise ValueError(f"method {method.name!r}: {e}") from e
    return args
