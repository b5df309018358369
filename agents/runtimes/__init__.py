"""The torch runtimes the agent starts as Workload subprocesses: ``serve`` and ``train``.

What both share sits here: the Llama-style ``model``, the byte-level ``tokenizer``, and
local safetensors ``weights``. The agent process never imports them: its supervisor
starts ``python -m agents.runtimes.<runtime>``, so torch loads in the Workload only.
"""
