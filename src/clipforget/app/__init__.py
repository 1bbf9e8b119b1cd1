"""The application around the library: runs, benches, reports, the command line and the Python API.

The library (``clipforget.config``, ``io``, ``metrics``, ``zeroshot``, ``evaluation``, ``audit``,
``mining``, ``models``, ``data``, ``methods``) computes and never prints or parses flags; this package
turns its pieces into runs a user starts and reads:

- :mod:`.runner`: one method on one scenario, from loading to the run directory (metrics, audit,
  report, saved model); :mod:`.together`: several requests at once; :mod:`.ledger`: earlier requests.
- :mod:`.bench`: methods x scenarios x seeds, resumable, one table.
- :mod:`.report`, :mod:`.report_html`, :mod:`.figures`, :mod:`.examples`, :mod:`.modelcard`: what a
  run leaves for people to read; :mod:`.runinfo`, :mod:`.rundir`: what it leaves for resuming.
- :mod:`.api` (``clipforget.forget`` and friends) and :mod:`.cli` (the ``clipforget`` command), with
  :mod:`.catalog` (method and scenario lines) and :mod:`.mined_scenario` (``clipforget mine``).
- :mod:`.testbed`: the offline testbed's pretraining and evaluation tools.
"""
