"""The serving layer's building blocks: who may change shared state (`access`) and how concurrent requests share
the models (`batching`)."""
