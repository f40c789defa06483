"""Text in, token ids out: reading, normalizing, vocabularies and prepared corpora."""
