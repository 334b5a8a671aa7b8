"""asv benchmarks of fastbfly (see ``asv_benchmarks/asv.conf.json``).

Modules: ``factorize`` (Factorize, FactorizeNoisy, FactorizePeers, FactorizeAccuracy),
``products`` (MatVec, MatMat, Adjoint, SolverIteration, StoredBytes), ``coldstart``
(ColdStart); shared machinery in ``common``.
"""
