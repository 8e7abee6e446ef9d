"""The whole benchmark: plan the configurations, run each in its own process, collect.

Order (most useful first, so that a time budget cuts the least useful): the data chain
(simulation, build, read-back, input pipeline); every model and image size in the
default mode of this machine (XLA off on a CPU, on with a GPU; one replica; the first
of them also records the profiler trace if asked); the other XLA setting at the
smallest image size; the scaling sweeps; two replicas at the smallest image size; the
other modes at the larger image sizes. Each
row and sweep point carries `status` ("ok", "skipped" or "failed") and, unless ok, a
`reason`; so does every measurement in it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

from deeplense_tf.benchmarks import cells, scaling

XLA_WITH_CPU_REPLICAS = ("XLA with several CPU replicas does not run in TensorFlow 2.21 "
                         "(no XLA collectives on CPU; device placement fails under "
                         "MirroredStrategy); CPU training uses XLA off")
INFERENCE_ONE_REPLICA = ("inference is measured on one replica: a serving process holds one "
                         "copy of the model")


@dataclasses.dataclass
class BenchmarkConfig:
    """Everything a benchmark run depends on (recorded in its JSON)."""

    models: list = dataclasses.field(default_factory=lambda: ["resnet18", "resnet34", "vit", "hybrid"])
    image_sizes: list = dataclasses.field(default_factory=lambda: [64, 150])
    train_batch_size: int = 32
    inference_batch_sizes: list = dataclasses.field(default_factory=lambda: [1, 64, 256])
    xla: list = dataclasses.field(default_factory=lambda: [False, True])
    replicas: list = dataclasses.field(default_factory=lambda: [1, 2])
    mixed_precision: str = "auto"
    warmup_steps: int = 1
    steps: int = 1
    repeats: int = 3
    latency_repeats: int = 10
    max_seconds_per_measurement: float = 10.0
    max_seconds_per_call: float = 15.0
    cell_timeout_s: float = 180.0
    time_budget_s: float = 0.0
    scaling_models: list = dataclasses.field(default_factory=lambda: ["resnet18", "vit"])
    scaling_image_size: int = 64
    scaling_batch_sizes: list = dataclasses.field(default_factory=lambda: [1, 4, 16, 64, 256])
    scaling_image_sizes: list = dataclasses.field(default_factory=lambda: [64, 96, 150])
    scaling_batch_size: int = 16
    scaling_stem: str = "s1"
    scaling_patch_sizes: list = dataclasses.field(default_factory=lambda: [16, 8, 4, 2])
    simulation: bool = True
    input_pipeline: bool = True
    pipeline_train_size: int = 256
    data_dir: str = ""
    profile: bool = False
    profile_steps: int = 3
    quick: bool = False

    def validate(self):
        from deeplense_tf import models

        for label in self.models + self.scaling_models:
            name, _, variant = label.partition(":")
            models.resolve(name, variant or None)  # Names the accepted values if unknown.
        for field in ("train_batch_size", "repeats", "steps", "scaling_batch_size",
                      "pipeline_train_size", "profile_steps", "latency_repeats"):
            if getattr(self, field) < 1:
                raise ValueError(f"--{field}: must be >= 1, got {getattr(self, field)}")
        for field in ("image_sizes", "inference_batch_sizes", "replicas", "scaling_batch_sizes",
                      "scaling_image_sizes", "scaling_patch_sizes"):
            if any(int(v) < 1 for v in getattr(self, field)):
                raise ValueError(f"--{field}: values must be >= 1, got {getattr(self, field)}")
        for r in self.replicas:
            if self.train_batch_size % r:
                raise ValueError(f"--train_batch_size={self.train_batch_size} is not divisible "
                                 f"by {r} replicas (--replicas={self.replicas})")
        if not self.image_sizes:
            raise ValueError("--image_sizes: name at least one")
        return self

    def resolved(self) -> "BenchmarkConfig":
        """`quick`: every model's tiny `test` variant and the least timing."""
        if not self.quick:
            return self

        def tiny(labels):
            return [label if ":" in label else f"{label}:test" for label in labels]

        return dataclasses.replace(
            self, models=tiny(self.models), scaling_models=tiny(self.scaling_models),
            warmup_steps=0, steps=1, repeats=1, latency_repeats=2,
            pipeline_train_size=min(self.pipeline_train_size, 32))


# ----------------------------------------------------------------------------- plan


def _split(label: str) -> tuple[str, str]:
    from deeplense_tf import models

    name, _, variant = label.partition(":")
    return name, variant or models.default_variant(name)


