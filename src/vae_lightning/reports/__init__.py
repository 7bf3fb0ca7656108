"""Reports built from the outputs of training runs (they import no model code):
``summarize`` (a sweep's results table and plot) and ``reproduction``
(the Figure-2 page; its runs in ``reproduction_runs``, its tables in ``reproduction_tables``)."""
