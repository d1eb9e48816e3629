"""What `dvc plots show` renders with: a page template holding the vega libraries inline, so the
plots page draws without network (see `pipeline.plots.offline`)."""