def _skip(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def _hyperparameters(name, variant):
    from deeplense_tf import models

    return models.resolve(name, variant)[1]


@dataclasses.dataclass
class _Cell:
    name: str
    priority: int
    spec: dict
    targets: dict  # point key -> the row or sweep point its measurements go to


def plan(config: BenchmarkConfig, num_gpus: int, profile_dir: str | None):
    """-> (cells, rows, sweeps): the work, and the result skeletons it fills in."""
    default_xla = num_gpus > 0  # As training's --jit_compile=auto.
    timing = {"warmup": config.warmup_steps, "steps": config.steps, "repeats": config.repeats,
              "max_seconds": config.max_seconds_per_measurement}
    common = {"mixed_precision": config.mixed_precision, "timing": timing,
              "latency_repeats": config.latency_repeats,
              "max_seconds_per_call": config.max_seconds_per_call,
              "profile_steps": config.profile_steps}
    cell_list, rows = [], []
    for label in config.models:
        name, variant = _split(label)
        for px in config.image_sizes:
            for replicas in config.replicas:
                for xla in config.xla:
                    key = f"{name}:{variant}|{px}px|xla={xla}|replicas={replicas}"
                    row = {"key": key, "model": name, "variant": variant, "image_size": px,
                           "xla": xla, "replicas": replicas, "params": None,
                           "flops_per_image": None,
                           "train": {"batch_size": config.train_batch_size}, "inference": {}}
                    rows.append(row)
                    reason = ""
                    if replicas > 1 and xla and not num_gpus:
                        reason = XLA_WITH_CPU_REPLICAS
                    elif replicas > 1 and num_gpus and num_gpus < replicas:
                        reason = f"{replicas} replicas need {replicas} GPUs; found {num_gpus}"
                    if reason:
                        row.update(status="skipped", reason=reason)
                        row["train"].update(_skip(reason))
                        row["inference"] = {str(b): {"batch_size": b, **_skip(reason)}
                                            for b in config.inference_batch_sizes}
                        continue
                    batches = config.inference_batch_sizes if replicas == 1 else []
                    if replicas > 1:
                        for b in config.inference_batch_sizes:
                            row["inference"][str(b)] = {"batch_size": b, **_skip(INFERENCE_ONE_REPLICA)}
                    point = {"key": key, "model": name, "variant": variant, "image_size": px,
                             "xla": xla, "train_batch_size": config.train_batch_size,
                             "inference_batch_sizes": list(batches)}
                    # Default mode first; then the other XLA setting at the smallest image
                    # size (2), the scaling sweeps (3), two replicas at the smallest size
                    # (4), and the other modes at larger sizes (5).
                    smallest = px == min(config.image_sizes)
                    priority = (1 if (xla == default_xla and replicas == 1) else
                                (2 if replicas == 1 else 4) if smallest else 5)
                    cell_list.append(_Cell(f"{name}_{variant}_{px}px_xla-{'on' if xla else 'off'}"
                                           f"_{replicas}rep", priority,
                                           {**common, "replicas": replicas, "points": [point]},
                                           {key: row}))
    profile_target = None
    if config.profile and profile_dir:
        # The first default-mode row also records the trace, after its training timing.
        first = next((c for c in cell_list if c.priority == 1), None)
        if first is not None:
            first.spec["points"][0]["profile_dir"] = profile_dir
            profile_target = {"row": next(iter(first.targets)), "logdir": profile_dir}
    sweeps = {"batch": [], "image_size": [], "tokens": []}
    for label in config.scaling_models:
        name, variant = _split(label)
        hp = _hyperparameters(name, variant)
        px0 = config.scaling_image_size
        kinds = [("batch", [{"batch_size": b, "image_size": px0, "overrides": {}}
                            for b in sorted(config.scaling_batch_sizes)])]
        stem = {"stem": config.scaling_stem} if "stem" in hp else {}
        kinds.append(("image_size", [{"batch_size": config.scaling_batch_size, "image_size": px,
                                      "overrides": dict(stem)}
                                     for px in sorted(config.scaling_image_sizes)]))
        if "patch_size" in hp and "stem" not in hp:  # A plain ViT: tokens = (px / patch)^2.
            kinds.append(("tokens", [{"batch_size": config.scaling_batch_size, "image_size": px0,
                                      "overrides": {"patch_size": p}}
                                     for p in sorted(config.scaling_patch_sizes, reverse=True)]))
        for kind, settings in kinds:
            if not settings:  # An empty list of that sweep's values: no sweep.
                continue
            sweep = {"model": name, "variant": variant, "kind": kind, "points": [],
                     "xla": default_xla, "label": _sweep_label(name, variant, kind, settings, hp)}
            sweeps[kind].append(sweep)
            targets, points = {}, []
            for s in settings:
                key = f"{kind}|{name}:{variant}|{s['image_size']}px|b{s['batch_size']}|{json.dumps(s['overrides'])}"
                target = {**s, "pixels": s["image_size"] ** 2, "train": {}}
                if kind == "tokens":
                    target["tokens"] = scaling.tokens_of(s["image_size"], s["overrides"]["patch_size"])
                sweep["points"].append(target)
                targets[key] = target
                points.append({"key": key, "model": name, "variant": variant,
                               "image_size": s["image_size"], "overrides": s["overrides"],
                               "xla": default_xla, "train_batch_size": s["batch_size"],
                               "inference_batch_sizes": []})
            # A warm-up point first pays TensorFlow's one-time memory, so that the
            # sweep's points differ only by what they themselves need.
            cell_list.append(_Cell(f"scaling_{kind}_{name}_{variant}", 3,
                                   {**common, "replicas": 1, "points": points, "warmup": True},
                                   targets))
    cell_list.sort(key=lambda c: c.priority)  # Stable: the listed order within a priority.
    return cell_list, rows, sweeps, profile_target


def _sweep_label(name, variant, kind, settings, hp) -> str:
    base = f"{name} {variant}"
    first = settings[0]
    if kind == "batch":
        return f"{base} at {first['image_size']} px"
    if kind == "image_size":
        how = (f"stem {first['overrides']['stem']}" if first["overrides"]
               else f"patch_size {hp.get('patch_size', '-')}")
        sizes = [s["image_size"] for s in settings]
        return f"{base} ({how}), batch {first['batch_size']}, {min(sizes)}-{max(sizes)} px"
    return (f"{base} at {first['image_size']} px, batch {first['batch_size']}, patch sizes "
            + ", ".join(str(s["overrides"]["patch_size"]) for s in settings))


# ----------------------------------------------------------------------------- collect


def _merge(cell: _Cell, outcome: dict) -> None:
    """Puts a finished cell's measurements into its rows or sweep points; whatever it did
    not measure becomes skipped (time limit) or failed (crash) with the reason."""
    process = next((line for line in outcome["lines"] if line.get("measurement") == "process"), None)
    for line in outcome["lines"]:
        target = cell.targets.get(line.get("key"))
        if target is None:
            continue
        record = {k: v for k, v in line.items() if k not in ("key", "measurement")}
        kind = line["measurement"]
        if kind == "cost":
            if record["status"] == "ok":
                target.update(params=record["params"], flops_per_image=record["flops_per_image"])
            else:
                target["cost"] = record
        elif kind == "train":
            target["train"] = {**target.get("train", {}), **record}
        elif kind == "inference":
            if "batch_size" in target:  # A sweep point holds one inference batch.
                target["inference"] = record
            else:
                target["inference"][str(record["batch_size"])] = record
    if outcome["reason"]:
        crashed = outcome["returncode"] and not outcome["timed_out"]
        missing = {"status": "failed" if crashed else "skipped", "reason": outcome["reason"]}
    else:
        missing = {"status": "failed", "reason": "its process ended without measuring this "
                                                 "(see the cell's log)"}
    for key, target in cell.targets.items():
        point = next(p for p in cell.spec["points"] if p["key"] == key)
        if process:
            target["process"] = {k: process.get(k) for k in ("import_s", "warmup_s",
                                                              "baseline_rss_mb", "precision")}
        if "cost" in target:  # The configuration itself is invalid.
            target.update(status="failed", reason=target["cost"]["reason"])
            continue
        if point.get("train_batch_size") and target.get("train", {}).get("status") is None:
            target["train"] = {**target.get("train", {}), **missing}
        expected = point.get("inference_batch_sizes") or []
        if "batch_size" in target:
            if expected and not target["inference"]:
                target["inference"] = {"batch_size": expected[0], **missing}
        else:
            for b in expected:
                target["inference"].setdefault(str(b), {"batch_size": b, **missing})
        _set_status(target)


def _set_status(target: dict) -> None:
    parts = [target["train"]] if target.get("train") else []
    inference = target.get("inference", {})
    parts += [inference] if "status" in inference else list(inference.values())
    parts = [p for p in parts if "status" in p]
    own = [p for p in parts if p.get("reason") != INFERENCE_ONE_REPLICA]
    if own and all(p["status"] == "ok" for p in own):
        target.update(status="ok")
        target.pop("reason", None)
        return
    bad = [p for p in own if p["status"] != "ok"]
    statuses = {p["status"] for p in bad}
    target["status"] = ("partial" if any(p["status"] == "ok" for p in own) else
                        "failed" if "failed" in statuses else "skipped")
    target["reason"] = "; ".join(dict.fromkeys(p["reason"] for p in bad))


def _skip_cell(cell: _Cell, reason: str) -> None:
    _merge(cell, {"lines": [], "returncode": None, "timed_out": False, "reason": reason})


def pipeline_ratios(results: dict) -> list[dict]:
    """Input pipeline images/s over training images/s, per model and size (1 replica)."""
    pipelines = results.get("data_chain", {}).get("input_pipeline", {})
    out = []
    for row in results["rows"]:
        pipe = pipelines.get(str(row["image_size"]))
        if row["replicas"] != 1 or row["train"].get("status") != "ok" or not pipe:
            continue
        train = row["train"]["images_per_s"]
        out.append({"model": row["model"], "variant": row["variant"],
                    "image_size": row["image_size"], "xla": row["xla"],
                    "train_images_per_s": train,
                    "pipeline_cached_images_per_s": pipe["cached_images_per_s"],
                    "pipeline_from_records_images_per_s": pipe["from_records_images_per_s"],
                    "ratio_cached": pipe["cached_images_per_s"] / train,
                    "ratio_from_records": pipe["from_records_images_per_s"] / train,
                    # Load-independent: CPU time per image of a training step over the
                    # pipeline's (cached), i.e. how many images the pipeline prepares in
                    # the CPU time the model trains on one.
                    "cpu_ratio_cached": (row["train"]["cpu_ms_per_image"]
                                         / pipe["cached_cpu_ms_per_image"]
                                         if pipe.get("cached_cpu_ms_per_image") else None),
                    "meets_5x": pipe["cached_images_per_s"] >= 5 * train})
    return out


# ----------------------------------------------------------------------------- run


def run(config: BenchmarkConfig, output_dir: str, write_outputs: bool = True) -> dict:
    """Runs the benchmark into `output_dir` (JSON, markdown, TensorBoard); returns the
    results. The JSON is rewritten after every configuration, so an interrupted run
    keeps what it measured."""
    import tensorflow as tf

    from deeplense_tf.benchmarks import data_chain, measure, report

    config = config.resolved().validate()
    started = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    if num_gpus:
        # This process only runs tf.data and writes summaries: were it to touch a GPU,
        # TensorFlow would reserve its memory and starve the measured processes.
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow already started here (e.g. in a notebook).
            print("[benchmark] warning: this process already holds the GPUs; the measured "
                  "processes may run short of GPU memory", flush=True)
    profile_dir = os.path.join(output_dir, "profile") if config.profile else None
    cell_list, rows, sweeps, profile = plan(config, num_gpus, profile_dir)
    results = {"machine": measure.machine(), "command": " ".join(sys.argv),
               "config": dataclasses.asdict(config), "rows": rows,
               "scaling": sweeps, "data_chain": {}, "profile": profile}
    json_path = os.path.join(output_dir, "benchmark.json")

    def save():
        results["wall_s"] = time.perf_counter() - started
        if write_outputs:
            with open(json_path + ".tmp", "w") as f:
                json.dump(results, f, indent=1, default=str)
            os.replace(json_path + ".tmp", json_path)

    def remaining():
        if not config.time_budget_s:
            return float("inf")
        return config.time_budget_s - (time.perf_counter() - started)

    if config.input_pipeline or config.simulation:
        scratch = config.data_dir or tempfile.mkdtemp(prefix="deeplense_benchmark_data_")
        try:
            quick = (dict(repeats=1, block_seconds=0.02, max_images=8, min_pipeline_images=64)
                     if config.quick else {})
            results["data_chain"] = data_chain.run(
                scratch, config.image_sizes, train_size=config.pipeline_train_size,
                batch_size=config.train_batch_size, simulation=config.simulation, **quick)
        except Exception as exc:  # The model benchmarks still run.
            results["data_chain"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        finally:
            if not config.data_dir:
                shutil.rmtree(scratch, ignore_errors=True)
        save()

    cell_dir = os.path.join(output_dir, "cells")
    for cell in cell_list:
        left = remaining()
        if left < 15:
            _skip_cell(cell, f"not run: the --time_budget_s={config.time_budget_s:g} s was spent")
            continue
        # The limit is per configuration: a sweep's process gets it for each point.
        limit = config.cell_timeout_s * len(cell.spec["points"])
        outcome = cells.run_cell(cell.spec, cell.name, cell_dir, timeout_s=min(limit, left))
        _merge(cell, outcome)
        print(f"[benchmark] {cell.name}: {outcome['wall_s']:.0f} s"
              + (f" ({outcome['reason']})" if outcome["reason"] else ""), flush=True)
        save()

    for kind, fit in (("batch", scaling.fit_batch),
                      ("image_size", lambda s: scaling.fit_growth(s, "pixels")),
                      ("tokens", lambda s: scaling.fit_growth(s, "tokens"))):
        for sweep in sweeps[kind]:
            sweep["fit"] = fit(sweep)
    results["statements"] = scaling.statements(sweeps)
    results["pipeline_to_training"] = pipeline_ratios(results)
    results["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    save()
    if write_outputs:
        with open(os.path.join(output_dir, "benchmark.md"), "w") as f:
            f.write(report.markdown(results))
        report.write_tensorboard(results, output_dir)
    return results
