"""The app's serving layer: the loaded backends and the calls people make on them (`service`), who may change
shared state (`access`), and how concurrent requests share the models (`batching`)."""
