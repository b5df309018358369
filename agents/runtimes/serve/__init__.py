"""The torch serving runtime: paged KV cache, continuous-batching engine, OpenAI-compatible HTTP server.

Run as ``python -m agents.runtimes.serve --config FILE --port N``; benchmark with
``flotilla bench serve`` (``bench_cli`` parses its flags, ``bench`` runs it).
"""
