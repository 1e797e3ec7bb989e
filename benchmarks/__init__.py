"""Speed, memory and conversion-coverage benchmarks of fastsnn, run as ``python -m benchmarks.<name>``.

Each takes the common options of :mod:`benchmarks.cli` and writes its result with
:func:`benchmarks.record.record` to ``benchmarks/results/<name>.{json,md}``. Accuracy figures
are not made here: they come from ``run.py`` runs.
"""

BENCHMARKS = ("speed", "memory_large", "model_zoo", "auto_kernels", "training_cost", "finetune_plan")
