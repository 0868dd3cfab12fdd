"""tunery: self-hosted supervised fine-tuning for open language models, speaking the Vertex AI tuning API.

Library entry points (the CLI and the REST API are thin layers over these):
    tunery.models.resolve(name)            base-model registry and Gemini aliases
    tunery.data.validate(train, val, ...)  line-exact dataset validation and Vertex statistics
    tunery.data.formats                    one converter per dataset format
    tunery.train.engine.train(config)      one LoRA tuning run (resumable)
    tunery.serve.registry.Registry         base models once, adapters on demand, batched generation
    tunery.api.app.create_app(settings)    the Vertex tuning REST API
"""

__version__ = "0.1.0"
