"""Built-in modalities. Each module holds one modality; they register through entry points."""
