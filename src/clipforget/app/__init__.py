"""The application around the library: runs, benches, reports, the command line and the Python API.

The library (``clipforget.config``, ``io``, ``metrics``, ``zeroshot``, ``evaluation``, ``audit``,
``mining``, ``models``, ``data``, ``methods``) computes and never prints or parses flags; this package
turns its pieces into runs a user starts and reads:

- :mod:`.runner`: one method on one scenario, from loading to the run directory (metrics, audit,
  report, saved model), on a model and scenario loaded once by :mod:`.prepare`, with its stages in
  :mod:`.store` and the questionable-result checks of :mod:`.checks`; :mod:`.together`: several
  requests at once; :mod:`.ledger`: earlier requests.
- :mod:`.bench`: methods x scenarios x seeds, resumable; :mod:`.bench_tables`: its tables.
- :mod:`.report`, :mod:`.report_html` (with :mod:`.html`, :mod:`.runfiles`, :mod:`.report_sections`), :mod:`.figures`, :mod:`.examples`, :mod:`.modelcard`: what a
  run leaves for people to read; :mod:`.runinfo`, :mod:`.rundir`: what it leaves for resuming.
- :mod:`.api` (``clipforget.forget`` and friends) and :mod:`.cli` (the ``clipforget`` command; its flags in :mod:`.cli_flags`), with
  :mod:`.catalog` (method and scenario lines) and :mod:`.mined_scenario` (``clipforget mine``).
- :mod:`.testbed`: the offline testbed's pretraining and evaluation tools.
"""
