"""The basic torch training runtime a TrainingJob's Workload runs (``python -m agents.runtimes.train``).

It trains the shared transformer family (``agents.runtimes.model``) on built-in synthetic
tokens or a local token file and reports progress as JSON lines on stdout; see
:mod:`agents.runtimes.train.progress` for the protocol and exit codes. It writes no
checkpoints yet: a ``checkpoint`` section is validated but not acted on (a warning says
so), and a restarted job starts again from step 0.
"""
