"""The basic torch training runtime a TrainingJob's Workload runs (``python -m agents.runtimes.train``).

It trains the shared transformer family (``agents.runtimes.model``) on built-in synthetic
tokens or a local token file and reports progress as JSON lines on stdout; see
:mod:`agents.runtimes.train.progress` for the protocol and exit codes. With a checkpointer
(``checkpoint.plugin``) it saves through the plugin every ``everySteps`` steps and at the
last, and a restarted job resumes exactly from its newest complete checkpoint
(:mod:`agents.runtimes.train.checkpointing`).
"""
