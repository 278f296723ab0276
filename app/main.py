"""ASGI application entry point (placeholder until the API lands)."""

from fastapi import FastAPI

app = FastAPI(title="irqlab")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
