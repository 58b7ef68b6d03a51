"""`vgg serve`: a trained net as an HTTP service with a page to try it (Starlette + uvicorn).

`app.build_app` makes the ASGI application, `batching.Batcher` gathers concurrent
requests into one forward pass, `uploads` reads and decodes what clients send
within bounds, `cli` is the command. Imports the inference code through its
public modules only (`vggnet.classification.predict`, `vggnet.inference`).
"""
