"""Retrieval backend: labeled examples embedded with sentence-transformers, indexed in FAISS, labeled by vote."""
