"""The Vertex AI tuning REST API (what the google-genai SDK speaks), as a FastAPI app: `create_app(settings)`."""
