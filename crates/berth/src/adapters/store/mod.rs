//! Store adapters: SQLite (embedded default) and PostgreSQL. See `ports::store`.
