"""What a statement does: the gate (PostgreSQL's own grammar via pglast), the reference
walker, the sqlglot cross-check and the decision cache. Pure functions over data; nothing
here performs I/O."""
