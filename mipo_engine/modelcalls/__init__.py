"""The skeleton every stage that calls a model shares.

A model-calling stage (generate, score, revise, contexts, rubrics, judge, eval) is its
settings, a prompt builder and a row parser; everything else is here:

- ``settings``: the settings base (backend, model, base URL, concurrency, batch size and the
  chunk size, the resume unit) and, for stages that validate replies, the retry settings;
- ``asking``: ask a model, parse each reply, ask again only for the replies that failed
  (``ask_with_retries``), with seeds derived from the row key and the attempt;
- ``running``: the backend a stage opens (or the one its caller passed), the chunked,
  journaled loop with its progress display (``run_chunks``), and the run tail that restores
  input order and writes the artifact with its manifest (``finished_rows``, ``write_output``).

A new stage builds its ``Query`` list (the prompt builder), passes a parser to
``ask_with_retries`` (or calls the backend directly), turns each chunk's replies into journal
rows, and hands the chunks to ``run_chunks``; the journal makes it resumable.
"""
