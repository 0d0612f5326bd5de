"""The lowest layer: reading files without running their contents, and riding out storage trouble."""
