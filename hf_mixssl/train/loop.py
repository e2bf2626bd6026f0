"""The pretraining loop: Accelerate + datasets streaming, for every method.

Contract with the models: ``forward(pixel_values, labels)`` returns a ``ModelOutput`` whose first field is
``loss`` and whose other tensor fields are loss terms (all logged); ``update_momentum(progress)`` is called
after each real optimizer step; ``extract_features(x)`` feeds the kNN monitor.

Reliability: checkpoints are written to a temporary directory and renamed into place, so a crash or
``kill -9`` mid-save leaves the previous checkpoint loadable; SIGINT/SIGTERM finish the current step, save
and exit; a non-finite loss stops the run before the optimizer step, naming the step and the loss terms.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.stream import ImageStream, class_names, count_classes, count_rows
from ..data.device_views import device_view_transform
from ..data.views import view_transform
from ..evaluation.probes import PROBES, linear_probe, probe_key
from ..evaluation.protocols import EvalData, accuracy_evaluate, evaluation_problem, knn_evaluate
from ..methods import get_method
from ..models.momentum import cosine_anneal
from ..sharing.cards import render_model_card, write_published_curve
from ..sharing.processor import image_processor_for
from ..sharing.hub import export_model_encoder, read_encoder_export
from .arguments import PretrainArguments, config_field_names
from .device import bf16_cpu_warning, retain_freed_memory, to_channels_last
from .pictures import save_pictures

logger = logging.getLogger("hf_mixssl")

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (full disk, read-only directory...); the message names the directory and
    the last good checkpoint, which is untouched."""


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term is NaN or Inf; the last good checkpoint is untouched."""


# ------------------------------------------------------------------------------- pure helpers
def learning_rate_at(step: int, *, total: int, warmup: int, peak: float, final: float, schedule: str,
                     milestones: tuple[int, ...] = (), epoch_steps: int = 0) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine to ``final``, constant, or ``step``: ``peak``
    times 0.1 for each milestone step reached (MoCo v1's ``adjust_learning_rate`` without ``--cos``).

    ``epoch_steps > 0`` holds each epoch at the value of its first step (MoCo's ``adjust_learning_rate(optimizer,
    epoch, args)`` and mmcv's ``by_epoch`` schedules): ``peak * (1 + cos(pi * epoch / epochs)) / 2`` for cosine.
    """
    if epoch_steps > 0:
        step = step // epoch_steps * epoch_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule == "step":
        return peak * 0.1 ** sum(step >= m for m in milestones)
    return cosine_anneal((step - warmup) / max(1, total - warmup), start=peak, end=final)


def held_out_splits(train_split: str, rows: int, fraction: float) -> tuple[str, str]:
    """``(train, held_out)`` row slices of ``train_split``: the first ``ceil(fraction * rows)`` rows are held out,
    e.g. ``("train[5000:]", "train[:5000]")`` for 50000 rows and 0.1."""
    n = math.ceil(fraction * rows)
    if not 0 < n < rows:
        raise ValueError(f"train_val_split {fraction} of the {rows} rows of split {train_split!r} leaves no rows to "
                         f"train or to evaluate on")
    return f"{train_split}[{n}:]", f"{train_split}[:{n}]"


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """The batch a run trains with: ``global_batch = per_device x processes x accumulation``, and the BatchNorm
    splits that keep a recipe's per-GPU BN group size on this world size (``None``: the model's own setting)."""

    global_batch: int
    per_device: int
    processes: int
    accumulation: int
    bn_splits: int | None

    @classmethod
    def resolve(cls, *, global_batch: int | None, per_device: int, processes: int, accumulation: int,
                bn_group: int | None) -> "BatchPlan":
        """From a global batch (derive the per-device one) or a per-device batch; ``ValueError`` naming the numbers
        when they do not divide."""
        if global_batch is not None:
            if global_batch % (processes * accumulation):
                raise ValueError(f"global_batch_size {global_batch} does not divide over {processes} process(es) x "
                                 f"{accumulation} accumulation step(s); choose a multiple of {processes * accumulation}")
            per_device = global_batch // (processes * accumulation)
        splits = None
        if bn_group is not None:
            if per_device % bn_group:
                raise ValueError(f"the per-device batch {per_device} is not a multiple of bn_group_size {bn_group}")
            splits = per_device // bn_group
        return cls(per_device * processes * accumulation, per_device, processes, accumulation, splits)


# Settings a checkpoint records: the first must match for an exact resume (the run is refused, naming each one),
# the others may change (a warning names them).
EXACT_SETTINGS = ("model_config", "dataset", "dataset_config", "train_split", "seed", "views",
                  "min_crop_scale", "augment_on", "shuffle_buffer_size", "min_image_size", "global_batch",
                  "per_device_batch", "gradient_accumulation_steps", "optimizer")
