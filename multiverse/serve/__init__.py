"""``multiverse serve``: an Infinity/TEI/OpenAI-compatible HTTP runtime for one bundle.

``app.create_app`` builds the FastAPI app, ``engine.Engine`` runs the model off the event loop
behind a bounded queue, ``server.serve`` runs uvicorn with graceful shutdown. Importing this
package imports nothing else (FastAPI and uvicorn are the ``serve`` extra).
"""
