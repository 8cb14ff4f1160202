"""The database: tables, engine and connections, schema migrations, retention."""
