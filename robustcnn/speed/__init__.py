"""Speed: throughput of the models, of the evaluation pipeline and of the training loop, and the GPU device check.

``throughput`` (training and inference steps next to reference models), ``pipelines`` (validate.py's ImageNet-C
path, the training loop's overhead), ``device_check`` (everything a short GPU loan should measure, in one budgeted
run), ``cli`` (``scripts/speed.py`` / ``python -m robustcnn speed``). "Benchmarks" in this project are the
evaluation sets (``robustcnn/benchmarks/``), not these.
"""
