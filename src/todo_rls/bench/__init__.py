"""`todo-rls bench`: what row-level security and the wrapper cost, measured against
hand-filtered SQL on generated data (see todo_rls.bench.run)."""