OTHER_SETTINGS = ("learning_rate", "scale_lr", "min_lr", "lr_schedule", "lr_by_epoch", "lr_decay_epochs",
                  "warmup_steps", "warmup_epochs", "weight_decay", "sgd_momentum", "max_steps", "num_epochs",
                  "max_grad_norm")


def _comparable_config(config) -> dict[str, Any]:
    """The model config without what a save adds (versions, auto_map, architectures)."""
    skip = {"transformers_version", "auto_map", "architectures", "_name_or_path"}
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"name: checkpoint X, now Y"`` for every setting recorded in ``saved`` that differs (JSON-normalised)."""
    out = []
    for key, before in saved.items():
        after = json.loads(json.dumps(now.get(key), default=str))
        if before != after:
            if isinstance(before, dict) and isinstance(after, dict):
                keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                out.append(f"{key}: " + ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in keys))
            else:
                out.append(f"{key}: checkpoint {before!r}, now {after!r}")
    return out


def build_model(args: PretrainArguments, plan: BatchPlan | None = None) -> nn.Module:
    """The method's model from the resolved arguments (settings not given keep the config defaults)."""
    method = get_method(args.method)
    values = dict(args.model_settings)
    if plan is not None and plan.bn_splits is not None:
        if "bn_splits" not in config_field_names(method):
            raise ValueError(f"bn_group_size applies to methods with split BatchNorm (MoCo), not {method.name!r}")
        values["bn_splits"] = plan.bn_splits
    weights = None
    if args.init_backbone:
        export, weights = read_encoder_export(args.init_backbone)
        model_args = {k: v for k, v in export.get("model_args", {}).items() if k != "num_classes"}
        cfg = export.get("pretrained_cfg", {})
        values.setdefault("backbone", export["architecture"])
        values.setdefault("backbone_kwargs", model_args)
        if "image_size" not in values and cfg.get("input_size"):
            values["image_size"] = int(cfg["input_size"][-1])
        for ours, theirs in (("image_mean", "mean"), ("image_std", "std")):
            if ours not in values and cfg.get(theirs):
                values[ours] = list(cfg[theirs])
    if method.supervised and values.get("num_labels") is None:
        names = class_names(args.dataset, args.train_split, name=args.dataset_config, label_column=args.label_column)
        if names:  # the dataset's ClassLabel names: pipelines and cards say "cat", not LABEL_3
            values["id2label"] = dict(enumerate(names))
            values["label2id"] = {n: i for i, n in enumerate(names)}
        else:
            values["num_labels"] = count_classes(args.dataset, args.train_split, name=args.dataset_config,
                                                 label_column=args.label_column)
    model = method.model_class(method.make_config(**values))
    for flag, source in (("init_backbone", weights), ("backbone_pretrained", args.backbone_pretrained)):
        if source is None:
            continue
        try:
            model.load_backbone_state(backbone_state(source) if flag == "backbone_pretrained" else
                                      _load_safetensors(source))
        except RuntimeError as e:
            raise ValueError(f"{flag} {source} does not fit backbone {model.config.backbone!r} "
                             f"{model.config.backbone_kwargs}: {e}") from e
        logger.info("backbone initialised from %s", source)
    return model


def _load_safetensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def backbone_state(source: str) -> dict[str, torch.Tensor]:
    """A backbone state dict from ``--backbone_pretrained``: ``hf-hub:org/name`` (timm downloads it),
    ``local-dir:DIR`` or a directory holding a timm export (a run dir or its ``encoder/``), or a ``.safetensors``
    file of the backbone's state dict."""
    if source.startswith("hf-hub:"):
        import timm

        return timm.create_model(source, pretrained=True, num_classes=0).state_dict()
    path = Path(source.removeprefix("local-dir:"))
    if path.is_file() and path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.is_dir():
        return _load_safetensors(read_encoder_export(path)[1])
    raise ValueError(f"backbone_pretrained {source!r} is neither hf-hub:ORG/NAME, a timm export directory "
                     f"(local-dir:DIR) nor a .safetensors file")


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary ``.tmp_*`` dirs are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec: str, output_dir: Path) -> Path | None:
    """``latest`` -> newest complete checkpoint (or ``None``); a path -> that checkpoint, validated."""
    if spec == "latest":
        ckpts = list_checkpoints(output_dir / "checkpoints")
        return ckpts[-1] if ckpts else None
    path = Path(spec)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"--resume_from_checkpoint {spec!r} is not a checkpoint (no trainer_state.json)")
    return path


_TRACKER_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "trackio": "trackio"}


