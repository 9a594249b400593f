"""Corpus preparation: download and manifests, one module per corpus."""
