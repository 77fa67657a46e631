"""End-to-end pipelines built from the library's parts.

``desra.pipelines.reproduce``
    Reproduce the DeSRA paper's detection tables (Table 1: Real-ESRGAN, Table 2: LDL, Table 3: after
    fine-tuning) on the authors' artifact data set: run NIQE, LDL* and DeSRA-det once per image pair, score
    them (and the authors' released masks) with IoU / Precision / Recall against the hand-drawn GT masks,
    and print the figures next to the paper's. Command line: ``scripts/reproduce_tables.py``.

``desra.pipelines.desra_loop``
    The DeSRA loop of paper Sec. 3 (detect -> pseudo-GT -> fine-tune -> detect again -> evaluate). Command
    line: ``scripts/desra_pipeline.py``.

Submodules are not imported here, so ``import desra.pipelines`` stays cheap.
"""