def _trackers(report_to: str) -> list[str]:
    """The trackers to use: ``all`` = those installed (quietly); named ones that are not installed are listed in one
    warning. ``train_log.jsonl`` and ``train.log`` in the run dir are written either way."""
    import importlib.util

    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    everything = names == ["all"]
    if everything:
        names = list(_TRACKER_MODULES)

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(_TRACKER_MODULES.get(name, name)) is not None
        except (ImportError, ValueError):
            return False

    missing = [n for n in names if not installed(n)]
    if missing and not everything:
        logger.warning("trackers not installed, skipped: %s (the run still logs to train_log.jsonl and train.log)",
                       ", ".join(missing))
    return [n for n in names if n not in missing]


class _StopRequest:
    """SIGINT/SIGTERM set a flag checked after each step; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test launcher): no handler
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("signal %d received: finishing this step, saving a checkpoint and stopping", signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------- trainer
class Pretrainer:
    """Owns the accelerator, model, optimizer, data stream and checkpoints of one run."""

    def __init__(self, args: PretrainArguments) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.args = args
        self.method = get_method(args.method)
        self.output_dir = Path(args.output_dir)
        self.trackers = _trackers(args.report_to)
        # mixed_precision is left to `accelerate launch --mixed_precision` / ACCELERATE_MIXED_PRECISION.
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=self.trackers or None,
            project_dir=str(self.output_dir),
        )
        acc = self.accelerator
        self._check_output_dir()
        self._setup_logging()
        self._set_cpu_threads()
        if args.train_val_split is not None:
            train, held = held_out_splits(args.train_split, count_rows(args.dataset, args.train_split,
                                                                       name=args.dataset_config), args.train_val_split)
            logger.info("holding out %s for evaluation; training on %s", held, train)
            self.args = args = dataclasses.replace(args, train_split=train, eval_split=held, train_val_split=None)
        self.plan = BatchPlan.resolve(global_batch=args.global_batch_size, per_device=args.per_device_batch_size,
                                      processes=acc.num_processes, accumulation=args.gradient_accumulation_steps,
                                      bn_group=args.bn_group_size)
        set_seed(args.seed)  # the same initial weights on every rank
        self.model = build_model(args, self.plan)
        acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=self.model.ddp_find_unused_parameters)
        self.config = self.model.config
        if args.sync_bn and acc.num_processes > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.peak_lr = args.learning_rate * (self.plan.global_batch / 256 if args.scale_lr else 1.0)
        rule = f"{args.learning_rate:g} x {self.plan.global_batch}/256" if args.scale_lr else "not scaled"
        logger.info("global batch %d = %d per device x %d process(es) x %d accumulation; peak lr %g (%s)%s",
                    self.plan.global_batch, self.plan.per_device, acc.num_processes, args.gradient_accumulation_steps,
                    self.peak_lr, rule, f"; BatchNorm in {self.plan.bn_splits} split(s) of {args.bn_group_size}"
                    if self.plan.bn_splits else "")
        self.optimizer = self._build_optimizer()
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        if args.torch_compile:
            # Random ops inside the compiled forward (shuffle-BN's permutation, masks, lam) draw from torch's
            # generator as in eager mode, not from inductor's own: the same draws, and an exact resume.
            import torch._inductor.config as inductor_config

            inductor_config.fallback_random = True
            self.model.compile()  # in place: parameter names, checkpoints and hooks stay as they are
        warning = bf16_cpu_warning(device_type=acc.device.type, mixed_precision=str(acc.mixed_precision))
        if warning:
            logger.warning(warning)
        if acc.device.type == "cpu" and args.retain_freed_memory and retain_freed_memory():
            logger.info("CPU training: malloc keeps the memory it frees (--no-retain_freed_memory to return it)")
        # Training randomness (masks, lam, partners, patches) differs per rank, as each official GPU draws its own.
        set_seed(args.seed + acc.process_index)

        on_device = args.augment_on == "device" or (args.augment_on == "auto" and acc.device.type == "cuda")
        view_settings = dict(size=self.config.image_size, mean=self.config.image_mean, std=self.config.image_std,
                             min_scale=args.min_crop_scale)
        if on_device:
            views = device_view_transform(args.views, **view_settings, compile=args.torch_compile)
        else:
            views = view_transform(args.views, **view_settings)
        logger.info("view recipe %s, colour ops on the %s", args.views, "device" if on_device else "CPU workers")
        self.stream = ImageStream(
            args.dataset, args.train_split, views, self.plan.per_device, name=args.dataset_config,
            image_column=args.image_column, label_column=args.label_column, shuffle=True, seed=args.seed,
            buffer_size=args.shuffle_buffer_size, rank=acc.process_index, world_size=acc.num_processes,
            num_workers=args.num_workers, infinite=True, min_image_size=args.min_image_size,
        )
        self.total_steps, self.steps_per_epoch = self._plan_steps()
        self.eval_problem = None if args.knn_every < 0 else evaluation_problem(
            args.dataset, args.dataset_config, train_split=args.train_split, eval_split=args.eval_split,
            label_column=args.label_column)
        if self.eval_problem:
            logger.warning("evaluation will be skipped (the model is trained, saved and exported as usual): %s",
                           self.eval_problem)
        warmup = args.warmup_steps
        if warmup is None:
            warmup = int(round((args.warmup_epochs or 0) * self.steps_per_epoch))
        self.warmup_steps = warmup
        # Epoch milestones at the first step of that epoch: the official schedule changes the lr per epoch.
        self.lr_milestones = tuple(int(round(e * self.steps_per_epoch)) for e in args.lr_decay_epochs or ())
        self.global_step = 0
        self.last_checkpoint: Path | None = None
        self._last_bad: dict[str, float] = {}

    # -- setup
    def _check_output_dir(self) -> None:
        """Never mix two runs' files: a directory holding a run is resumed (``--resume_from_checkpoint``), replaced
        (``--overwrite_output_dir``) or refused, before anything is written."""
        acc, args, out = self.accelerator, self.args, self.output_dir
        found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        acc.wait_for_everyone()  # every rank looks before any rank writes (rank 0 creates train.log next)
        if not found or args.resume_from_checkpoint:
            return
        if not args.overwrite_output_dir:
            raise ValueError(
                f"output_dir {out} already holds files ({', '.join(found[:6])}{', ...' if len(found) > 6 else ''}): "
                f"pass --resume_from_checkpoint latest to continue that run, --overwrite_output_dir to replace it, "
                f"or choose another --output_dir")
        if acc.is_main_process:
            logger.warning("--overwrite_output_dir: removing the previous run in %s", out)
            shutil.rmtree(out)
        acc.wait_for_everyone()

    def _setup_logging(self) -> None:
        acc = self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)  # an earlier run in this process must not receive this run's log
            old.close()
        self._log_file = None
        if acc.is_main_process:
            handler = logging.FileHandler(self.output_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
            self._log_file = handler
        logger.setLevel(logging.INFO if acc.is_main_process else logging.WARNING)

    def _set_cpu_threads(self) -> None:
        """On CPU, use this process's share of the cores: `accelerate launch` (without --cpu) exports
        OMP_NUM_THREADS=1, which halves a 2-core machine's throughput."""
        acc, args = self.accelerator, self.args
        if acc.device.type != "cpu":
            return
        threads = args.cpu_threads
        if threads is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))  # processes on this machine
            threads = max(1, cores // max(1, local))
        if threads != torch.get_num_threads():
            logger.info("using %d CPU threads per process (was %d)", threads, torch.get_num_threads())
            torch.set_num_threads(threads)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        from timm.optim import create_optimizer_v2

        args = self.args
        kwargs: dict[str, Any] = {}
        if args.optimizer in ("sgd", "lars"):
            kwargs["momentum"] = args.sgd_momentum
        if args.optimizer == "adamw" and args.adam_betas:
            kwargs["betas"] = tuple(args.adam_betas)
        if args.optimizer == "lars" and args.lars_trust_coeff is not None:
            kwargs["trust_coeff"] = args.lars_trust_coeff
        # timm's "sgd" is Nesterov SGD and its "momentum" plain momentum SGD (the official MoCo optimizer);
        # its LARS family is lars / larc (trust ratio clipped at 1) with an "n" prefix for Nesterov. timm's LARS
        # adapts only parameters with weight decay, so --exclude_bias_norm_wd also excludes them from adaptation.
        lars = ("n" if args.nesterov else "") + ("larc" if args.lars_trust_clip else "lars")
        opt = {"sgd": "sgd" if args.nesterov else "momentum", "lars": lars}.get(args.optimizer, args.optimizer)
        # Frozen (momentum) parameters are skipped by timm's parameter grouping (requires_grad=False).
        # A model may ask for its own groups (AutoMix's MixBlock learning rate, as `lr_scale`).
        return create_optimizer_v2(
            self.model.optimizer_param_groups(), opt=opt, lr=self.peak_lr, weight_decay=args.weight_decay,
            filter_bias_and_bn=args.exclude_bias_norm_wd, **kwargs,
        )

    def _plan_steps(self) -> tuple[int, int]:
        args = self.args
        rows = count_rows(args.dataset, args.train_split, name=args.dataset_config)
        steps_per_epoch = max(1, rows // self.plan.global_batch)
        total = args.max_steps if args.max_steps is not None else int(math.ceil(args.num_epochs * steps_per_epoch))
        return total, steps_per_epoch

    # -- checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` atomically: save into ``.tmp_step_N``, then rename."""
        acc = self.accelerator
        root = self.output_dir / "checkpoints"
        final = root / f"step_{self.global_step:08d}"
        tmp = root / f".tmp_step_{self.global_step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            self._write_checkpoint(tmp)
        except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error, naming no path
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(root).free / 2**20 if root.exists() else float("nan")
            raise CheckpointError(
                f"cannot write checkpoint {final} into {root} ({free:.0f} MiB free there): {type(e).__name__}: {e}. "
                f"The last good checkpoint is {self.last_checkpoint or 'none (no checkpoint was saved yet)'}; free "
                f"space or choose another --output_dir, then resume with --resume_from_checkpoint latest") from e
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(root)[: -self.args.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.last_checkpoint = final
        logger.info("saved checkpoint %s", final)
        return final

    def _write_checkpoint(self, tmp: Path) -> None:
        acc = self.accelerator
        acc.save_state(str(tmp))
        (tmp / f"stream_state_{acc.process_index}.json").write_text(json.dumps(self.stream.state_dict()))
        if acc.is_main_process:
            state = {"global_step": self.global_step, "total_steps": self.total_steps,
                     "num_processes": acc.num_processes, "method": self.args.method,
                     "exact": self._resume_settings(EXACT_SETTINGS), "other": self._resume_settings(OTHER_SETTINGS)}
            (tmp / "trainer_state.json").write_text(json.dumps(state, default=str))

    def _resume_settings(self, names: tuple[str, ...]) -> dict[str, Any]:
        values = {**dataclasses.asdict(self.args), "model_config": _comparable_config(self.config),
                  "global_batch": self.plan.global_batch, "per_device_batch": self.plan.per_device}
        return {k: values[k] for k in names}

    def load_checkpoint(self, path: Path) -> None:
        acc = self.accelerator
        state = json.loads((path / "trainer_state.json").read_text())
        if state["num_processes"] != acc.num_processes:
            raise ValueError(
                f"checkpoint {path} was written by {state['num_processes']} processes, this run has "
                f"{acc.num_processes}: the data stream cannot be resumed exactly"
            )
        if state.get("method", self.args.method) != self.args.method:
            raise ValueError(f"checkpoint {path} is a {state['method']!r} run; this run is {self.args.method!r}")
        saved_exact = dict(state.get("exact", {}))
        if "model_config" in saved_exact:  # settings added to the config class since: their defaults held then
            defaults = _comparable_config(type(self.config)())
            saved_exact["model_config"] = {**defaults, **saved_exact["model_config"]}
        exact = _differences(saved_exact, self._resume_settings(EXACT_SETTINGS))
        if exact:
            raise ValueError(f"checkpoint {path} was written with other settings that an exact resume needs: "
                             f"{'; '.join(exact)}. Resume with the checkpoint's settings, or start a new run")
        other = _differences(state.get("other", {}), self._resume_settings(OTHER_SETTINGS))
        if other:
            logger.warning("resuming %s with changed settings (the run continues, not as one uninterrupted run): %s",
                           path, "; ".join(other))
        acc.load_state(str(path))
        self.stream.load_state_dict(json.loads((path / f"stream_state_{acc.process_index}.json").read_text()))
        self.global_step = int(state["global_step"])
        self.last_checkpoint = path
        if acc.is_main_process:
            self._truncate_log()
        logger.info("resumed from %s at step %d", path, self.global_step)

    def _truncate_log(self) -> None:
        """Drop ``train_log.jsonl`` lines after the resumed step (a crash after the checkpoint logged steps that
        this run repeats)."""
        log = self.output_dir / "train_log.jsonl"
        if log.is_file():
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            kept = [line for line in lines if json.loads(line).get("step", 0) <= self.global_step]
            if len(kept) < len(lines):
                log.write_text("".join(line + "\n" for line in kept))
                logger.info("train_log.jsonl: dropped %d line(s) after step %d", len(lines) - len(kept),
                            self.global_step)

    # -- pictures
    def write_pictures(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The model's pictures of this batch's first images, into ``images/`` and the trackers (main process)."""
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        if not acc.is_main_process:
            return
        n = self.args.image_count
        pictures = model.pictures(x[:n].float(), y[:n])
        save_pictures(pictures, self.output_dir / "images", self.global_step, acc.trackers)

    # -- evaluation
    def _eval_data(self, *, reuse: bool = False) -> EvalData:
        acc, args = self.accelerator, self.args
        return EvalData(args.dataset, args.dataset_config, args.image_column, args.label_column,
                        num_workers=args.num_workers, device=acc.device,
                        autocast_dtype=torch.bfloat16 if acc.mixed_precision == "bf16" else None, reuse=reuse,
                        rank=acc.process_index, world_size=acc.num_processes)

    def _knn(self, model: nn.Module, data: EvalData | None = None) -> dict[str, float]:
        args = self.args
        return knn_evaluate(model, data or self._eval_data(), train_split=args.train_split,
                            eval_split=args.eval_split, train_samples=args.knn_train_samples,
                            test_samples=args.knn_test_samples, knn_k=args.knn_k, knn_t=args.knn_t)

    def evaluate(self) -> dict[str, float]:
        """The run's evaluation: top-1 of a classifier's logits, else weighted kNN. Every rank extracts its share
        of the splits and gets the gathered result (no rank idles at a barrier while one reads a whole split)."""
        acc, args = self.accelerator, self.args
        model = acc.unwrap_model(self.model)
        if not self.method.supervised:
            data = self._eval_data(reuse=True)  # the probe reads kNN's features (the model does not change between)
            result = self._knn(model, data)
            logger.info("step %d: kNN top-1 %.4f (%d train / %d test)", self.global_step, result["knn_top1"],
                        result["knn_train_samples"], result["knn_test_samples"])
            if args.monitor_probe:
                probe = linear_probe(model, data, recipe=PROBES[args.monitor_probe], train_split=args.train_split,
                                     eval_split=args.eval_split, train_samples=args.knn_train_samples,
                                     test_samples=args.knn_test_samples, seed=args.seed)
                key = probe_key(args.monitor_probe)
                scores = {k: probe[k] for k in (f"{key}_top1", f"{key}_top5") if k in probe}
                logger.info("step %d: %s", self.global_step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
                result.update(scores)
            return result
        data = self._eval_data()
        result = accuracy_evaluate(model, data, eval_split=args.eval_split, test_samples=args.knn_test_samples)
        logger.info("step %d: top-1 %.4f (%d samples)", self.global_step, result["top1"], result["eval_samples"])
        for key, logits_fn in model.extra_classifiers().items():
            result.update(accuracy_evaluate(model, data, eval_split=args.eval_split, key=key,
                                            test_samples=args.knn_test_samples, logits_fn=logits_fn))
            logger.info("step %d: %s %.4f", self.global_step, key, result[key])
        return result

    def random_init_baseline(self) -> dict[str, float]:
        """kNN top-1 of the same architecture at random initialisation (seeded), the number every
        self-supervised result is compared with; ``random_init_``-prefixed keys never reach the card's results."""
        torch.manual_seed(self.args.seed)
        fresh = type(self.accelerator.unwrap_model(self.model))(self.config).to(self.accelerator.device)
        top1 = self._knn(fresh)["knn_top1"]
        logger.info("kNN top-1 of the same network at random initialisation: %.4f", top1)
        return {"random_init_knn_top1": top1}

    # -- the loop
    def _log(self, metrics: dict[str, float]) -> None:
        acc = self.accelerator
        if not acc.is_main_process:
            return
        if acc.trackers:
            acc.log(metrics, step=self.global_step)
        with open(self.output_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps({"step": self.global_step, **metrics}) + "\n")

    def _check_finite(self, output: Any, stop: _StopRequest) -> bool:
        """All-rank agreement on (non-finite loss, stop requested); raises on non-finite loss."""
        acc = self.accelerator
        terms = {k: v.detach() for k, v in output.items() if isinstance(v, torch.Tensor) and v.ndim == 0}
        bad = [k for k, v in terms.items() if not torch.isfinite(v)]
        flags = torch.tensor([float(bool(bad)), float(stop.requested)], device=acc.device)
        if acc.num_processes > 1:
            flags = acc.reduce(flags, reduction="sum")
        if flags[0] > 0:
            values = ", ".join(f"{k}={terms[k].item()}" for k in bad) or "on another rank"
            where = self.last_checkpoint or "none (no checkpoint was saved yet)"
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step + 1}: {values}; stopping before the optimizer "
                f"step. Last good checkpoint: {where}"
            )
        return bool(flags[1] > 0)

    def train(self) -> dict[str, Any]:
        acc, args = self.accelerator, self.args
        if args.resume_from_checkpoint:
            path = resolve_checkpoint(args.resume_from_checkpoint, self.output_dir)
            if path is not None:
                self.load_checkpoint(path)
            else:
                logger.info("no checkpoint in %s: starting from scratch", self.output_dir / "checkpoints")
        if acc.is_main_process:
            resolved = {**dataclasses.asdict(args), "model_config": self.config.to_dict(),
                        "resolved": {"global_batch_size": self.plan.global_batch,
                                     "per_device_batch_size": self.plan.per_device,
                                     "num_processes": acc.num_processes,
                                     "gradient_accumulation_steps": args.gradient_accumulation_steps,
                                     "bn_splits": self.plan.bn_splits, "peak_learning_rate": self.peak_lr},
                        "command": self._command()}
            previous = self.output_dir / "training_args.json"
            if previous.is_file():  # a resumed run keeps each segment's arguments
                with open(self.output_dir / "training_args_history.jsonl", "a") as f:
                    f.write(json.dumps(json.loads(previous.read_text())) + "\n")
            previous.write_text(json.dumps(resolved, indent=2, default=str))
        if self.trackers:
            flat = {k: v for k, v in dataclasses.asdict(args).items() if isinstance(v, (int, float, str, bool))}
            acc.init_trackers(Path(args.output_dir).name or "hf_mixssl", config=flat)

        from tqdm.auto import tqdm

        progress = tqdm(total=self.total_steps, initial=self.global_step, disable=not acc.is_main_process,
                        desc=f"{args.method}", dynamic_ncols=True)
        model = self.model
        unwrapped = acc.unwrap_model(model)
        model.train()
        interrupted = False
        eval_results: dict[str, float] = {}
        window_images, window_start = 0, time.perf_counter()
        batches = self.stream.on_device(acc.device)
        x = y = None  # the last batch, for the final pictures
        self._set_lr(self.global_step)
        try:
            with _StopRequest() as stop:
                while self.global_step < self.total_steps:
                    batch = next(batches)
                    x = batch["pixel_values"]
                    if args.channels_last:
                        x = to_channels_last(x)
                    y = batch["labels"]
                    with acc.accumulate(model):
                        output = model(pixel_values=x, labels=y)  # prepare() added autocast when mixed
                        stop_now = self._check_finite(output, stop)
                        acc.backward(output.loss)
                        if acc.sync_gradients and args.max_grad_norm:
                            acc.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    window_images += x.shape[0] * acc.num_processes
                    if not acc.sync_gradients:
                        continue
                    # A real optimizer step happened: move the momentum encoder, then the schedule.
                    self.global_step += 1
                    m = unwrapped.update_momentum(self.global_step / self.total_steps)
                    lr = self._set_lr(self.global_step)
                    progress.update(1)
                    if self.global_step % args.logging_steps == 0 or self.global_step == self.total_steps:
                        ips = window_images / max(time.perf_counter() - window_start, 1e-9)
                        metrics = self._step_metrics(output, lr=lr, momentum=m, images_per_sec=ips)
                        progress.set_postfix(loss=f"{metrics['loss']:.4f}", ips=f"{ips:.0f}")
                        window_images, window_start = 0, time.perf_counter()
                    if (args.knn_every > 0 and self.global_step % args.knn_every == 0 and not self.eval_problem
                            and self.global_step < self.total_steps):
                        self._log(self.evaluate())
                    if args.image_every > 0 and self.global_step % args.image_every == 0:
                        self.write_pictures(x, y)
                    if args.checkpointing_steps and self.global_step % args.checkpointing_steps == 0:
                        self.save_checkpoint()
                    if stop_now:
                        interrupted = True
                        break
        finally:
            progress.close()
            batches.close()
        if interrupted:
            if not self._checkpoint_is_current():
                self.save_checkpoint()
            logger.warning("stopped by signal at step %d; resume with --resume_from_checkpoint latest", self.global_step)
            acc.end_training()
            return {"interrupted": True, "global_step": self.global_step, "checkpoint": str(self.last_checkpoint)}
        if not self._checkpoint_is_current():
            self.save_checkpoint()
        if args.image_every >= 0 and x is not None:
            self.write_pictures(x, y)
        self._save_model()  # first: nothing after this can cost the trained model
        if args.knn_every >= 0 and not self.eval_problem:
            try:
                eval_results = self.evaluate()
                self._log(eval_results)
                if args.knn_random_baseline and not self.method.supervised:
                    eval_results.update(self.random_init_baseline())
            except Exception as e:  # noqa: BLE001 - the saved model stays; evaluation can be rerun on it
                logger.error("evaluation failed (%s: %s); the model is saved in %s: evaluate it later with "
                             "hf-mixssl-evaluate --model %s", type(e).__name__, e, self.output_dir, self.output_dir)
        self._save_results(eval_results)
        acc.end_training()
        return {"interrupted": False, "global_step": self.global_step, **eval_results}

    def close(self) -> None:
        """Detach the run's log file: later work in this process must not write into a finished run."""
        if self._log_file is not None:
            logger.removeHandler(self._log_file)
            self._log_file.close()
            self._log_file = None

    def _command(self) -> str | None:
        """The command line that started this run (through scripts/pretrain.py, ``-m hf_mixssl.cli.pretrain`` or
        the ``hf-mixssl-pretrain`` entry point), for the model card."""
        import shlex
        import sys

        prog = Path(sys.argv[0]) if sys.argv else Path()
        if prog.name == "pretrain.py" and prog.parent.name == "scripts":
            script = ["scripts/pretrain.py"]
        elif prog.name in ("pretrain.py", "hf-mixssl-pretrain"):
            script = ["-m", "hf_mixssl.cli.pretrain"]
        else:
            return None
        acc = self.accelerator
        launch = ["accelerate", "launch"]
        if acc.num_processes > 1:
            launch += ["--multi_gpu", "--num_processes", str(acc.num_processes)]
        if acc.mixed_precision != "no":
            launch += ["--mixed_precision", str(acc.mixed_precision)]
        return shlex.join(launch + script + sys.argv[1:])

    def _step_metrics(self, output: Any, *, lr: float, momentum: float | None, images_per_sec: float) -> dict:
        """Log every scalar output term, lr, momentum, throughput, epoch and bad-image counts."""
        metrics = {k: float(v.detach().float()) for k, v in output.items() if isinstance(v, torch.Tensor) and v.ndim == 0}
        metrics.update(lr=lr, images_per_sec=images_per_sec, epoch=self.global_step / self.steps_per_epoch)
        if momentum is not None:
            metrics["momentum"] = momentum
        bad = {f"images_{k}": float(v) for k, v in self.stream.counts.items() if k != "ok"}
        if bad and bad != self._last_bad:
            logger.warning("images skipped or converted so far on this rank: %s", bad)
            self._last_bad = bad
        metrics.update(bad)
        self._log(metrics)
        return metrics

    def _checkpoint_is_current(self) -> bool:
        return self.last_checkpoint is not None and self.last_checkpoint.name == f"step_{self.global_step:08d}"

    def _set_lr(self, step: int) -> float:
        def lr_at(final: float) -> float:
            return learning_rate_at(step, total=self.total_steps, warmup=self.warmup_steps, peak=self.peak_lr,
                                    final=final, schedule=self.args.lr_schedule, milestones=self.lr_milestones,
                                    epoch_steps=self.steps_per_epoch if self.args.lr_by_epoch else 0)

        lr = lr_at(self.args.min_lr)
        for group in self.optimizer.param_groups:
            # a group may end its cosine elsewhere (AutoMix's ImageNet MixBlock: its own min_lr)
            group_lr = lr_at(group["min_lr"]) if "min_lr" in group else lr
            group["lr"] = group_lr * group.get("lr_scale", 1.0)
        return lr

    def _save_model(self) -> None:
        """``save_pretrained`` and the timm encoder export (main process)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            if self.args.channels_last:  # safetensors stores contiguous tensors; the layout is a training choice
                model.to(memory_format=torch.contiguous_format)
            model.save_pretrained(self.output_dir, safe_serialization=True)
            image_processor_for(model.config).save_pretrained(self.output_dir)  # AutoImageProcessor, pipelines
            if self.args.export_encoder and export_model_encoder(model, self.output_dir / "encoder") is None:
                logger.info("encoder not exported: timm cannot rebuild a CIFAR-stem backbone from its config")
            logger.info("saved the model to %s", self.output_dir)
        acc.wait_for_everyone()

    def _save_results(self, eval_results: dict[str, float]) -> None:
        """``eval_results.json`` and the model card (main process)."""
        acc = self.accelerator
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            results = {"global_step": self.global_step, "method": self.args.method,
                       "dataset": self.args.dataset, **eval_results}
            (self.output_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
            try:  # the card describes the run; failing to render it must not lose the run
                write_published_curve(self.output_dir)
                render_model_card(self.output_dir, model=model).save(self.output_dir / "README.md")
            except Exception as e:  # noqa: BLE001
                logger.warning("model card not written: %s", e)
            logger.info("saved eval_results.json and the model card to %s", self.output_dir)
        acc.wait_for_everyone()


def pretrain(args: PretrainArguments) -> dict[str, Any]:
    """Run (or resume) one pretraining run; returns the final step and evaluation results."""
    trainer = Pretrainer(args)
    try:
        result = trainer.train()
    finally:
        trainer.close()
    if args.push_to_hub and not result["interrupted"] and trainer.accelerator.is_main_process:
        from ..sharing.hub import push_run

        out = Path(args.output_dir)
        encoder_id = f"{args.hub_model_id}-encoder" if (out / "encoder" / "config.json").is_file() else None
        result["hub"] = push_run(out, args.hub_model_id, private=args.hub_private, encoder_repo_id=encoder_id)
    return result
