"""The benchmark's results as markdown and as TensorBoard scalars and text.

TensorBoard layout (`tensorboard --logdir DIR`):
  runs `xla_off-1_replica`, `xla_on-1_replica`, `xla_off-2_replicas`, ... (one per mode),
  one point each (step 0), tags per model and size `<model>-<variant>_<px>px`:
    train/images_per_s/..., train/step_ms/..., train/compile_s/...,
    train/cpu_ms_per_image/..., train/other_processes_cores/...,
    inference/batch_<B>_images_per_s/..., inference/batch_1_latency_ms/...,
    inference/compile_s/..., memory/train_peak_rss_mb/...,
    memory/inference_peak_rss_mb/..., memory/train_peak_accelerator_mb/... (GPU),
    cost/params/..., cost/gflops_per_image/...
  run `scaling`: curves whose step is the swept quantity,
    scaling/<kind>/<model>-<variant>/{train_images_per_s, train_cpu_ms_per_image,
      train_peak_rss_mb, train_rss_above_baseline_mb, gflops_per_image}, kind `batch` (step = batch
      size), `image_size` (step = image side in px) or `tokens` (step = ViT tokens)
  run `data_chain`: data/simulation_images_per_s_{one_core,all_cores}/<case>,
    data/build_images_per_s/<px>px, data/input_pipeline_{cached,from_records}_images_per_s/<px>px,
    data/input_pipeline_cached_cpu_ms_per_image/<px>px,
    data/pipeline_over_training{,_cpu_time}/<model>-<variant>_<px>px_xla_<on|off>
  run `report`: text tags report/tables (this module's markdown), report/scaling,
    report/machine.
  the profiler trace (`--profile`) in run `profile` (TensorBoard's Profile tab, which
  needs the optional `tensorboard-plugin-profile` package to view).
"""

from __future__ import annotations

import os

from deeplense_tf.benchmarks import measure, scaling


def _f(value, spec=".0f", missing="–") -> str:
    if value is None:
        return missing
    return format(value, spec)


def _ok(measurement: dict | None, field: str):
    if measurement and measurement.get("status") == "ok":
        return measurement.get(field)
    return None


def mode_name(xla: bool, replicas: int) -> str:
    return f"xla_{'on' if xla else 'off'}-{replicas}_replica{'s' if replicas > 1 else ''}"


def model_tag(row: dict) -> str:
    return f"{row['model']}-{row['variant']}_{row['image_size']}px"


def _status(row: dict) -> str:
    return row.get("status", "–") + ("*" if row.get("reason") else "")


def training_table(results: dict) -> str:
    lines = ["| model | variant | px | params (M) | GFLOPs/image | XLA | replicas | batch | step ms "
             "| images/s | CPU ms/image | others' cores | compile s | peak RSS MiB "
             "| peak accel. MiB | status |", "|---" * 16 + "|"]
    for row in results["rows"]:
        t = row["train"]
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['image_size']} | "
            f"{_f(row['params'] and row['params'] / 1e6, '.2f')} | "
            f"{_f(row['flops_per_image'] and row['flops_per_image'] / 1e9, '.2f')} | "
            f"{'on' if row['xla'] else 'off'} | {row['replicas']} | {t.get('batch_size', '–')} | "
            f"{_f(_ok(t, 'step_ms'))} | {_f(_ok(t, 'images_per_s'), '.1f')} | "
            f"{_f(_ok(t, 'cpu_ms_per_image'))} | {_f(_ok(t, 'other_processes_cores'), '.1f')} | "
            f"{_f(_ok(t, 'compile_s'), '.1f')} | {_f(_ok(t, 'peak_rss_mb'))} | "
            f"{_f(_ok(t, 'peak_accelerator_mb'))} | {_status(row)} |")
    return "\n".join(lines)


