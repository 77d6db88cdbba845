"""The web app: FastAPI + server-rendered HTML over `imagetext.api` (see app.py)."""

from imagetext.web.app import create_app

__all__ = ["create_app"]
