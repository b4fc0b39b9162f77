"""Built-in objectives. Each module holds one objective family; they register through entry points."""