def inference_table(results: dict) -> str:
    batches = results["config"]["inference_batch_sizes"]
    head = ["model", "variant", "px", "XLA"]
    for b in batches:
        head.append("batch 1 latency ms (p90)" if b == 1 else f"batch {b} images/s")
    head += ["CPU ms/image (largest measured batch)", "others' cores",
             "compile s (first batch)",
             "peak RSS MiB (largest measured batch)", "peak accel. MiB"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in results["rows"]:
        if row["replicas"] != 1:
            continue
        cells = [row["model"], row["variant"], str(row["image_size"]), "on" if row["xla"] else "off"]
        measured = [row["inference"].get(str(b)) for b in batches]
        for b, m in zip(batches, measured):
            if b == 1:
                p90 = _ok(m, "latency_p90_ms")
                cells.append(_f(_ok(m, "latency_ms"), ".1f")
                             + (f" ({p90:.1f})" if p90 is not None else ""))
            else:
                cells.append(_f(_ok(m, "images_per_s"), ".1f"))
        ok = [m for m in measured if m and m.get("status") == "ok"]
        cells.append(_f(ok[-1].get("cpu_ms_per_image")) if ok else "–")
        cells.append(_f(max(m.get("other_processes_cores", 0.0) for m in ok), ".1f") if ok else "–")
        cells.append(_f(ok[0]["compile_s"], ".1f") if ok else "–")
        cells.append(_f(ok[-1]["peak_rss_mb"]) if ok else "–")
        cells.append(_f(ok[-1]["peak_accelerator_mb"]) if ok else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_summary_table(results: dict) -> str:
    """Issue 3's table: per model and size, training images/s with XLA off and on, the
    input pipeline alone, their ratio and peak memory."""
    pipes = results.get("data_chain", {}).get("input_pipeline", {})
    by_key = {}
    for row in results["rows"]:
        if row["replicas"] == 1:
            by_key.setdefault((row["model"], row["variant"], row["image_size"]), {})[row["xla"]] = row
    lines = ["| model | variant | px | train images/s, XLA off | XLA on | CPU ms/image, XLA off "
             "(on) | XLA compile s | pipeline images/s, cached (from records) | pipeline / "
             "training, XLA off | peak RSS MiB, XLA off (on) |", "|---" * 10 + "|"]
    for (model, variant, px), modes in by_key.items():
        off, on = modes.get(False, {}).get("train"), modes.get(True, {}).get("train")
        pipe = pipes.get(str(px))
        rate_off = _ok(off, "images_per_s")
        ratio = (pipe["cached_images_per_s"] / rate_off) if pipe and rate_off else None
        lines.append(
            f"| {model} | {variant} | {px} | {_f(rate_off, '.1f')} | {_f(_ok(on, 'images_per_s'), '.1f')} | "
            f"{_f(_ok(off, 'cpu_ms_per_image'))} ({_f(_ok(on, 'cpu_ms_per_image'))}) | "
            f"{_f(_ok(on, 'compile_s'), '.1f')} | "
            + (f"{pipe['cached_images_per_s']:,.0f} ({pipe['from_records_images_per_s']:,.0f})"
               if pipe else "–")
            + f" | {_f(ratio, '.0f')}{'x' if ratio else ''} | {_f(_ok(off, 'peak_rss_mb'))} "
              f"({_f(_ok(on, 'peak_rss_mb'))}) |")
    return "\n".join(lines)


def data_chain_section(chain: dict) -> list[str]:
    if not chain:
        return []
    if chain.get("status") == "failed":
        return ["## Data chain", "", f"Failed: {chain['reason']}", ""]
    lines = ["## Data chain (small sizes)", ""]
    if chain.get("generation"):
        lines += ["| simulation case | px | images/s, 1 core | images/s, all cores |", "|---|---|---|---|"]
        for g in chain["generation"]:
            lines.append(f"| {g['case']} | {g['num_pix']} | {g['one_core_images_per_s']:.1f} | "
                         f"{_f(g.get('all_cores_images_per_s'), '.1f')} |")
        lines.append("")
    if chain.get("build"):
        lines += ["| px | TFDS build (in process, 1 core) | images | images/s |", "|---|---|---|---|"]
        for px, b in chain["build"].items():
            lines.append(f"| {px} | {b['config']} | {b['images']} | "
                         f"{_f(b['images_per_s'], '.1f', 'prepared before (not timed)')} |")
        lines.append("")
    if chain.get("read"):
        lines += ["| px | read-back pipeline (simulation benchmark) | images/s |", "|---|---|---|"]
        for px, r in chain["read"].items():
            for name, v in r["pipelines"].items():
                lines.append(f"| {px} | {name} | {v['images_per_s']:,.0f} |")
        lines.append("")
    if chain.get("input_pipeline"):
        lines += ["| px | training input pipeline, batch | images/s, cached | images/s, from "
                  "TFRecords every epoch | CPU ms/image, cached (from TFRecords) | others' "
                  "cores |", "|---|---|---|---|---|---|"]
        for px, p in chain["input_pipeline"].items():
            lines.append(f"| {px} | {p['batch_size']} | {p['cached_images_per_s']:,.0f} | "
                         f"{p['from_records_images_per_s']:,.0f} | "
                         f"{_f(p.get('cached_cpu_ms_per_image'), '.2f')} "
                         f"({_f(p.get('from_records_cpu_ms_per_image'), '.2f')}) | "
                         f"{_f(p.get('cached_other_processes_cores'), '.1f')} |")
        lines.append("")
    for px, reason in chain.get("skipped", {}).items():
        lines.append(f"- {px} px: {reason}")
    return lines


def ratio_section(ratios: list[dict]) -> list[str]:
    if not ratios:
        return []
    lines = ["### Input pipeline against training (the pipeline must deliver >= 5x)", "",
             "| model | variant | px | XLA | training images/s | pipeline images/s, cached | "
             "ratio | from TFRecords: ratio | CPU-time ratio, cached | >= 5x |",
             "|---" * 10 + "|"]
    for r in ratios:
        cpu = r.get("cpu_ratio_cached")
        lines.append(f"| {r['model']} | {r['variant']} | {r['image_size']} | "
                     f"{'on' if r['xla'] else 'off'} | {r['train_images_per_s']:.1f} | "
                     f"{r['pipeline_cached_images_per_s']:,.0f} | {r['ratio_cached']:.0f}x | "
                     f"{r['ratio_from_records']:.0f}x | {_f(cpu)}{'x' if cpu else ''} | "
                     f"{'yes' if r['meets_5x'] else 'NO'} |")
    return lines + ["", "CPU-time ratio: the training step's CPU ms per image over the "
                        "pipeline's; on a CPU-only host both share the cores, and this ratio "
                        "does not move with other processes' load.", ""]


def _sweep_x(kind: str) -> str:
    return {"batch": "batch_size", "image_size": "image_size", "tokens": "tokens"}[kind]


def scaling_section(scaling_results: dict, statements: list[str]) -> list[str]:
    if not any(scaling_results.get(k) for k in ("batch", "image_size", "tokens")):
        return []
    lines = ["## Scaling", ""] + [f"- {s}" for s in statements] + [""]
    for kind in ("batch", "image_size", "tokens"):
        for sweep in scaling_results.get(kind, []):
            x = _sweep_x(kind)
            lines += [f"**{sweep['label']}** ({kind})", "",
                      f"| {x} | train images/s | step ms | CPU ms/image | others' cores "
                      f"| peak RSS MiB | above baseline MiB | GFLOPs/image | status |",
                      "|---" * 9 + "|"]
            for p in sweep["points"]:
                t = p.get("train", {})
                added = scaling.memory_above_baseline(p)
                lines.append(
                    f"| {p[x]} | {_f(_ok(t, 'images_per_s'), '.1f')} | {_f(_ok(t, 'step_ms'))} | "
                    f"{_f(_ok(t, 'cpu_ms_per_image'))} | {_f(_ok(t, 'other_processes_cores'), '.1f')} | "
                    f"{_f(_ok(t, 'peak_rss_mb'))} | {_f(added)} | "
                    f"{_f(p.get('flops_per_image') and p['flops_per_image'] / 1e9, '.2f')} | "
                    f"{_status(p)} |")
            lines.append("")
    return lines


def profile_line(results: dict) -> str:
    profile = results["profile"]
    row = next((r for r in results["rows"] if r.get("key") == profile["row"]), None)
    done = bool(row and row["train"].get("profile_dir"))
    where = (f"{row['model']} {row['variant']} at {row['image_size']} px, "
             f"{results['config']['profile_steps']} training steps" if row else profile["row"])
    return (f"{where}: {'trace written' if done else 'no trace (the row did not train)'} "
            "to run `profile` (TensorBoard's Profile tab; viewing it needs the optional "
            "`tensorboard-plugin-profile` package, writing it needs nothing extra).")


def problems_section(results: dict) -> list[str]:
    lines = []
    for row in results["rows"]:
        if row.get("reason"):
            lines.append(f"- {row['model']} {row['variant']} {row['image_size']} px, "
                         f"{mode_name(row['xla'], row['replicas'])}: {row['status']}: {row['reason']}")
    for kind, sweeps in results.get("scaling", {}).items():
        for sweep in sweeps:
            for p in sweep["points"]:
                if p.get("reason"):
                    lines.append(f"- scaling {kind}, {sweep['label']}, {_sweep_x(kind)} "
                                 f"{p[_sweep_x(kind)]}: {p['status']}: {p['reason']}")
    return (["## Skipped, partial and failed (*)", ""] + lines + [""]) if lines else []


def markdown(results: dict) -> str:
    m = results["machine"]
    default = "on" if m["gpus"] else "off"
    lines = ["# deeplense_tf benchmark", "",
             f"Machine: {measure.describe(m)}; after: "
             f"{m.get('load_average_after', ['–'])[0]}.",
             f"Command: `{results['command']}`; wall time {results.get('wall_s', 0) / 60:.1f} min.",
             f"Medians over up to {results['config']['repeats']} timed repeats after "
             f"{results['config']['warmup_steps']} warm-up call(s); synthetic images for the "
             f"model steps; XLA {default} is this machine's default (`--jit_compile=auto`).", "",
             f"## Training (global batch {results['config']['train_batch_size']})", "",
             training_table(results), "",
             "Compile s: the first call minus a steady one (tracing, plus XLA compilation when "
             "on). CPU ms/image: CPU time of the measuring process (all its threads) per image, "
             "steadier than images/s on a shared machine; others' cores: cores other processes "
             "kept busy during the timing. Peak RSS: the process's high-water mark during the "
             "measurement, TensorFlow runtime and model included.", ""]
    if results["config"]["inference_batch_sizes"]:
        lines += ["## Inference (one replica, `model(x, training=False)` on host images)", "",
                  inference_table(results), ""]
    lines += ["## Training against the input pipeline", "", training_summary_table(results), ""]
    lines += data_chain_section(results.get("data_chain", {}))
    lines += ratio_section(results.get("pipeline_to_training", []))
    lines += scaling_section(results.get("scaling", {}), results.get("statements", []))
    profile = results.get("profile")
    if profile:
        lines += ["## Profile", "", profile_line(results), ""]
    lines += problems_section(results)
    return "\n".join(lines)


# ------------------------------------------------------------------------- TensorBoard


def _scalars(writer, values: dict, step: int = 0) -> None:
    import tensorflow as tf

    with writer.as_default(step=step):
        for tag, value in values.items():
            if value is not None:
                tf.summary.scalar(tag, float(value))


def write_tensorboard(results: dict, logdir: str) -> None:
    """Scalars and text of `results` into `logdir`, as described in the module docstring."""
    import tensorflow as tf

    writers = {}

    def writer(run):
        if run not in writers:
            writers[run] = tf.summary.create_file_writer(os.path.join(logdir, run))
        return writers[run]

    costs_written = set()
    for row in results["rows"]:
        tag = model_tag(row)
        t = row["train"]
        values = {f"train/images_per_s/{tag}": _ok(t, "images_per_s"),
                  f"train/step_ms/{tag}": _ok(t, "step_ms"),
                  f"train/cpu_ms_per_image/{tag}": _ok(t, "cpu_ms_per_image"),
                  f"train/other_processes_cores/{tag}": _ok(t, "other_processes_cores"),
                  f"train/compile_s/{tag}": _ok(t, "compile_s"),
                  f"memory/train_peak_rss_mb/{tag}": _ok(t, "peak_rss_mb"),
                  f"memory/train_peak_accelerator_mb/{tag}": _ok(t, "peak_accelerator_mb")}
        inference = [m for m in row["inference"].values() if m.get("status") == "ok"]
        for m in inference:
            values[f"inference/batch_{m['batch_size']}_images_per_s/{tag}"] = m["images_per_s"]
            if m["batch_size"] == 1:
                values[f"inference/batch_1_latency_ms/{tag}"] = m["latency_ms"]
        if inference:
            values[f"inference/compile_s/{tag}"] = inference[0]["compile_s"]
            values[f"memory/inference_peak_rss_mb/{tag}"] = max(m["peak_rss_mb"] for m in inference)
        if row["params"] is not None and tag not in costs_written:
            costs_written.add(tag)
            values[f"cost/params/{tag}"] = row["params"]
            values[f"cost/gflops_per_image/{tag}"] = row["flops_per_image"] / 1e9
        if any(v is not None for v in values.values()):
            _scalars(writer(mode_name(row["xla"], row["replicas"])), values)

    for kind, sweeps in results.get("scaling", {}).items():
        x = _sweep_x(kind)
        for sweep in sweeps:
            base = f"scaling/{kind}/{sweep['model']}-{sweep['variant']}"
            for p in sweep["points"]:
                t = p.get("train", {})
                if t.get("status") != "ok":
                    continue
                _scalars(writer("scaling"), {
                    f"{base}/train_images_per_s": _ok(t, "images_per_s"),
                    f"{base}/train_cpu_ms_per_image": _ok(t, "cpu_ms_per_image"),
                    f"{base}/train_peak_rss_mb": _ok(t, "peak_rss_mb"),
                    f"{base}/train_rss_above_baseline_mb": scaling.memory_above_baseline(p),
                    f"{base}/gflops_per_image": p.get("flops_per_image") and p["flops_per_image"] / 1e9,
                }, step=int(p[x]))

    chain = results.get("data_chain", {})
    values = {}
    for g in chain.get("generation", []):
        values[f"data/simulation_images_per_s_one_core/{g['case']}"] = g["one_core_images_per_s"]
        values[f"data/simulation_images_per_s_all_cores/{g['case']}"] = g.get("all_cores_images_per_s")
    for px, b in chain.get("build", {}).items():
        values[f"data/build_images_per_s/{px}px"] = b.get("images_per_s")
    for px, p in chain.get("input_pipeline", {}).items():
        values[f"data/input_pipeline_cached_images_per_s/{px}px"] = p["cached_images_per_s"]
        values[f"data/input_pipeline_from_records_images_per_s/{px}px"] = p["from_records_images_per_s"]
        values[f"data/input_pipeline_cached_cpu_ms_per_image/{px}px"] = p.get("cached_cpu_ms_per_image")
    for r in results.get("pipeline_to_training", []):
        tag = f"{r['model']}-{r['variant']}_{r['image_size']}px_xla_{'on' if r['xla'] else 'off'}"
        values[f"data/pipeline_over_training/{tag}"] = r["ratio_cached"]
        values[f"data/pipeline_over_training_cpu_time/{tag}"] = r.get("cpu_ratio_cached")
    if any(v is not None for v in values.values()):
        _scalars(writer("data_chain"), values)

    with writer("report").as_default(step=0):
        tf.summary.text("report/tables", markdown(results))
        tf.summary.text("report/scaling", "\n".join(f"- {s}" for s in results.get("statements", []))
                        or "no scaling sweeps")
        tf.summary.text("report/machine", measure.describe(results["machine"]))
    for w in writers.values():
        w.flush()
        w.close()
