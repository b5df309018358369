"""The ``flotilla`` command line (Django-free): it talks to the API over HTTP and
starts the processes of ``flotilla up`` and the benchmarks as subprocesses."""
