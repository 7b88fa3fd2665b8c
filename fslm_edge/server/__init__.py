"""``fslm-edge serve``: an OpenAI-compatible HTTP server for stacks (docs/server.md).

Kept apart from the runtime core: nothing in ``fslm_edge`` imports this
package, and the CLI imports it only when ``serve`` runs (it needs the
``server`` extra: Starlette and uvicorn).
"""
