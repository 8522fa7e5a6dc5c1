"""sitesearch indexer: state, extraction, chunking, embeddings and the vector store.

Shared by the crawler and the server (dependency direction: crawler → indexer ← server).
"""

__version__ = "0.1.0"
