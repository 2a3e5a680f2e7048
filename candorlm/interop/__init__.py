"""Interoperability with other ecosystems' formats (Hugging Face)."""
